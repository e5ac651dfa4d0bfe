"""Train-step time of a 4-layer MLP: lora_np against PyTorch CPU eager, in one run.

The model: 4 Linear layers of width 512 (ReLU between them), batch 256, cross-entropy over 512
classes, AdamW. Each framework runs in its own long-lived worker process; the two are timed
in alternation over many rounds under the same thread count (``interleave.py``), and the
report is the median per-round ratio lora_np / PyTorch with its spread.

Run it with `make bench` (on this machine the NumPy timing needs `env -u OPENBLAS_CORETYPE`,
which the Makefile sets for this command only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds lora_np.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # interleave

from interleave import Worker, header, interleaved, ratio_summary  # noqa: E402

WIDTH, DEPTH, BATCH = 512, 4, 256


def lora_np_step():
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

    return step


def torch_step():
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

    return step


def setup(framework: str) -> dict:
    """{mode: step function} for a worker of ``interleave.py``."""
    return {"train": lora_np_step() if framework == "lora_np" else torch_step()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternations of the frameworks")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for both")
    args = parser.parse_args()
    workers = {fw: Worker("mlp_step", fw, args.threads) for fw in ("lora_np", "torch")}
    pairs = [("lora_np", "train"), ("torch", "train")]
    clocks = interleaved(workers, pairs, args.rounds, dict.fromkeys(pairs, args.steps), args.warmup)
    for worker in workers.values():
        worker.close()
    print(header(workers, args.threads, args.rounds, args.steps))
    print(f"\nMLP train step: {DEPTH} x Linear({WIDTH}, {WIDTH}), batch {BATCH}, AdamW, float32")
    for clock in ("wall", "cpu") if args.threads == 1 else ("wall",):
        med = clocks[clock]
        a, b = med[("lora_np", "train")], med[("torch", "train")]
        ratio = ratio_summary(a, b)
        print(
            f"  {clock:<4}  lora_np {statistics.median(a) * 1e3:8.2f} ms   PyTorch "
            f"{statistics.median(b) * 1e3:8.2f} ms   ratio {ratio[0]:.3f} "
            f"[{ratio[1]:.3f}, {ratio[2]:.3f}]"
        )


if __name__ == "__main__":
    main()
