"""Precompute the trainings that notebook 05 (SVD rank analysis) studies.

Four runs on the downstream task ``sub`` (a 26-letter substitution cipher the shipped base
scores 0% on), all from the shipped base ``transformer.load_pretrained()``:

1. a full fine-tune of every parameter (AdamW, no weight decay, so that ΔW = W_ft - W0 holds
   only what the task asked for), from which ΔW of every block Linear is stored in float16;
   two more seeds of it (data order) are scored and summarised in the JSON, not stored;
2. LoRA on q and v with r = 8 (seed 0), r = 64 (seed 0) and r = 64 (seed 1), stored as
   PEFT-layout adapter folders (``lora_np.lora.save_adapter``).

It also scores the model with every block matrix replaced by W0 + (the best rank-r
approximation of ΔW) for r in RANKS, the other (non-matrix) parameters kept fine-tuned.

Writes under experiments/results/:
    05_svd_rank.json                 settings, scores, loss histories (the first steps)
    05_full_ft_delta_layer{i}.safetensors   ΔW (float16) of the six Linears of block i
    05_full_ft_other.safetensors     fine-tuned values of every parameter that is not a block
                                     Linear weight (embeddings, LayerNorms, biases, head)
    05_lora_{r8_s0,r64_s0,r64_s1}/   adapter_config.json + adapter_model.safetensors

Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python experiments/05_svd_rank.py`` (about 5 minutes on
one core). The notebook and tests/test_experiments_05.py import the helpers below.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from safetensors.numpy import save as safetensors_bytes  # noqa: E402

import lora_np as ln  # noqa: E402
from lora_np import analysis, data, lora, serialization, train, transformer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
JSON_PATH = RESULTS / "05_svd_rank.json"

TASK = "sub"
EVAL_N = 200  # held-out prompts per exact-match score (data.exact_match's default seed 1234)
BATCH = 32
FULL = {"steps": 300, "lr": 1e-3, "seed": 0, "weight_decay": 0.0, "grad_clip": 1.0}
LORA = {"steps": 1000, "lr": 3e-3, "alpha": 16, "targets": ["q", "v"], "eval_every": 250}
LORA_RUNS = {"r8_s0": (8, 0), "r64_s0": (64, 0), "r64_s1": (64, 1)}
MATRICES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")
EXTRA_FULL_SEEDS = (1, 2)  # more full fine-tunes, for the spread (numbers only, no weights stored)
RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)  # 128 = min(d, k) for every matrix: the full ΔW
LOSS_STEPS = 20  # how many first-step losses are stored (the notebook and test retrain these)


def matrix_names(n_layer: int = 4) -> list:
    """Dotted names of every block Linear weight, layer by layer: blocks.0.attn.q.weight, ..."""
    return [f"blocks.{i}.{m}.weight" for i in range(n_layer) for m in MATRICES]


def full_finetune(steps: int = FULL["steps"], seed: int = FULL["seed"]):
    """Fine-tune every parameter of the shipped base on TASK; return (model, history)."""
    ln.manual_seed(seed)
    model = transformer.load_pretrained()
    model.requires_grad_(True)
    history = train.train(
        model,
        data.batches(TASK, BATCH, seed=seed),
        steps=steps,
        lr=FULL["lr"],
        weight_decay=FULL["weight_decay"],
        grad_clip=FULL["grad_clip"],
        progress=False,
    )
    return model.eval(), history


def lora_init_seed(r: int, seed: int) -> int:
    """The engine seed for an adapter's initial A: different for every (r, seed).

    With one shared seed the r = 8 and r = 64 runs would start with the same first rows of A
    in the first layer (the generator fills A row by row), a spurious overlap.
    """
    return 1000 * seed + r


def train_lora(r: int, seed: int, steps: int = LORA["steps"], eval_every=None):
    """LoRA on q and v (alpha 16) of the shipped base, trained on TASK; return (model, history).

    ``seed`` picks the data order (``data.batches(..., seed=seed)``) and, through
    :func:`lora_init_seed`, the initial A.
    """
    model = transformer.load_pretrained()
    ln.manual_seed(lora_init_seed(r, seed))
    lora.inject(model, LORA["targets"], r, alpha=LORA["alpha"])
    history = train.train(
        model,
        data.batches(TASK, BATCH, seed=seed),
        steps=steps,
        lr=LORA["lr"],
        eval_every=eval_every,
        eval_fn=(lambda m: data.exact_match(m, TASK, n=EVAL_N)) if eval_every else None,
        progress=False,
    )
    return model.eval(), history


def save_arrays(path: Path, arrays: dict) -> None:
    """Write name -> host array to a safetensors file, atomically (serialization.atomic_write)."""
    serialization.atomic_write(
        path, safetensors_bytes({n: np.ascontiguousarray(a) for n, a in arrays.items()})
    )


def load_full_ft_deltas(folder: Path = RESULTS) -> dict:
    """name -> ΔW (float64 array) of every block Linear, read from the float16 files."""
    deltas = {}
    for i in range(4):
        tensors, _ = serialization.read_weights(folder / f"05_full_ft_delta_layer{i}.safetensors")
        deltas.update({name: tensors[name].astype(np.float64) for name in tensors})
    return {name: deltas[name] for name in matrix_names() if name in deltas}  # model order


def load_full_ft_other(folder: Path = RESULTS) -> dict:
    """name -> fine-tuned array of every parameter that is not a block Linear weight."""
    tensors, _ = serialization.read_weights(folder / "05_full_ft_other.safetensors")
    return tensors


def truncated_model(deltas: dict, other: dict, r: int):
    """The base with W0 + (best rank-r approximation of ΔW) in every block Linear and the
    fine-tuned values of every other parameter; ``r = None`` keeps the whole ΔW."""
    model = transformer.load_pretrained()
    params = dict(model.named_parameters())
    for name, array in other.items():
        params[name].data = ln.backend.xp.asarray(array, dtype=params[name].dtype)
    for name, delta in deltas.items():
        kept = delta if r is None else analysis.best_rank_approximation(delta, r)
        w0 = ln.backend.to_numpy(params[name].data).astype(np.float64)
        params[name].data = ln.backend.xp.asarray((w0 + kept).astype(np.float32))
    return model.eval()


def score(model) -> float:
    return float(data.exact_match(model, TASK, n=EVAL_N))


def split_full_ft(model, base) -> tuple:
    """(ΔW per block Linear as float16, fine-tuned values of every other parameter)."""
    names = matrix_names(base.config.n_layer)
    base_params = {n: ln.backend.to_numpy(p.data) for n, p in base.named_parameters()}
    ft_params = {n: ln.backend.to_numpy(p.data) for n, p in model.named_parameters()}
    deltas = {
        n: (ft_params[n].astype(np.float64) - base_params[n]).astype(np.float16) for n in names
    }
    return deltas, {n: a for n, a in ft_params.items() if n not in names}


def energy_summary(deltas: dict) -> dict:
    """Per matrix (model order): the ranks holding 90% and 99% of ||ΔW||², the top share."""
    out = {"energy_rank_90": [], "energy_rank_99": [], "top_share": []}
    for delta in deltas.values():
        s = analysis.singular_values(delta.astype(np.float64))
        out["energy_rank_90"].append(analysis.energy_rank(s, 0.9))
        out["energy_rank_99"].append(analysis.energy_rank(s, 0.99))
        out["top_share"].append(round(float(s[0] ** 2 / np.sum(s**2)), 4))
    return out


def truncation_curve(deltas: dict, other: dict) -> dict:
    """r -> exact match of W0 + best rank-r ΔW in every block Linear (keys are strings)."""
    deltas = {n: d.astype(np.float64) for n, d in deltas.items()}
    curve = {}
    for r in RANKS:
        curve[str(r)] = score(truncated_model(deltas, other, r))
        print(f"  W0 + ΔW_r, r = {r:3d}: exact match {curve[str(r)]:.3f}")
    return curve


def main() -> None:
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
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
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


if __name__ == "__main__":
    main()
