"""Experiment for notebook 07: which matrices to adapt under a fixed budget, compared fairly.

The paper's Table 5 question on two tasks of the shipped base (lora_np/checkpoints/tiny_gpt.json):
given a fixed number of trainable parameters, is it better spent on one weight matrix at a
higher rank or on several at a lower rank?

Fairness, as issue 14 asks (the first version of this comparison, in 07_finetune.py, kept
alpha = 16 at every rank, so s = alpha / r and with Adam the size of each step in Delta W
differed up to 8x between the compared configurations, at one learning rate tuned for q+v):

* **alpha / r fixed**: alpha = 2 r for every configuration, so s = 2 everywhere (the recipe's
  r = 8, alpha = 16) and every adapter's output is scaled alike.
* **prv** (each letter to the previous one; 300 steps; exact match on 200 held-out prompts,
  seed 1234): the seven configurations of ``WHICH``, 8,192 trainable parameters each (q, k, v,
  o alone at r = 8; q+k and q+v at r = 4; all four at r = 2). Each configuration gets its own
  learning rate from ``PRV_GRID``, chosen on the tuning seed ``TUNE_SEED`` (never reported) by
  the lowest mean training loss over the last 50 steps (ties: the smaller rate). When the best
  sits on an edge of the grid, the grid grows by one value in that direction (x ~3) and the
  choice is made again; at most one extension per configuration, and a best still on the edge
  after it is recorded as such (``prv_lr[...]["on_edge"]``). Then seeds 0, 1, 2 at each
  configuration's chosen rate.
* **hop** (shift each letter by the digit after it; 1,200 steps): the ten configurations of
  ``HOP_WHICH`` (16,384 trainable parameters each, except the MLP at 15,360 and q, v at r = 32
  with 4x the budget), one learning rate, 3e-3, for all of them: with alpha / r fixed the rate
  means the same step for every configuration. A grid per configuration would cost 3x the
  longest runs; instead, last, the three best configurations by mean exact match are also run
  at 1e-3 and 1e-2 on seed 0 (``hop_bracket``) to show whether 3e-3 is on the wrong side of
  their best rate.
  ``--no-bracket`` leaves that check out (the file then says so).

Each run: the frozen shipped base, ``lora.inject(model, targets, r, alpha=2 r)`` after
``ln.manual_seed(seed)`` (which draws the adapters' A; the seed also draws the training
batches), AdamW (betas 0.9, 0.99, no weight decay), constant rate, gradient clipping at 1,
batch 32: the settings of experiments/07_finetune.py, whose constants this script imports.

Run:  python experiments/07_which_matrices.py [--resume] [--no-bracket]
Two worker processes (LORA_NP_WORKERS=1 for one), one BLAS thread each (bit-reproducible runs
on one machine). 85 runs; 2,027 s (34 min) in all on a 2-core x86_64 machine shared with
another experiment, where a 300-step prv run took 15-40 s and a 1,200-step hop run 45-170 s.
Writes lora_np/results/07_which_matrices.json after every finished
run; ``--resume`` keeps the runs already in the file and does only the missing ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lora_np as ln
from lora_np import data, lora, optim, train, transformer
from lora_np import results as results_folder


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


FT = _load_finetune()  # the shared recipe (batch, clipping, AdamW's betas, evaluation)

RESULTS = results_folder.FOLDER / "07_which_matrices.json"

ALPHA_PER_RANK = 2.0  # alpha = 2 r: s = alpha / r = 2 for every configuration
SEEDS = (0, 1, 2)
TUNE_SEED = 100  # picks prv's learning rates; never reported
PRV = {"task": "prv", "steps": 300}
PRV_GRID = (1e-3, 3e-3, 1e-2)
GRID_BELOW, GRID_ABOVE = 3e-4, 3e-2  # the one extension allowed on each side
WHICH = (  # (targets, r): 4 layers x r x (128 + 128) x len(targets) = 8,192 parameters each
    (("q",), 8),
    (("k",), 8),
    (("v",), 8),
    (("o",), 8),
    (("q", "k"), 4),
    (("q", "v"), 4),
    (("q", "k", "v", "o"), 2),
)
HOP = {"task": "hop", "steps": 1200}
HOP_LR = 3e-3
HOP_WHICH = (  # (targets, r): 16,384 trainable parameters each, except the last two
    (("q",), 16),
    (("k",), 16),
    (("v",), 16),
    (("o",), 16),
    (("q", "k"), 8),
    (("q", "v"), 8),
    (("k", "o"), 8),
    (("q", "k", "v", "o"), 4),
    (("fc", "proj"), 3),  # the MLP: 4 x 3 x (128 + 512) x 2 = 15,360
    (("q", "v"), 32),  # q, v at 4x the budget: is it rank that q, v lack?
)
BRACKET_LRS = (1e-3, 1e-2)  # the best hop configurations, seed 0
BRACKET_TOP = 3  # three, as q+v at 4x the budget can take one of the places


def name(targets, r) -> str:
    """A configuration's name, e.g. ``"q+v r=4"``."""
    return f"{'+'.join(targets)} r={r}"


def run(task: str, targets, r: int, seed: int, lr: float, steps: int) -> dict:
    """Train one LoRA configuration with alpha = 2 r and measure it; one result row."""
    started = time.perf_counter()
    alpha = ALPHA_PER_RANK * r
    ln.manual_seed(seed)  # draws the adapters' A
    model = transformer.load_pretrained()
    lora.inject(model, list(targets), r, alpha=alpha)
    trainable, _ = lora.count_parameters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.AdamW(params, lr=lr, betas=FT.BETAS, weight_decay=FT.WEIGHT_DECAY)
    history = train.train(
        model,
        data.batches(task, FT.BATCH, seed=seed),
        steps,
        lr,
        optimizer=opt,
        grad_clip=FT.GRAD_CLIP,
        progress=False,
    )
    model.eval()
    return {
        "task": task,
        "targets": list(targets),
        "r": r,
        "alpha": alpha,
        "scaling": alpha / r,
        "seed": seed,
        "lr": lr,
        "steps": steps,
        "trainable_params": int(trainable),
        "final_loss": float(statistics.fmean(history["loss"][-FT.LOSS_WINDOW :])),
        "exact_match": data.exact_match(model, task, n=FT.EVAL_N, seed=FT.EVAL_SEED),
        "step_seconds": history["train_seconds"] / history["steps_done"],
        "wall_seconds": time.perf_counter() - started,
    }


def base_row(task: str) -> dict:
    """The frozen base's exact match on ``task`` (no training)."""
    model = transformer.load_pretrained()
    model.eval()
    return {"task": task, "exact_match": data.exact_match(model, task, FT.EVAL_N, FT.EVAL_SEED)}


def _key(job_or_row: dict) -> tuple:
    j = job_or_row
    return (j["task"], tuple(j["targets"]), j["r"], j["seed"], j["lr"], j["steps"])


def choose_lr(rows: list, targets, r) -> dict:
    """The tuning decision for one prv configuration from its tuning rows so far.

    Returns ``{"lr", "grid", "extended", "on_edge", "next"}``: ``next`` is the rate still to
    try (the grid's extension) or None when the choice is made.
    """
    mine = [x for x in rows if x["targets"] == list(targets) and x["r"] == r]
    tried = sorted(x["lr"] for x in mine)
    best = min(mine, key=lambda x: (x["final_loss"], x["lr"]))["lr"]
    extended = len(tried) > len(PRV_GRID)
    on_edge = best in (tried[0], tried[-1])
    nxt = None
    if on_edge and not extended:
        nxt = GRID_BELOW if best == tried[0] else GRID_ABOVE
    return {"lr": best, "grid": tried, "extended": extended, "on_edge": on_edge, "next": nxt}


def summary(rows: list) -> list:
    """Mean, std, min and max exact match and final loss per (task, targets, r, lr, steps)."""
    groups: dict = {}
    for row in rows:
        key = (row["task"], tuple(row["targets"]), row["r"], row["lr"], row["steps"])
        groups.setdefault(key, []).append(row)
    out = []
    for (task, targets, r, lr, steps), group in groups.items():
        em = [g["exact_match"] for g in sorted(group, key=lambda g: g["seed"])]
        loss = [g["final_loss"] for g in sorted(group, key=lambda g: g["seed"])]
        out.append(
            {
                "task": task,
                "targets": list(targets),
                "r": r,
                "lr": lr,
                "steps": steps,
                "trainable_params": group[0]["trainable_params"],
                "seeds": sorted(g["seed"] for g in group),
                "exact_match": em,
                "exact_match_mean": statistics.fmean(em),
                "exact_match_std": statistics.pstdev(em),
                "exact_match_min": min(em),
                "exact_match_max": max(em),
                "final_loss_mean": statistics.fmean(loss),
            }
        )
    return out


def _sort_key(row: dict):
    return (row["task"], ",".join(row["targets"]), row["r"], row["lr"], row["seed"])


def write(results: dict) -> None:
    for where in ("prv_tuning", "runs", "hop_bracket"):
        results[where] = sorted(results[where], key=_sort_key)
    results["summary"] = summary(results["runs"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


def _settings(workers: int, bracket: bool) -> dict:
    return {
        "alpha": "2 r for every configuration (s = alpha / r = 2; the recipe's r = 8, alpha = 16)",
        "alpha_per_rank": ALPHA_PER_RANK,
        "seeds": list(SEEDS),
        "batch_size": FT.BATCH,
        "grad_clip": FT.GRAD_CLIP,
        "betas": list(FT.BETAS),
        "weight_decay": FT.WEIGHT_DECAY,
        "optimizer": "AdamW, constant lr, no warm-up",
        "eval": f"data.exact_match(model, task, n={FT.EVAL_N}, seed={FT.EVAL_SEED}) (test split)",
        "prv": {
            **PRV,
            "which": [{"targets": list(t), "r": r} for t, r in WHICH],
            "lr_grid": list(PRV_GRID),
            "lr_extension": {"below": GRID_BELOW, "above": GRID_ABOVE},
            "lr_rule": (
                f"per configuration: lowest mean training loss over the last {FT.LOSS_WINDOW} "
                f"steps on tuning seed {TUNE_SEED} (never reported), ties to the smaller lr; "
                "a best on a grid edge extends the grid once in that direction"
            ),
            "tune_seed": TUNE_SEED,
        },
        "hop": {
            **HOP,
            "lr": HOP_LR,
            "lr_rule": (
                "one lr for every configuration (alpha / r fixed, so the same lr means the same "
                "step); not tuned per configuration, which would cost 3x the longest runs"
            ),
            "which": [{"targets": list(t), "r": r} for t, r in HOP_WHICH],
            "bracket": (
                {"top": BRACKET_TOP, "lrs": list(BRACKET_LRS), "seed": 0}
                if bracket
                else "left out (--no-bracket)"
            ),
        },
        "blas_threads": "1",  # set_blas_threads(1) in every process
        "workers": workers,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "seconds_note": "wall-clock on the machine that ran the script, shared with other jobs: "
        "compare ratios only",
    }


def _run_job(job: dict) -> dict:
    return run(**job)


def _prv_decisions(results: dict, runner: FT.Runner) -> bool:
    """Queue what the prv tuning rows so far call for; True when every rate is chosen."""
    all_chosen = True
    for targets, r in WHICH:
        tuned = {
            x["lr"] for x in results["prv_tuning"] if x["targets"] == list(targets) and x["r"] == r
        }
        if not set(PRV_GRID) <= tuned:
            all_chosen = False
            continue
        choice = choose_lr(results["prv_tuning"], targets, r)
        if choice["next"] is not None:
            all_chosen = False
            job = {**PRV, "targets": targets, "r": r, "seed": TUNE_SEED, "lr": choice["next"]}
            runner.add("prv_tuning", job, priority=0)
            continue
        del choice["next"]
        results["prv_lr"][name(targets, r)] = choice
        for seed in SEEDS:
            runner.add(
                "runs", {**PRV, "targets": targets, "r": r, "seed": seed, "lr": choice["lr"]}, 1
            )
    return all_chosen


def _hop_best(results: dict) -> list:
    """The BRACKET_TOP hop configurations with the highest mean exact match (then lower loss)."""
    rows = [s for s in summary(results["runs"]) if s["task"] == HOP["task"]]
    rows.sort(key=lambda s: (-s["exact_match_mean"], s["final_loss_mean"]))
    return [(tuple(s["targets"]), s["r"]) for s in rows[:BRACKET_TOP]]


def main() -> None:
    """Run every job in order (prv tuning, prv seeds, hop, hop bracket); see the docstring."""
    workers = int(os.environ.get("LORA_NP_WORKERS", "2"))
    bracket = "--no-bracket" not in sys.argv[1:]
    started = time.perf_counter()
    results = {
        "about": "notebook 07, which matrices under a fixed budget with alpha / r fixed; "
        "see experiments/07_which_matrices.py",
        "settings": _settings(workers, bracket),
        "base": {},
        "prv_tuning": [],
        "prv_lr": {},
        "runs": [],
        "hop_bracket": [],
        "complete": False,
        "script_seconds": 0.0,
    }
    if "--resume" in sys.argv[1:] and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        for where in ("prv_tuning", "runs", "hop_bracket"):
            results[where] = old[where]
        results["script_seconds"] = old.get("script_seconds", 0.0)
    before = results["script_seconds"]
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    for task in (PRV["task"], HOP["task"]):
        results["base"][task] = base_row(task)["exact_match"]
    # ... and one BLAS thread in every worker, whatever the start method
    with ProcessPoolExecutor(
        max_workers=workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
    ) as pool:
        runner = FT.Runner(
            pool,
            workers,
            results,
            started,
            before,
            run_job=_run_job,
            key=_key,
            describe=lambda row: f"{row['task']} {name(row['targets'], row['r'])}",
            write=write,
        )
        for targets, r in WHICH:  # 1. prv: each configuration's learning rate
            for lr in PRV_GRID:
                job = {**PRV, "targets": targets, "r": r, "seed": TUNE_SEED, "lr": lr}
                runner.add("prv_tuning", job, priority=0)
        for targets, r in HOP_WHICH:  # 3. hop, behind prv's tuning and seeds (priority 2)
            for seed in SEEDS:
                job = {**HOP, "targets": targets, "r": r, "seed": seed, "lr": HOP_LR}
                runner.add("runs", job, priority=2)
        _prv_decisions(results, runner)  # 2. prv seeds as soon as a rate is chosen
        while runner.busy():
            runner.step()
            _prv_decisions(results, runner)
        if bracket:  # 4. are the best hop configurations near their best lr?
            results["settings"]["hop"]["bracket"]["configurations"] = [
                {"targets": list(t), "r": r} for t, r in _hop_best(results)
            ]
            for targets, r in _hop_best(results):
                for lr in BRACKET_LRS:
                    job = {**HOP, "targets": targets, "r": r, "seed": 0, "lr": lr}
                    runner.add("hop_bracket", job, priority=3)
            while runner.busy():
                runner.step()
    for key, choice in results["prv_lr"].items():
        print(f"prv {key}: lr {choice['lr']:.0e} from {choice['grid']}", flush=True)
    results["script_seconds"] = before + time.perf_counter() - started
    results["complete"] = True
    write(results)
    print(f"done in {results['script_seconds']:.0f} s -> {RESULTS}")


if __name__ == "__main__":
    main()
