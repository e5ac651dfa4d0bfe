"""Pretrain the course's base model from scratch and write it to ``lora_np/checkpoints/``.

    python -m lora_np.pretrain            # or: make pretrain

trains a ``GPTConfig()`` model (vocab 64, context 64, n_embd 128, 4 heads, 4 layers) on an
equal mixture of the pretraining tasks in :mod:`lora_np.data`, then writes

* ``tiny_gpt.safetensors`` — the float32 weights, with the config in the file's metadata;
* ``tiny_gpt.json`` — the config, the training settings, the time it took, and the model's
  greedy exact-match score on every task (pretraining and downstream), measured on held-out
  prompts.

The same seed on the same machine, with the same number of BLAS threads, gives the same
weights, bit for bit (data come from a seeded host generator, initialisation from
``backend.manual_seed``; a different thread count sums matrix products in another order, so
the last bits differ). The command line runs on one BLAS thread
(``backend.set_blas_threads(1)``, change it with ``--blas-threads``), as the shipped file was
made. Both files are written as a pair (both new or both old) and only after
training finished without error. It takes about 10 minutes on one core of a laptop-class CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from . import backend, data
from .train import train
from .transformer import CHECKPOINT_DIR, GPT, GPTConfig

DEFAULTS = {
    "steps": 8000,  # optimiser steps
    "batch_size": 64,  # sequences per step, an equal mix of the pretraining tasks
    "lr": 2e-3,  # peak learning rate (AdamW), after warm-up
    "warmup_steps": 100,  # linear warm-up
    "weight_decay": 0.01,  # AdamW's decoupled weight decay
    "grad_clip": 1.0,  # global gradient-norm clipping
    "seed": 0,  # weights and data
    "eval_n": 200,  # held-out prompts per task for the scores in the JSON file
}


def pretrain(
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    warmup_steps: int = DEFAULTS["warmup_steps"],
    weight_decay: float = DEFAULTS["weight_decay"],
    grad_clip: float = DEFAULTS["grad_clip"],
    seed: int = DEFAULTS["seed"],
    config: GPTConfig | None = None,
    tasks=data.PRETRAIN_TASKS,
    eval_every: int | None = None,
    eval_n: int = 100,
    progress: bool = True,
):
    """Train a fresh GPT on ``tasks``; return ``(model, history)``.

    With ``eval_every`` set, the history holds the mean exact match over ``tasks`` on
    ``eval_n`` held-out prompts each, every ``eval_every`` steps.
    """
    config = config or GPTConfig()
    backend.manual_seed(seed)
    model = GPT(config)

    def eval_fn(m):
        return {t: data.exact_match(m, t, n=eval_n) for t in tasks}

    history = train(
        model,
        data.batches(list(tasks), batch_size, seed=seed),
        steps,
        lr=lr,
        warmup_steps=warmup_steps,
        schedule="cosine",
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        eval_every=eval_every,
        eval_fn=eval_fn if eval_every else None,
        log_every=10,
        progress=progress,
        desc="pretrain",
    )
    model.eval()
    return model, history


def scores(model, n: int = DEFAULTS["eval_n"], tasks=tuple(data.TASKS)) -> dict:
    """Greedy exact match of ``model`` on ``n`` held-out prompts of every task."""
    return {t: round(data.exact_match(model, t, n=n), 4) for t in tasks}


def write_checkpoint(model, out_dir, name: str, info: dict) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``out_dir`` as a pair: both new,
    or (when the save fails) both as they were (``serialization.write_pair``)."""
    out_dir = Path(out_dir)
    card = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    weights = model.save(
        out_dir / f"{name}.safetensors",
        metadata={"info": json.dumps(info, sort_keys=True)},
        partner=(f"{name}.json", card),
    )
    return weights, out_dir / f"{name}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lora_np.pretrain", description=__doc__.split("\n\n")[0]
    )
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out-dir", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--name", default="tiny_gpt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads (1 reproduces the shipped file)"
    )
    args = parser.parse_args(argv)
    backend.set_blas_threads(args.blas_threads)

    started = time.perf_counter()
    model, history = pretrain(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        seed=args.seed,
        progress=not args.no_progress,
    )
    train_seconds = time.perf_counter() - started
    result = scores(model, n=args.eval_n)
    info = {
        "config": asdict(model.config),
        "pretrain_tasks": list(data.PRETRAIN_TASKS),
        "downstream_tasks": list(data.DOWNSTREAM_TASKS),
        "settings": {k: getattr(args, k) for k in DEFAULTS},
        "final_loss": round(sum(history["loss"][-10:]) / len(history["loss"][-10:]), 4),
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "parameters": model.num_parameters(),
        "exact_match": result,
        "eval": "greedy exact match on held-out (test-split) prompts, data.exact_match(model, task, n, seed=1234)",
    }
    weights, json_path = write_checkpoint(model, args.out_dir, args.name, info)
    print(json.dumps({"exact_match": result, "train_seconds": info["train_seconds"]}, indent=2))
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
