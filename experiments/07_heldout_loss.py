"""Held-out loss for notebook 07's "all-linear LoRA against full fine-tuning" comparison.

Exact match saturates: at the main budgets full fine-tuning and LoRA r = 8 on every Linear
layer both score 0.995-1.000, so it cannot say whether one is ahead. The training loss does not
saturate but is measured on training batches. This script reruns those configurations and adds
a measure that neither saturates nor sees training data: the **held-out loss**, the mean
cross-entropy per answer token, teacher-forced, on the same 200 test prompts that exact match
scores (``data.make_examples(task, 200, seed=1234, split="test")``; the prompt tokens do not
count, as in training).

What it reruns: on ``prv`` (300 steps) and ``sub`` (600 steps), full fine-tuning and LoRA
(alpha = 2 r) on every Linear layer ("all-linear") at r = 8, seeds 0, 1, 2,
each at the peak rate that experiments/07_finetune.py tuned for it (read from its results
file), with that script's recipe (``train_config``). Each row also repeats the exact match and
final training loss, so a reader can check they equal 07_finetune.json's rows; the frozen base's
held-out loss is the reference line.

Writes lora_np/results/07_heldout_loss.json (atomically, after every run; ``--resume`` keeps the
runs already there). Run:
    .venv/bin/python experiments/07_heldout_loss.py [--resume]
two worker processes (LORA_NP_WORKERS=1 for one), one BLAS thread each; about 4 minutes on two
quiet cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lora_np as ln
from lora_np import data, serialization, transformer
from lora_np import results as results_folder

RESULTS = results_folder.FOLDER / "07_heldout_loss.json"
METHODS = (("full", None, None), ("lora", "all-linear", 8))


def _load_finetune():
    """experiments/07_finetune.py as a module (its name starts with a digit)."""
    name = "experiment_07_finetune"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parent / "07_finetune.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


FT = _load_finetune()


def heldout_loss(model, task: str) -> float:
    """Mean cross-entropy per answer token on the 200 test prompts that exact match scores."""
    examples = data.make_examples(task, FT.EVAL_N, seed=FT.EVAL_SEED, split="test")
    idx, targets = data.encode_examples(examples)  # (200, T) each; prompt tokens ignored
    model.eval()
    with ln.no_grad():
        _, loss = model(idx, targets)
    return float(ln.to_numpy(loss.data))


def _row(job: tuple) -> dict:
    """(task, method, targets, r, seed, lr): train that run with 07's recipe and measure it."""
    task, method, targets, r, seed, lr = job
    config = FT._config(task, method, targets, r)
    model, _, history, _, _ = FT.train_config(config, seed=seed, lr=lr)
    steps = config["steps"]
    return {
        **config,
        "seed": seed,
        "lr": lr,
        "final_loss": float(statistics.fmean(history["loss"][-FT.loss_window(steps) :])),
        "heldout_loss": heldout_loss(model, task),
        "exact_match": data.exact_match(model, task, n=FT.EVAL_N, seed=FT.EVAL_SEED),
    }


def _write(out: dict) -> None:
    order = {
        (t, m, str(g)): i
        for i, (t, (m, g, _)) in enumerate((t, x) for t in FT.TASKS for x in METHODS)
    }
    out["runs"].sort(key=lambda x: (order[x["task"], x["method"], str(x["targets"])], x["seed"]))
    serialization.atomic_write(RESULTS, (json.dumps(out, indent=1, sort_keys=True) + "\n").encode())


def main() -> None:
    """Every run of ``METHODS`` x tasks x seeds; writes after each, ``--resume`` keeps the file's."""
    workers = int(os.environ.get("LORA_NP_WORKERS", "2"))
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    started = time.perf_counter()
    tuned = json.loads(FT.RESULTS.read_text())["lr"]  # the rates 07_finetune.py chose
    out = {
        "about": "held-out loss (mean cross-entropy per answer token, teacher-forced, on the "
        f"{FT.EVAL_N} test prompts of data.exact_match, seed {FT.EVAL_SEED}) for notebook 07's "
        "main-budget comparison; see experiments/07_heldout_loss.py",
        "base": {task: heldout_loss(transformer.load_pretrained(), task) for task in FT.TASKS},
        "runs": [],
        "script_seconds": 0.0,
    }
    if "--resume" in sys.argv[1:] and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        out["runs"], out["script_seconds"] = old["runs"], old["script_seconds"]
    before = out["script_seconds"]
    done = {(x["task"], x["method"], str(x["targets"]), x["seed"]) for x in out["runs"]}
    jobs = []
    for task in FT.TASKS:
        for method, targets, r in METHODS:
            lr = tuned[FT.name(FT._config(task, method, targets, r))]["lr"]
            targets = list(targets) if isinstance(targets, tuple) else targets
            for seed in FT.SEEDS:
                if (task, method, str(targets), seed) not in done:
                    jobs.append((task, method, targets, r, seed, lr))
    with ProcessPoolExecutor(
        max_workers=workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
    ) as pool:
        for row in pool.map(_row, jobs):
            out["runs"].append(row)
            out["script_seconds"] = round(before + time.perf_counter() - started, 1)
            _write(out)
            print(
                f"{FT.name(row)} seed {row['seed']} lr {row['lr']:.0e}: held-out loss "
                f"{row['heldout_loss']:.5f}, train loss {row['final_loss']:.5f}, exact "
                f"match {row['exact_match']:.3f}",
                flush=True,
            )
    _write(out)
    print(f"wrote {RESULTS} ({out['script_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
