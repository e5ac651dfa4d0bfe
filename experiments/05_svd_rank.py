"""Precompute the trainings that notebook 05 (SVD rank analysis) studies.

Four runs on the downstream task ``sub`` (a 26-letter substitution cipher the shipped base
scores 0% on), all from the shipped base ``transformer.load_pretrained()``; the recipes and
the helpers that read the results back live in ``lora_np/svd_rank.py``:

1. a full fine-tune of every parameter (AdamW, no weight decay, so that ΔW = W_ft - W0 holds
   only what the task asked for), from which ΔW of every block Linear is stored in float16;
   two more seeds of it (data order) are scored and summarised in the JSON, not stored;
2. LoRA on q and v with r = 8 (seed 0), r = 64 (seed 0) and r = 64 (seed 1), stored as
   PEFT-layout adapter folders (``lora_np.lora.save_adapter``);
3. the same LoRA recipe at r = 8 and r = 64 on an unrelated task (``CROSS_TASK``, swp) from
   inits of their own: the cross-task null of notebook 05's subspace similarity. Alone:
   ``05_svd_rank.py --cross-task`` (about 2 minutes) adds them to an existing JSON.

It also scores the model with every block matrix replaced by W0 + (the best rank-r
approximation of ΔW) for r in RANKS, the other (non-matrix) parameters kept fine-tuned.

Writes into the package's results folder, lora_np/results/ (``lora_np.results``):
    05_svd_rank.json                 settings, scores, loss histories (the first steps)
    05_full_ft_delta_layer{i}.safetensors   ΔW (float16) of the six Linears of block i
    05_full_ft_other.safetensors     fine-tuned values of every parameter that is not a block
                                     Linear weight (embeddings, LayerNorms, biases, head)
    05_lora_{r8_s0,r64_s0,r64_s1}/   adapter_config.json + adapter_model.safetensors
    05_cross_task_A.safetensors      the cross-task adapters' A matrices (float16)

Run from a clone with the editable install (``make experiments``, or
``.venv/bin/python experiments/05_svd_rank.py``): about 5 minutes on one core.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_bytes

import lora_np as ln
from lora_np import data, lora, serialization, train, transformer
from lora_np.results import FOLDER as RESULTS
from lora_np.svd_rank import (
    BATCH,
    EVAL_N,
    EXTRA_FULL_SEEDS,
    FULL,
    JSON_NAME,
    LORA,
    LORA_RUNS,
    LOSS_STEPS,
    RANKS,
    TASK,
    energy_summary,
    full_finetune,
    load_full_ft_deltas,
    load_full_ft_other,
    lora_init_seed,
    matrix_names,
    score,
    split_full_ft,
    train_lora,
    truncation_curve,
)

JSON_PATH = RESULTS / JSON_NAME


def save_arrays(path: Path, arrays: dict) -> None:
    """Write name -> host array to a safetensors file, atomically (serialization.atomic_write)."""
    serialization.atomic_write(
        path, safetensors_bytes({n: np.ascontiguousarray(a) for n, a in arrays.items()})
    )


# --cross-task: the same LoRA recipe on an unrelated task, from inits of their own: the null
# level of φ for "two adapters of this model that share no task" (notebook 05, section 4)
CROSS_TASK = "swp"  # a routing rule (swap adjacent letters); sub is a letter table
CROSS_SEED = 7  # data order; A from lora_init_seed(r, 7), unlike every sub run's
CROSS_RANKS = (8, 64)
CROSS_FILE = "05_cross_task_A.safetensors"  # "r{r}.blocks.{i}.attn.{q,v}.A" -> (r, 128) float16


def cross_task_adapter(r: int):
    """LoRA on q, v (05's recipe: alpha 16, lr 3e-3, 1000 steps) trained on CROSS_TASK."""
    model = transformer.load_pretrained()
    ln.manual_seed(lora_init_seed(r, CROSS_SEED))
    lora.inject(model, LORA["targets"], r, alpha=LORA["alpha"])
    history = train.train(
        model,
        data.batches(CROSS_TASK, BATCH, seed=CROSS_SEED),
        steps=LORA["steps"],
        lr=LORA["lr"],
        progress=False,
    )
    return model.eval(), history


def cross_task_main() -> None:
    """Train and store the cross-task adapters; add their entry to the existing JSON."""
    ln.backend.set_blas_threads(1)
    results = json.loads(JSON_PATH.read_text())
    entry = {"task": CROSS_TASK, "seed": CROSS_SEED, "file": CROSS_FILE, "runs": {}}
    arrays = {}  # only the A matrices, float16: φ needs nothing else (results budget: 3 MiB)
    for r in CROSS_RANKS:
        model, history = cross_task_adapter(r)
        for name, layer in lora.lora_layers(model):
            arrays[f"r{r}.{name}.A"] = ln.to_numpy(layer.A.data).astype(np.float16)  # (r, k)
        entry["runs"][f"r{r}"] = {
            "r": r,
            "init_seed": lora_init_seed(r, CROSS_SEED),
            "exact_match": data.exact_match(model, CROSS_TASK, n=EVAL_N),
            "train_seconds": round(history["train_seconds"], 1),
            "final_loss": round(history["loss"][-1], 5),
        }
        print(f"cross-task LoRA r = {r} on {CROSS_TASK}: {entry['runs'][f'r{r}']}", flush=True)
    save_arrays(RESULTS / CROSS_FILE, arrays)
    results["cross_task"] = entry
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    serialization.atomic_write(JSON_PATH, text.encode())


def main() -> None:
    if sys.argv[1:] == ["--cross-task"]:
        return cross_task_main()
    if sys.argv[1:]:
        raise SystemExit(f"unknown arguments {sys.argv[1:]}; expected none or --cross-task")
    threads = ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {
        "task": TASK,
        "eval": f"greedy exact match on {EVAL_N} held-out prompts, data.exact_match(model, "
        f"{TASK!r}, n={EVAL_N}) (seed 1234, test split)",
        "batch_size": BATCH,
        "full_ft_settings": FULL,
        "lora_settings": LORA,
        "ranks": list(RANKS),
        "blas_threads": str(threads),
    }
    base = transformer.load_pretrained()
    results["base_exact_match"] = score(base)
    print(f"base exact match on {TASK}: {results['base_exact_match']:.3f}")

    # 1. full fine-tune ------------------------------------------------------------------
    model, history = full_finetune()
    ft_params = {n: ln.backend.to_numpy(p.data) for n, p in model.named_parameters()}
    names = matrix_names(base.config.n_layer)
    deltas16, other = split_full_ft(model, base)
    results["full_ft"] = {
        "exact_match": score(model),
        "train_seconds": round(history["train_seconds"], 1),
        "first_losses": [round(x, 6) for x in history["loss"][:LOSS_STEPS]],
        "final_loss": round(history["loss"][-1], 5),
        "parameters": int(sum(a.size for a in ft_params.values())),
        "matrix_parameters": int(sum(ft_params[n].size for n in names)),
    }
    results["full_ft"].update(energy_summary(deltas16))
    print(
        f"full fine-tune: {FULL['steps']} steps in {history['train_seconds']:.0f} s, "
        f"exact match {results['full_ft']['exact_match']:.3f}"
    )
    for i in range(base.config.n_layer):
        layer = {n: d for n, d in deltas16.items() if n.startswith(f"blocks.{i}.")}
        save_arrays(RESULTS / f"05_full_ft_delta_layer{i}.safetensors", layer)
    save_arrays(RESULTS / "05_full_ft_other.safetensors", other)

    # 2. best rank-r approximations of ΔW plugged back in (from the stored float16 ΔW) -----
    deltas, other = load_full_ft_deltas(), load_full_ft_other()
    results["truncated_exact_match"] = truncation_curve(deltas, other)

    # 2b. the same for more seeds of the full fine-tune (numbers only) ----------------------
    results["full_ft_seeds"] = {}
    for seed in EXTRA_FULL_SEEDS:
        model, history = full_finetune(seed=seed)
        seed_deltas, seed_other = split_full_ft(model, base)
        entry = {"exact_match": score(model), "train_seconds": round(history["train_seconds"], 1)}
        print(f"full fine-tune, seed {seed}: exact match {entry['exact_match']:.3f}")
        entry["truncated_exact_match"] = truncation_curve(seed_deltas, seed_other)
        entry.update(energy_summary(seed_deltas))
        results["full_ft_seeds"][str(seed)] = entry

    # 3. LoRA adapters ---------------------------------------------------------------------
    results["lora"] = {}
    for tag, (r, seed) in LORA_RUNS.items():
        model, history = train_lora(r, seed, eval_every=LORA["eval_every"])
        folder = lora.save_adapter(model, RESULTS / f"05_lora_{tag}")
        results["lora"][tag] = {
            "r": r,
            "seed": seed,
            "init_seed": lora_init_seed(r, seed),
            "exact_match": history["eval"][-1],
            "eval_step": history["eval_step"],
            "eval": history["eval"],
            "train_seconds": round(history["train_seconds"], 1),
            "first_losses": [round(x, 6) for x in history["loss"][:LOSS_STEPS]],
            "final_loss": round(history["loss"][-1], 5),
            "adapter_bytes": sum(f.stat().st_size for f in folder.iterdir()),
        }
        print(
            f"LoRA q,v r = {r} seed {seed}: {LORA['steps']} steps in "
            f"{history['train_seconds']:.0f} s, exact match {history['eval'][-1]:.3f}"
        )
    results["script_seconds"] = round(time.perf_counter() - started, 1)
    JSON_PATH.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {JSON_PATH} ({results['script_seconds']:.0f} s in all)")
    cross_task_main()  # 4. the cross-task adapters, added to the JSON


if __name__ == "__main__":
    main()
