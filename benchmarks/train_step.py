"""Train-step and inference cost of the tiny GPT: lora_np against PyTorch CPU eager, one run.

Config: vocab 64, context 64, n_embd 128, 4 heads, 4 layers, batch 32, AdamW, float32.
Modes:
  full      every parameter trains
  lora      LoRA r = 8 (alpha 16) on q and v of every block, everything else frozen
  base / merged / unmerged   inference forward passes (no graph): the plain model, the model
            with LoRA merged into its weights, and LoRA kept as a side path.

lora_np's path with more than one thread (``--lora-np-path``):
  data-parallel  (default) BLAS at 1 thread; each step's batch split by rows over THREADS
                 threads (lora_np.parallel), for the train steps and the inference forwards
  plain          one pass over the whole batch with BLAS at THREADS threads

Each framework runs in one long-lived worker process that holds a model per mode; the two are
timed in alternation, a few steps at a time, over many rounds (``interleave.py``), under the
same thread count. Each round gives a ratio from neighbouring measurements; the report is the
median ratio and its spread. Memory comes from a separate pass, one fresh process per
(framework, mode): optimiser-state bytes and the peak resident memory a step adds over the
process's memory before the first step; for lora_np also the peak of NumPy allocations inside
one step (tracemalloc).

Run with `make bench` (which unsets OPENBLAS_CORETYPE for this command only, on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lora_np from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # torch_gpt, interleave

from interleave import Worker, header, interleaved, ratio_summary  # noqa: E402

CONFIG = dict(vocab_size=64, block_size=64, n_embd=128, n_head=4, n_layer=4)
BATCH, RANK, ALPHA = 32, 8, 16.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _batch(np):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    targets = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    return idx, targets


PATHS = ("data-parallel", "plain")


def _lora_np_path(threads: int, path: str) -> str:
    """The path lora_np takes: ``data-parallel`` only pays with more than one thread."""
    return path if threads > 1 else "plain"


def _describe_path(threads: int, path: str) -> str:
    if _lora_np_path(threads, path) == "data-parallel":
        return (
            f"data-parallel: each batch split by rows over {threads} threads "
            "(lora_np.parallel), BLAS at 1 thread"
        )
    return f"plain: one pass over the batch, BLAS at {threads} thread(s)"


def _lora_np_step(mode: str, threads: int = 1, path: str = "plain"):
    """(step function, optimiser or None) of ``mode`` for lora_np, on ``path``."""
    import lora_np as ln
    from lora_np.transformer import GPT, GPTConfig

    ln.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG))
    idx, targets = _batch(ln.backend.np)
    if mode not in ("full", "base"):
        ln.lora.inject(model, ["q", "v"], r=RANK, alpha=ALPHA)
        for _, layer in ln.lora.lora_layers(model):  # a trained-looking B, so merging matters
            layer.B.data[...] = 0.01
        if mode == "merged":
            ln.lora.merge_adapter(model)
    if _lora_np_path(threads, path) == "plain":
        return _step(model, idx, targets, mode, ln.optim.AdamW, ln.no_grad)
    ln.backend.set_blas_threads(1)  # the shards' threads use the cores, not BLAS
    return _step(
        model,
        idx,
        targets,
        mode,
        ln.optim.AdamW,
        ln.no_grad,
        forward=lambda: ln.parallel.forward(model, idx, threads=threads),
        loss_and_backward=lambda: ln.parallel.loss_and_backward(model, idx, targets, threads),
    )


def _torch_step(mode: str):
    """(step function, optimiser or None) of ``mode`` for PyTorch."""
    import numpy as np
    import torch
    from torch_gpt import TorchGPT, inject_lora

    torch.manual_seed(0)
    model = TorchGPT(**CONFIG)
    idx, targets = (torch.tensor(a) for a in _batch(np))
    if mode == "lora":
        inject_lora(model, ("q", "v"), RANK, ALPHA)
    return _step(model, idx, targets, mode, torch.optim.AdamW, torch.no_grad)


def _step(model, idx, targets, mode: str, adamw, no_grad, forward=None, loss_and_backward=None):
    """The same calls for both frameworks: a training step, or an eval forward pass.

    ``forward`` and ``loss_and_backward`` replace the plain one-pass calls (lora_np's
    data-parallel path).
    """
    if forward is None:

        def forward():
            with no_grad():
                model(idx)

    if loss_and_backward is None:

        def loss_and_backward():
            _, loss = model(idx, targets)
            loss.backward()

    if mode in ("base", "merged", "unmerged"):
        model.eval()
        return forward, None
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        opt.zero_grad()
        loss_and_backward()
        opt.step()

    return step, opt


MODES = {
    "lora_np": ("full", "lora", "base", "merged", "unmerged"),
    "torch": ("full", "lora", "base"),
}


def setup(framework: str, threads: int = 1, path: str = "plain") -> dict:
    """{mode: step function} for a worker of ``interleave.py``; lora_np on ``path``."""
    if framework == "lora_np":
        import lora_np as ln

        ln.fastpaths.tune_allocator()  # keep freed activation memory for reuse, as training does
        return {mode: _lora_np_step(mode, threads, path)[0] for mode in MODES[framework]}
    return {mode: _torch_step(mode)[0] for mode in MODES[framework]}


def _memory(framework: str, mode: str, steps: int, threads: int, path: str) -> dict:
    """In a fresh process: optimiser state, peak RSS a step adds, NumPy's peak in one step."""
    import tracemalloc

    if framework == "lora_np":
        import lora_np as ln

        ln.fastpaths.tune_allocator()
        step, opt = _lora_np_step(mode, threads, path)
    else:
        step, opt = _torch_step(mode)
    rss_before = _rss_bytes()
    for _ in range(steps):
        step()
    result = {
        "peak_rss_added": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    }
    params = opt.params if framework == "lora_np" else opt.param_groups[0]["params"]
    result["trainable"] = sum(p.size if framework == "lora_np" else p.numel() for p in params)
    if framework == "lora_np":
        result["state_bytes"] = opt.state_bytes()
        tracemalloc.start()
        step()
        result["traced_step_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        import torch

        result["state_bytes"] = sum(
            t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
    return result


def _memory_pass(threads: int, steps: int, path: str) -> dict:
    results = {}
    for framework in ("lora_np", "torch"):
        for mode in ("full", "lora"):
            command = [sys.executable, __file__, "--memory-child", framework, mode]
            command += ["--steps", str(steps), "--threads", str(threads), "--lora-np-path", path]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"memory pass {framework} {mode} failed:\n{done.stderr}")
            results[(framework, mode)] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def _mib(n: float) -> str:
    return f"{n / 2**20:7.2f} MiB"


def _fmt(summary: tuple) -> str:
    return f"{summary[0]:6.3f} [{summary[1]:.3f}, {summary[2]:.3f}]"


def _report(med: dict, clock: str) -> None:
    """The ratios of one clock: median over rounds [lowest, highest]."""

    def ms(pair):
        return statistics.median(med[pair]) * 1e3

    print(f"\n== {clock}")
    print("train step             lora_np      PyTorch   lora_np/PyTorch [lowest, highest]")
    for mode in ("full", "lora"):
        a, b = ("lora_np", mode), ("torch", mode)
        print(
            f"  {mode:<16} {ms(a):9.2f} ms {ms(b):9.2f} ms   {_fmt(ratio_summary(med[a], med[b]))}"
        )
    for fw in ("lora_np", "torch"):
        own = ratio_summary(med[(fw, "lora")], med[(fw, "full")])
        print(f"  LoRA / full step, {fw:<8}                {_fmt(own)}")
    print("inference forward (no graph)")
    for mode in ("base", "merged", "unmerged"):
        print(f"  lora_np {mode:<20} {ms(('lora_np', mode)):7.2f} ms")
    print(f"  PyTorch base                 {ms(('torch', 'base')):7.2f} ms")
    base = med[("lora_np", "base")]
    print(f"  lora_np / PyTorch, base   {_fmt(ratio_summary(base, med[('torch', 'base')]))}")
    print(f"  merged / base             {_fmt(ratio_summary(med[('lora_np', 'merged')], base))}")
    print(f"  unmerged / base           {_fmt(ratio_summary(med[('lora_np', 'unmerged')], base))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternations of the frameworks")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for both")
    parser.add_argument(
        "--lora-np-path",
        choices=PATHS,
        default="data-parallel",
        help="how lora_np uses more than one thread (see the top of this file)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        from interleave import _limit_threads

        _limit_threads(args.memory_child[0], args.threads)
        memory = _memory(*args.memory_child, args.steps, args.threads, args.lora_np_path)
        print(json.dumps(memory))
        return

    options = {"lora_np": {"threads": args.threads, "path": args.lora_np_path}, "torch": {}}
    workers = {fw: Worker("train_step", fw, args.threads, options[fw]) for fw in options}
    pairs = [(fw, mode) for mode in ("full", "lora") for fw in ("lora_np", "torch")]
    pairs += [("lora_np", m) for m in ("base", "merged", "unmerged")] + [("torch", "base")]
    steps = {p: args.steps * (1 if p[1] in ("full", "lora") else 3) for p in pairs}
    clocks = interleaved(workers, pairs, args.rounds, steps, args.warmup)
    for worker in workers.values():
        worker.close()
    print(header(workers, args.threads, args.rounds, args.steps))
    print(f"lora_np path: {_describe_path(args.threads, args.lora_np_path)}")
    print("\nTiny GPT (vocab 64, context 64, n_embd 128, 4 heads, 4 layers), batch 32, float32")
    print(f"LoRA: r = {RANK}, alpha = {ALPHA:g}, on q and v; AdamW")
    # CPU time is comparable only between single-threaded runs (waiting threads spin)
    for clock in ("wall", "cpu") if args.threads == 1 else ("wall",):
        _report(clocks[clock], "wall-clock" if clock == "wall" else "CPU time of each process")
    if args.no_memory:
        return
    last = _memory_pass(args.threads, args.warmup, args.lora_np_path)
    print("\nmemory (fresh process each)     full          lora")
    for framework in ("lora_np", "torch"):
        full, lora = last[(framework, "full")], last[(framework, "lora")]
        print(
            f"  {framework:<8} trainable      {full['trainable']:>10,}    {lora['trainable']:>10,}"
        )
        print(
            f"  {framework:<8} optimiser state {_mib(full['state_bytes'])}   {_mib(lora['state_bytes'])}"
        )
        print(
            f"  {framework:<8} peak RSS added  {_mib(full['peak_rss_added'])}   {_mib(lora['peak_rss_added'])}"
        )
    full, lora = last[("lora_np", "full")], last[("lora_np", "lora")]
    print(
        f"  lora_np  NumPy peak in a step {_mib(full['traced_step_peak'])}   {_mib(lora['traced_step_peak'])}"
    )


if __name__ == "__main__":
    main()
