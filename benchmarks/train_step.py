"""Train-step and inference cost of the tiny GPT: lora_np against PyTorch CPU eager, one run.

Config: vocab 64, context 64, n_embd 128, 4 heads, 4 layers, batch 32, AdamW, float32.
Modes:
  full      every parameter trains
  lora      LoRA r = 8 (alpha 16) on q and v of every block, everything else frozen
  base / merged / unmerged   inference forward passes (no graph): the plain model, the model
            with LoRA merged into its weights, and LoRA kept as a side path.

Every (framework, mode) is timed in its own fresh process, the processes alternate over
several rounds, and each figure is the median step time of the round whose median is lowest
(the least disturbed by the rest of the machine). Memory: optimiser-state bytes, and the peak
resident memory a step adds over the process's memory before the first step (both
frameworks); for lora_np also the peak of NumPy allocations inside one step (tracemalloc).

Run with `make bench` (which unsets OPENBLAS_CORETYPE for this command only, on this machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # lora_np from this checkout, torch_gpt from this folder

CONFIG = dict(vocab_size=64, block_size=64, n_embd=128, n_head=4, n_layer=4)
BATCH, RANK, ALPHA = 32, 8, 16.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _timed(fn, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _time_inference(model, idx, no_grad, warmup: int, steps: int) -> dict:
    """Times of an eval-mode forward pass that builds no graph (either framework)."""
    model.eval()

    def forward():
        with no_grad():
            model(idx)

    return {"times": _timed(forward, warmup, steps)}


def _time_training(model, opt, idx, targets, warmup: int, steps: int) -> dict:
    """Step times of ``model`` (lora_np or PyTorch: the same calls) and the peak memory added."""

    def step():
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()

    rss_before = _rss_bytes()
    times = _timed(step, warmup, steps)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"times": times, "peak_rss_added": peak_rss, "step": step}


def _batch(np):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    targets = rng.integers(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    return idx, targets


def run_lora_np(mode: str, warmup: int, steps: int) -> dict:
    import tracemalloc

    import lora_np as ln
    from lora_np.transformer import GPT, GPTConfig

    ln.fastpaths.tune_allocator()  # keep freed activation memory for reuse, as training does
    ln.manual_seed(0)
    model = GPT(GPTConfig(**CONFIG))
    idx, targets = _batch(ln.backend.np)
    if mode != "full" and mode != "base":
        ln.lora.inject(model, ["q", "v"], r=RANK, alpha=ALPHA)
        for _, layer in ln.lora.lora_layers(model):  # a trained-looking B, so merging matters
            layer.B.data[...] = 0.01
        if mode == "merged":
            ln.lora.merge_adapter(model)
    if mode in ("base", "merged", "unmerged"):
        return _time_inference(model, idx, ln.no_grad, warmup, steps)

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = ln.optim.AdamW(trainable, lr=1e-3)
    result = _time_training(model, opt, idx, targets, warmup, steps)
    tracemalloc.start()
    result.pop("step")()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        **result,
        "state_bytes": opt.state_bytes(),
        "trainable": sum(p.size for p in trainable),
        "traced_step_peak": traced_peak,
    }


def run_torch(mode: str, warmup: int, steps: int) -> dict:
    import numpy as np
    import torch
    from torch_gpt import TorchGPT, inject_lora

    torch.manual_seed(0)
    model = TorchGPT(**CONFIG)
    idx, targets = (torch.tensor(a) for a in _batch(np))
    if mode == "lora":
        inject_lora(model, ("q", "v"), RANK, ALPHA)
    if mode == "base":
        return _time_inference(model, idx, torch.no_grad, warmup, steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    result = _time_training(model, opt, idx, targets, warmup, steps)
    del result["step"]
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return {**result, "state_bytes": state, "trainable": sum(p.numel() for p in trainable)}


RUNS = [
    ("lora_np", "full"),
    ("torch", "full"),
    ("lora_np", "lora"),
    ("torch", "lora"),
    ("lora_np", "base"),
    ("lora_np", "merged"),
    ("lora_np", "unmerged"),
    ("torch", "base"),
]


def _child(framework: str, mode: str, warmup: int, steps: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    runner = run_lora_np if framework == "lora_np" else run_torch
    print(json.dumps(runner(mode, warmup, steps)))


def _mib(n: float) -> str:
    return f"{n / 2**20:7.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="processes per (framework, mode)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.warmup, args.steps)
        return

    results: dict = {run: [] for run in RUNS}
    for _ in range(args.rounds):
        for framework, mode in RUNS:
            steps = args.steps * (3 if mode in ("base", "merged", "unmerged") else 1)
            command = [sys.executable, __file__, "--child", framework, mode]
            command += ["--steps", str(steps), "--warmup", str(args.warmup)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{framework} {mode} failed:\n{done.stderr}")
            results[(framework, mode)].append(json.loads(done.stdout.strip().splitlines()[-1]))

    ms = {run: min(statistics.median(r["times"]) for r in rs) * 1e3 for run, rs in results.items()}
    last = {run: rs[-1] for run, rs in results.items()}
    print("Tiny GPT (vocab 64, context 64, n_embd 128, 4 heads, 4 layers), batch 32, float32")
    print(f"LoRA: r = {RANK}, alpha = {ALPHA:g}, on q and v; AdamW; {args.rounds} rounds\n")
    print("train step                 lora_np      PyTorch    lora_np/PyTorch")
    for mode in ("full", "lora"):
        a, b = ms[("lora_np", mode)], ms[("torch", mode)]
        print(f"  {mode:<20} {a:9.2f} ms {b:9.2f} ms {a / b:12.2f}")
    own = ms[("lora_np", "lora")] / ms[("lora_np", "full")]
    theirs = ms[("torch", "lora")] / ms[("torch", "full")]
    print(f"  LoRA / full step         {own:9.2f}    {theirs:9.2f}")
    print("\ninference forward (no graph)   lora_np")
    for mode in ("base", "merged", "unmerged"):
        print(f"  {mode:<28} {ms[('lora_np', mode)]:7.2f} ms")
    print(f"  PyTorch base                 {ms[('torch', 'base')]:7.2f} ms")
    base = ms[("lora_np", "base")]
    print(f"  merged / base   {ms[('lora_np', 'merged')] / base:.3f}")
    print(f"  unmerged / base {ms[('lora_np', 'unmerged')] / base:.3f}")
    print("\nmemory                         full          lora")
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
