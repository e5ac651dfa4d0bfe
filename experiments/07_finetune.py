"""Experiment for notebook 07: the frozen base, full fine-tuning and LoRA, each at its own
tuned learning rate.

Tasks the shipped base (lora_np/checkpoints/tiny_gpt.json) fails at:

* ``prv`` (each letter to the previous one): easy, only the direction is new;
* ``sub`` (a fixed 26-letter substitution key): a new lookup table, the task where rank shows;
* ``hop`` (shift each letter by the digit after it): only full fine-tuning at 1,200 steps, the
  reference line of notebook 07's which-matrices figure (experiments/07_which_matrices.py).

What is compared (``CONFIGS``, one entry per configuration):

1. **Rank** (``RANKS``): LoRA on q, v at r = 1 ... 64, and full fine-tuning, on prv (300 steps)
   and sub (600 steps).
2. **LoRA against full fine-tuning at three budgets** (``BUDGETS``): full fine-tuning, LoRA on
   q, v at r = 8 and LoRA on every Linear layer but the head (PEFT's "all-linear": q, k, v, o,
   fc, proj) at r = 8, on prv at 100, 300 and 900 steps and on sub at 200 and 600 steps.
3. ``hop``: full fine-tuning, 1,200 steps at a constant rate, as the hop LoRAs of
   07_which_matrices.py were trained.

The recipe, the same for every configuration unless stated: AdamW (betas 0.9, 0.99, no weight
decay), batch 32, gradient clipping at 1, a linear warm-up over the first 10% of the steps and
a cosine decay to a tenth of the peak rate (``train.lr_at``); hop: constant rate, no warm-up.
LoRA: alpha = 2 r, so s = alpha / r = 2 at every rank (the recipe's r = 8, alpha = 16; the
which-matrices experiment holds s at 2 too). A seed draws the training batches and the
adapters' A; full fine-tuning starts from the same base every time.

**Learning rates, per configuration.** Each configuration (task, method, rank, budget) gets its
own peak rate: tried on the tuning seed ``TUNE_SEED`` (never reported) over its method's grid
(``GRID``), chosen by the lowest mean training loss over the last ``loss_window(steps)`` steps
(ties: the smaller rate; exact match saturates, the loss does not). While the best sits on an
edge of the rates tried, the next rate of ``LADDER`` beyond that edge is tried too, at most
``MAX_EXTENSIONS`` times; a best still on an edge after that is recorded (``on_edge``). Then
seeds 0, 1, 2 at the chosen rate. Every run is scored by greedy exact match on 200 held-out
prompts (``data.exact_match``, test split, seed 1234).

Recorded per run: exact match, final training loss, trainable parameters, optimiser-state bytes
(``optimizer.state_bytes()``), bytes on disk (the PEFT adapter folder that
``lora.save_adapter`` writes; for full fine-tuning the whole model from
``serialization.save_weights``) and seconds per step (machine-dependent: compare ratios only).

Run:  python experiments/07_finetune.py [--resume]
Two worker processes (LORA_NP_WORKERS=1 for one), one BLAS thread each (a run repeats bit for bit
on one machine). See ``script_seconds`` in the results for how long it took. Writes
lora_np/results/07_finetune.json (``lora_np.results``) after every finished run, so a partial
sweep is usable; ``--resume`` keeps the runs already in the file and does only the missing ones.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import lora_np as ln
from lora_np import data, lora, optim, serialization, train, transformer
from lora_np import results as results_folder

RESULTS = results_folder.FOLDER / "07_finetune.json"  # lora_np/results/, shipped with the package

# The shared recipe (07_which_matrices.py imports these)
BATCH = 32
GRAD_CLIP = 1.0
BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.0
EVAL_N = 200
EVAL_SEED = 1234
LOSS_WINDOW = 50  # steps averaged for "final loss"
ALPHA_PER_RANK = 2.0  # alpha = 2 r: s = 2 at every rank
WARMUP_FRACTION = 0.1

SEEDS = (0, 1, 2)
TUNE_SEED = 100  # picks every learning rate; never reported
TASKS = ("prv", "sub")
STEPS = {"prv": 300, "sub": 600}  # the main budget of each task
RANKS = (1, 2, 4, 8, 16, 32, 64)
BUDGETS = {"prv": (100, 300, 900), "sub": (200, 600)}
BUDGET_METHODS = (("full", None, None), ("lora", ("q", "v"), 8), ("lora", "all-linear", 8))
HOP_FULL = {"task": "hop", "method": "full", "steps": 1200, "schedule": "constant"}

GRID = {"full": (1e-4, 3e-4, 1e-3), "lora": (3e-3, 1e-2, 3e-2)}
LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
MAX_EXTENSIONS = 3


def _config(task, method, targets=None, r=None, steps=None, schedule="cosine") -> dict:
    targets = list(targets) if isinstance(targets, tuple | list) else targets
    return {
        "task": task,
        "method": method,
        "targets": targets,
        "r": r,
        "steps": STEPS[task] if steps is None else steps,
        "schedule": schedule,
    }


def _configs() -> list:
    out = []
    for task in TASKS:
        out.append(_config(task, "full"))
        out += [_config(task, "lora", ("q", "v"), r) for r in RANKS]
    for task, budgets in BUDGETS.items():
        for steps in budgets:
            out += [_config(task, m, t, r, steps) for m, t, r in BUDGET_METHODS]
    out.append(_config(**HOP_FULL))
    unique = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


CONFIGS = _configs()


def name(config: dict) -> str:
    """A configuration's name, e.g. ``"prv lora q+v r=8 300 steps"``."""
    c = config
    what = "full" if c["method"] == "full" else f"lora {targets_name(c['targets'])} r={c['r']}"
    return f"{c['task']} {what} {c['steps']} steps" + (
        "" if c["schedule"] == "cosine" else f" {c['schedule']}"
    )


def targets_name(targets) -> str:
    return targets if isinstance(targets, str) else "+".join(targets)


def loss_window(steps: int) -> int:
    """Steps averaged for the final loss: 50, or a quarter of a shorter run."""
    return min(LOSS_WINDOW, steps // 4)


def warmup_steps(steps: int, schedule: str) -> int:
    return int(WARMUP_FRACTION * steps) if schedule == "cosine" else 0


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def base_score(task: str) -> float:
    """The frozen base's exact match on ``task``."""
    model = transformer.load_pretrained()
    model.eval()
    return data.exact_match(model, task, n=EVAL_N, seed=EVAL_SEED)


def train_config(config: dict, *, seed: int, lr: float):
    """Train ``config`` (a ``_config`` dict) at peak rate ``lr`` with ``seed``.

    Returns ``(model, optimizer, history, alpha, warmup)``; ``run`` measures what it returns,
    and experiments/07_heldout_loss.py reuses it to add a held-out loss.
    """
    task, method, steps, schedule = (config[k] for k in ("task", "method", "steps", "schedule"))
    r = config["r"]
    ln.manual_seed(seed)  # draws the adapters' A
    model = transformer.load_pretrained()
    alpha = None
    if method == "lora":
        alpha = ALPHA_PER_RANK * r
        lora.inject(model, config["targets"], r, alpha=alpha)
    elif method == "full":
        model.requires_grad_(True)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'lora' or 'full'")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    warmup = warmup_steps(steps, schedule)
    history = train.train(
        model,
        data.batches(task, BATCH, seed=seed),
        steps,
        lr,
        optimizer=opt,
        grad_clip=GRAD_CLIP,
        warmup_steps=warmup,
        schedule=schedule,
        progress=False,
    )
    return model, opt, history, alpha, warmup


def run(task, method, targets=None, r=None, steps=None, schedule="cosine", *, seed, lr) -> dict:
    """Train one configuration at peak rate ``lr`` with ``seed`` and measure it; one row."""
    started = time.perf_counter()
    config = _config(task, method, targets, r, steps, schedule)
    steps = config["steps"]
    model, opt, history, alpha, warmup = train_config(config, seed=seed, lr=lr)
    trainable, _ = lora.count_parameters(model)
    with tempfile.TemporaryDirectory() as tmp:
        if method == "lora":
            disk = folder_bytes(lora.save_adapter(model, Path(tmp) / "adapter"))
        else:
            disk = serialization.save_weights(model, Path(tmp) / "m.safetensors").stat().st_size
    model.eval()
    return {
        **config,
        "alpha": alpha,
        "seed": seed,
        "lr": lr,
        "warmup_steps": warmup,
        "trainable_params": int(trainable),
        "optimizer_state_bytes": int(opt.state_bytes()),
        "disk_bytes": int(disk),
        "final_loss": float(statistics.fmean(history["loss"][-loss_window(steps) :])),
        "exact_match": data.exact_match(model, task, n=EVAL_N, seed=EVAL_SEED),
        "step_seconds": history["train_seconds"] / history["steps_done"],
        "wall_seconds": time.perf_counter() - started,
    }


def _same(row: dict, config: dict) -> bool:
    return all(row[k] == v for k, v in config.items())


def choose_lr(
    rows: list,
    config: dict,
    grid=None,
    max_extensions: int = MAX_EXTENSIONS,
    ladder=LADDER,
    by: str = "final_loss",
) -> dict:
    """The tuning decision for ``config`` from its tuning rows so far: the rate with the lowest
    ``by`` (ties to the smaller rate), tried on ``grid`` (default ``GRID[method]``) and the
    ``ladder``'s rates beyond it. experiments/10_peers.py uses it too, with its own ladder and
    the held-out loss.

    Returns ``{"lr", "tried", "on_edge", "next"}``: ``next`` is the rate still to try (the
    ladder's next rate beyond the best's edge) or None when the choice is made (the best is
    inside, or ``max_extensions`` rates were added, or the ladder ends).
    """
    grid = GRID[config["method"]] if grid is None else grid
    mine = [x for x in rows if _same(x, config)]
    tried = sorted(x["lr"] for x in mine)
    best = min(mine, key=lambda x: (x[by], x["lr"]))["lr"]
    on_edge = best in (tried[0], tried[-1])
    nxt = None
    if on_edge and len(tried) - len(grid) < max_extensions:
        i = ladder.index(best) + (1 if best == tried[-1] else -1)
        if 0 <= i < len(ladder):
            nxt = ladder[i]
    return {"lr": best, "tried": tried, "on_edge": on_edge, "next": nxt}


def _mean_final_loss(group: list) -> dict:
    return {"final_loss_mean": statistics.fmean(g["final_loss"] for g in group)}


def summary(rows: list, configs=None, more=_mean_final_loss) -> list:
    """Per configuration (default ``CONFIGS``): exact match per seed, mean, std, min, max, and
    the keys ``more(seed_rows)`` adds (here the mean final loss; experiments/10_peers.py adds
    the pretraining scores)."""
    out = []
    for config in CONFIGS if configs is None else configs:
        group = sorted((r for r in rows if _same(r, config)), key=lambda r: r["seed"])
        if not group:
            continue
        em = [g["exact_match"] for g in group]
        out.append(
            {
                **config,
                "lr": group[0]["lr"],
                "trainable_params": group[0]["trainable_params"],
                "seeds": [g["seed"] for g in group],
                "exact_match": em,
                "exact_match_mean": statistics.fmean(em),
                "exact_match_std": statistics.pstdev(em),
                "exact_match_min": min(em),
                "exact_match_max": max(em),
                **more(group),
            }
        )
    return out


def _key(row: dict) -> tuple:
    return (name(row), row["seed"], row["lr"])


def write(results: dict) -> None:
    order = {name(c): i for i, c in enumerate(CONFIGS)}
    for where in ("tuning", "runs"):
        results[where].sort(key=lambda r: (order[name(r)], r["lr"], r["seed"]))
    results["summary"] = summary(results["runs"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(RESULTS)


def _settings(workers: int) -> dict:
    return {
        "configs": CONFIGS,
        "tasks": list(TASKS),
        "steps": STEPS,
        "ranks": list(RANKS),
        "budgets": BUDGETS,
        "seeds": list(SEEDS),
        "tune_seed": TUNE_SEED,
        "batch_size": BATCH,
        "alpha": "2 r for every LoRA (s = alpha / r = 2)",
        "alpha_per_rank": ALPHA_PER_RANK,
        "grad_clip": GRAD_CLIP,
        "betas": list(BETAS),
        "weight_decay": WEIGHT_DECAY,
        "schedule": (
            f"cosine: linear warm-up over the first {WARMUP_FRACTION:.0%} of the steps, then "
            "cosine decay to 0.1 x the peak (train.lr_at); constant: the peak throughout"
        ),
        "warmup_fraction": WARMUP_FRACTION,
        "eval": f"data.exact_match(model, task, n={EVAL_N}, seed={EVAL_SEED}) (test split)",
        "lr_grid": {k: list(v) for k, v in GRID.items()},
        "lr_ladder": list(LADDER),
        "lr_max_extensions": MAX_EXTENSIONS,
        "lr_rule": (
            f"per configuration, on tuning seed {TUNE_SEED} (never reported): the lowest mean "
            f"training loss over the last min({LOSS_WINDOW}, steps // 4) steps, ties to the "
            "smaller rate; while the best is on an edge of the rates tried, the ladder's next "
            f"rate beyond it is tried (at most {MAX_EXTENSIONS} times)"
        ),
        "blas_threads": "1",  # set_blas_threads(1) in every process
        "workers": workers,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "seconds_note": "wall-clock on the machine that ran the script, possibly shared with "
        "other jobs: compare ratios only",
    }


class Runner:
    """Keeps ``workers`` runs in flight, lowest priority number first; writes after each.

    Shared with 07_which_matrices.py. ``run_job(job) -> row`` trains one job in a worker,
    ``key(job or row)`` identifies a run, ``describe(row)`` names it in the log, and
    ``write(results)`` stores the results file.
    """

    def __init__(self, pool, workers, results, started, before, *, run_job, key, describe, write):
        self.pool, self.workers, self.results = pool, workers, results
        self.started, self.before = started, before
        self.run_job, self.key, self.describe, self.write = run_job, key, describe, write
        self.queue: list = []  # (priority, order, where, job)
        self.flight: dict = {}
        self.order = 0

    def add(self, where: str, job: dict, priority: int) -> None:
        key = (where, self.key(job))
        done = {(where, self.key(r)) for r in self.results[where]}
        queued = {(w, self.key(j)) for _, _, w, j in self.queue} | set(self.flight.values())
        if key in done or key in queued:
            return
        self.queue.append((priority, self.order, where, job))
        self.order += 1

    def step(self) -> None:
        """Start what fits, wait for one run to finish, store it."""
        self.queue.sort(key=lambda q: q[:2])
        while self.queue and len(self.flight) < self.workers:
            _, _, where, job = self.queue.pop(0)
            self.flight[self.pool.submit(self.run_job, job)] = (where, self.key(job))
        if not self.flight:
            return
        finished, _ = wait(self.flight, return_when=FIRST_COMPLETED)
        for future in finished:
            where, _ = self.flight.pop(future)
            row = future.result()
            self.results[where].append(row)
            print(
                f"{where}: {self.describe(row)} lr {row['lr']:.0e} seed {row['seed']}: exact "
                f"match {row['exact_match']:.3f}, loss {row['final_loss']:.4f} "
                f"({row['wall_seconds']:.0f} s)",
                flush=True,
            )
        self.results["script_seconds"] = self.before + time.perf_counter() - self.started
        self.write(self.results)

    def busy(self) -> bool:
        return bool(self.queue or self.flight)


def _run_job(job: dict) -> dict:
    return run(**job)


def _priority(config: dict) -> int:
    """Main budgets first, then the other budgets, hop last."""
    if config["task"] == "hop":
        return 4
    return 0 if config["steps"] == STEPS[config["task"]] else 2


def _decide(results: dict, runner: Runner) -> None:
    """Queue what the tuning rows so far call for: more rates, or the seeds."""
    for config in CONFIGS:
        rows = [x for x in results["tuning"] if _same(x, config)]
        if not set(GRID[config["method"]]) <= {x["lr"] for x in rows}:
            continue
        choice = choose_lr(results["tuning"], config)
        if choice["next"] is not None:
            job = {**config, "seed": TUNE_SEED, "lr": choice["next"]}
            runner.add("tuning", job, _priority(config))
            continue
        del choice["next"]
        results["lr"][name(config)] = choice
        for seed in SEEDS:
            runner.add("runs", {**config, "seed": seed, "lr": choice["lr"]}, _priority(config) + 1)


def main() -> None:
    """Tune every configuration's rate, then run its seeds; see the module docstring."""
    workers = int(os.environ.get("LORA_NP_WORKERS", "2"))
    started = time.perf_counter()
    results = {
        "about": "notebook 07: base vs full fine-tuning vs LoRA, each configuration at its own "
        "tuned learning rate; see experiments/07_finetune.py",
        "settings": _settings(workers),
        "base": {},
        "tuning": [],
        "lr": {},
        "runs": [],
        "complete": False,
        "script_seconds": 0.0,
    }
    if "--resume" in sys.argv[1:] and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        known = {name(c) for c in CONFIGS}
        for where in ("tuning", "runs"):
            results[where] = [r for r in old.get(where, []) if name(r) in known]
        results["script_seconds"] = old.get("script_seconds", 0.0)
    before = results["script_seconds"]
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    for task in (*TASKS, HOP_FULL["task"]):
        results["base"][task] = base_score(task)
    # ... and one BLAS thread in every worker, whatever the start method
    with ProcessPoolExecutor(
        max_workers=workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
    ) as pool:
        runner = Runner(
            pool,
            workers,
            results,
            started,
            before,
            run_job=_run_job,
            key=_key,
            describe=name,
            write=write,
        )
        for config in CONFIGS:
            for lr in GRID[config["method"]]:
                runner.add("tuning", {**config, "seed": TUNE_SEED, "lr": lr}, _priority(config))
        _decide(results, runner)
        while runner.busy():
            runner.step()
            _decide(results, runner)
    results["script_seconds"] = before + time.perf_counter() - started
    results["complete"] = True
    write(results)
    for key, choice in results["lr"].items():
        edge = " (on an edge)" if choice["on_edge"] else ""
        print(f"{key}: lr {choice['lr']:.0e} from {choice['tried']}{edge}", flush=True)
    print(f"done in {results['script_seconds']:.0f} s -> {RESULTS}")


if __name__ == "__main__":
    main()
