"""What both benchmarks share: the machine they ran on, and timing two frameworks interleaved.

A ratio between two frameworks is only as good as the conditions both ran under. On a shared
machine the load changes from one second to the next, so the two are timed in alternation, a
few steps each, over many rounds, each in its own long-lived worker process (neither's thread
pool or allocator affects the other): each round gives one ratio from neighbouring
measurements, and the report is the median ratio with its spread over the rounds. Both
frameworks run under the same thread count.

A worker is this file run as ``python interleave.py WORKER_MODULE FRAMEWORK THREADS [OPTIONS]``:
it calls ``WORKER_MODULE.setup(framework, **options)`` (OPTIONS: a JSON object, default {}),
which returns {mode: step function}, then answers one JSON line per request ``"mode steps"``
on its standard input with the step times.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 0.3  # a pause between turns, longer than a BLAS/OpenMP thread spins when idle


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _limit_threads(framework: str, threads: int) -> dict:
    """Set the thread count of ``framework`` and say what library does its maths."""
    if framework == "lora_np":
        import lora_np

        lora_np.backend.set_blas_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)
    return _describe(framework)


def _describe(framework: str) -> dict:
    """What library does ``framework``'s maths, with how many threads (as set now)."""
    import numpy
    from threadpoolctl import threadpool_info

    info = {"numpy": numpy.__version__}
    if framework == "lora_np":
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        keys = ("internal_api", "version", "architecture", "num_threads")
        info["blas"] = [{k: b.get(k) for k in keys} for b in blas]
    else:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkl"] = torch.backends.mkl.is_available()
    return info


def _worker(module_name: str, framework: str, threads: int, options: dict) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _limit_threads(framework, threads)
    steps = importlib.import_module(module_name).setup(framework, **options)
    info = _describe(framework)  # after setup, which may change the thread count
    print(json.dumps({"info": info, "modes": sorted(steps)}), flush=True)
    for line in sys.stdin:
        mode, count = line.split()
        fn = steps[mode]
        wall, cpu = [], []
        for _ in range(int(count)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


class Worker:
    """One framework's long-lived process; ``time(mode, n)`` returns n step times (seconds),
    {"wall": [...], "cpu": [...]}: wall-clock and this process's CPU time. ``options`` go to
    the worker module's ``setup(framework, **options)``."""

    def __init__(self, module_name: str, framework: str, threads: int, options: dict | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.framework = framework
        command = [sys.executable, __file__, module_name, framework, str(threads)]
        self.process = subprocess.Popen(
            command + [json.dumps(options or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        hello = self._read()
        self.info, self.modes = hello["info"], hello["modes"]

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"the {self.framework} worker stopped (see its error above)")
        return json.loads(line)

    def time(self, mode: str, steps: int) -> dict:
        self.process.stdin.write(f"{mode} {steps}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def interleaved(workers: dict, pairs, rounds: int, steps: dict, warmup: int) -> dict:
    """Time every (framework, mode) in ``pairs`` round after round, alternating the order;
    ``steps[pair]`` steps each time.

    Returns {"wall" or "cpu": {(framework, mode): [median step time of each round, seconds]}}.
    CPU time is robust to other processes' load, but only comparable between single-threaded
    runs (a waiting BLAS or OpenMP thread spins, and that counts as CPU time).
    """
    for framework, mode in pairs:  # warm-up: caches, allocator, lazy state
        workers[framework].time(mode, warmup)
    medians = {clock: {pair: [] for pair in pairs} for clock in ("wall", "cpu")}
    for r in range(rounds):
        for framework, mode in pairs if r % 2 == 0 else reversed(pairs):
            # Let the last worker's threads go idle first: an OpenBLAS or OpenMP thread spins
            # for a while after its work ends, and would take a core from the next framework.
            time.sleep(SETTLE_S)
            times = workers[framework].time(mode, steps[(framework, mode)])
            for clock in medians:
                medians[clock][(framework, mode)].append(statistics.median(times[clock]))
    return medians


def ratio_summary(numerators: list[float], denominators: list[float]) -> tuple:
    """(median, lowest, highest) of the per-round ratios."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def header(workers: dict, threads: int, rounds: int, steps: int) -> str:
    """The lines every report starts with: the machine, the libraries, the threads."""
    lines = [f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible)"]
    for framework, worker in workers.items():
        info = worker.info
        if framework == "lora_np":
            for b in info["blas"]:
                lines.append(
                    f"lora_np: NumPy {info['numpy']}, BLAS {b['internal_api']} {b['version']}, "
                    f"kernel {b['architecture']}, {b['num_threads']} threads"
                )
        else:
            lines.append(
                f"PyTorch {info['torch']} (MKL {'yes' if info['torch_mkl'] else 'no'}, "
                f"CPU capability {info['torch_cpu_capability']}), "
                f"{info['torch_threads']} threads"
            )
    coretype = os.environ.get("OPENBLAS_CORETYPE", "unset")
    lines.append(
        f"Threads per framework: {threads}; OPENBLAS_CORETYPE {coretype}; {rounds} rounds of "
        f"{steps} steps each, alternating; a ratio is the median over rounds [lowest, highest]"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
