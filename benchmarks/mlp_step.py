"""Train-step time of a 4-layer MLP: lora_np against PyTorch CPU eager, in one run.

The model: 4 Linear layers of width 512 (ReLU between them), batch 256, cross-entropy over 512
classes, AdamW. Each framework is timed in its own fresh process (so neither's thread pool or
allocator state affects the other), alternating, several rounds; the report is the median
step time per framework and the ratio lora_np / PyTorch.

Run it with `make bench` (on this machine the NumPy timing needs `env -u OPENBLAS_CORETYPE`,
which the Makefile sets for this command only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Run from a checkout without installing: the repository root holds lora_np.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, DEPTH, BATCH = 512, 4, 256


def _time_steps(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def run_lora_np(warmup: int, steps: int) -> list[float]:
    import lora_np as ln

    ln.fastpaths.tune_allocator()  # keep freed activation memory for reuse, as training does
    F = ln.functional
    ln.manual_seed(0)
    layers = [ln.nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)]
    model = ln.nn.Sequential(*[m for layer in layers for m in (layer, ln.nn.ReLU())][:-1])
    opt = ln.optim.AdamW(model.parameters(), lr=1e-3)
    rng = ln.backend.np.random.default_rng(0)
    x = ln.Tensor(rng.standard_normal((BATCH, WIDTH)).astype("float32"))
    y = rng.integers(0, WIDTH, BATCH)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return _time_steps(step, warmup, steps)


def run_torch(warmup: int, steps: int) -> list[float]:
    import numpy as np
    import torch

    torch.manual_seed(0)
    layers = []
    for i in range(DEPTH):
        layers.append(torch.nn.Linear(WIDTH, WIDTH))
        if i < DEPTH - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((BATCH, WIDTH)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, WIDTH, BATCH))

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return _time_steps(step, warmup, steps)


def _child(framework: str, warmup: int, steps: int) -> None:
    runner = run_lora_np if framework == "lora_np" else run_torch
    print(json.dumps(runner(warmup, steps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per framework")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--child", choices=["lora_np", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.warmup, args.steps)
        return

    times: dict[str, list[float]] = {"lora_np": [], "torch": []}
    for _ in range(args.rounds):
        for framework in times:
            command = [
                sys.executable,
                __file__,
                "--child",
                framework,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{framework} run failed:\n{done.stderr}")
            out = done.stdout
            times[framework] += json.loads(out.strip().splitlines()[-1])
    median = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"MLP train step: {DEPTH} x Linear({WIDTH}, {WIDTH}), batch {BATCH}, AdamW, float32")
    print(f"  lora_np        {median['lora_np']:8.2f} ms   (median of {len(times['lora_np'])})")
    print(f"  PyTorch eager  {median['torch']:8.2f} ms   (median of {len(times['torch'])})")
    print(f"  ratio lora_np / PyTorch: {median['lora_np'] / median['torch']:.2f}")


if __name__ == "__main__":
    main()
