"""Experiment for notebook 10: LoRA among its peers (issue 22), each configuration at its own
tuned learning rate, 3 seeds.

The methods (``METHODS``; lora_np.lora and lora_np.peers): LoRA on q, v; DoRA on q, v (PEFT's
``use_dora=True``); LoRA+ on q, v (B's rate ``LORAPLUS_RATIO`` = 16 times A's); Adapter^H and
Adapter^L (bottleneck width r); prefix-embedding and prefix-layer tuning (l_p positions);
BitFit (every bias); full fine-tuning. One task, ``prv`` (each letter to the previous one,
the base scores 0 on it), 300 steps: the task every method can learn in this budget, so the
comparison is about how well, not whether.

What is measured:

1. **Score against trainable parameters** (``section="budget"``, the shape of the paper's
   Table 15): every method at the sizes of ``SIZES``, chosen near three budgets of about 2 K,
   8 K and 32 K trainable parameters where the method can reach them (``count``: the paper's
   formulas, tested against the models). A prefix cannot grow past the positions the task
   leaves (``MAX_PREFIX``): prefix-embedding runs l_p = 8, 16, 32 (1 K to 4 K), prefix-layer
   l_p = 4, 16, 32 (2 K to 16 K), the token ladder of Table 15. BitFit and full fine-tuning
   have one size each.
2. **Low data** (``section="low_data"``, App. F.3's shape): every method at its middle size
   (full fine-tuning, BitFit: their one) trained on a fixed pool of 100 and of 1,000 training
   examples (``data.make_examples(task, n, seed=POOL_SEED)``; the batches draw from the pool
   with the run's seed), the same 300 steps.
3. **Learning and forgetting**: every reported run (not the tuning runs) is also scored on the
   base's pretraining tasks (``data.PRETRAIN_TASKS``, ``FORGET_N`` prompts each), beside the
   base's own scores there (``results["base"]``): target score against pretraining score
   after adaptation (Biderman et al.: LoRA learns less and forgets less).
4. **Latency** (``results["latency"]``, the shape of Table 1): one forward pass at batch 1 with
   a short input (``SHORT_T`` tokens) and at batch 32 with a full one (``FULL_T``, the positions
   a 16-token prefix leaves), for the base, LoRA unmerged and merged, DoRA merged, Adapter^H
   and ^L, prefix-embedding and prefix-layer, as ratios to the base measured in one process
   (the best of ``LATENCY_ROUNDS`` rounds, the variants interleaved in each), with the CPU and
   the BLAS kernel recorded. Clock numbers are recorded, never asserted on. The structural claim
   beside them is computed: the matrix products of one forward pass
   (``functional._mm`` counted), and the positions each forward processes.

**Learning rates, per configuration** (notebook 07's rule): each configuration is tried on the
tuning seed ``TUNE_SEED`` (never reported) over its method's ``GRID``; the best is the lowest
*held-out* loss (``val_loss``: ``VAL_N`` train-split examples drawn with seed ``VAL_SEED``,
never in a low-data pool's draws by seed; with 100 examples the training loss would reward
memorising), ties to the smaller rate. While the best sits on an edge of the rates tried, the
next rate of ``LADDER`` beyond it is tried, at most ``MAX_EXTENSIONS`` times; a best still on
an edge is recorded (``on_edge``). Then seeds 0, 1, 2 at that rate. Scores: greedy exact match
on ``EVAL_N`` test prompts (``data.exact_match``, seed 1234).

The recipe of experiments/07_finetune.py: AdamW (betas 0.9, 0.99, no weight decay), batch 32,
gradient clipping at 1, linear warm-up over 10% of the steps, cosine decay to a tenth; LoRA and
DoRA alpha = 2 r (s = 2). A seed draws the batches and every random start (A, an adapter's
down-projection, a prefix's tokens).

**Size.** ``len(CONFIGS)`` = 41 configurations (23 budget, 18 low data) x (3 grid rates +
about 1 extension + 3 seeds) = about 290 runs. The estimate: a LoRA q, v step at batch 32 takes
about 0.033 s on one quiet core (lora_np/data.py: 300 steps in about 10 s); the other methods'
steps were timed against it here, on the 2-core machine while it was shared (load about 15,
so only the ratios count): DoRA, the adapters and BitFit 1.05-1.2 x, full fine-tuning 1.7 x,
the prefixes 2 x (they add l_p positions). Scoring: 200 test prompts about 1 s, the 5 x 100
pretraining prompts about 3 s (reported runs only). A run then takes 11-25 s, about 15 s on
average: about 72 worker-minutes, about 36 minutes with 2 workers on 2 quiet cores. The
rows' ``step_seconds`` and ``wall_seconds`` and the results' ``script_seconds`` say how long
it really took.

Run:  python experiments/10_peers.py [--resume] [--smoke] [--out PATH]
Two worker processes (LORA_NP_WORKERS=1 for one; 0 runs in this process), one BLAS thread each.
Writes lora_np/results/10_peers.json after every finished run; ``--resume`` keeps the runs
already in the file, and its latency (set ``latency`` to null in the file to measure it again,
on a quiet machine: it is measured before any worker starts). ``--smoke`` (or LORA_NP_SMOKE=1) runs a minute-sized version (few
configurations, 6 steps, one seed) for the tests; give it ``--out`` so it does not overwrite
the real results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import lora_np as ln
from lora_np import data, lora, optim, peers, train, transformer
from lora_np import functional as F
from lora_np import results as results_folder

RESULTS = results_folder.FOLDER / "10_peers.json"


def _load_07():
    """experiments/07_finetune.py as a module (its name starts with a digit): its recipe and
    its Runner are reused here."""
    name = "experiment_07_finetune"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parent / "07_finetune.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


FT = _load_07()
BATCH, GRAD_CLIP, BETAS, WEIGHT_DECAY = FT.BATCH, FT.GRAD_CLIP, FT.BETAS, FT.WEIGHT_DECAY
EVAL_SEED, ALPHA_PER_RANK, WARMUP_FRACTION = FT.EVAL_SEED, FT.ALPHA_PER_RANK, FT.WARMUP_FRACTION

TASK = "prv"
STEPS = 300
EVAL_N = 200
FORGET_N = 100  # prompts per pretraining task
VAL_N, VAL_SEED = 256, 777  # the held-out loss that picks each rate
LOSS_WINDOW = 50
SEEDS = (0, 1, 2)
TUNE_SEED = 100  # picks every learning rate; never reported
POOL_SEED = 0  # the low-data pools: the same examples for every seed
LOW_DATA = (100, 1000)
LORAPLUS_RATIO = 16.0
TARGETS = ("q", "v")  # LoRA, DoRA, LoRA+

METHODS = (
    "lora",
    "dora",
    "loraplus",
    "adapter_h",
    "adapter_l",
    "prefix_embed",
    "prefix_layer",
    "bitfit",
    "full",
)
# sizes: r for LoRA/DoRA/LoRA+ and the adapters, l_p for the prefixes; near 2 K, 8 K, 32 K
SIZES = {
    "lora": (1, 4, 16),
    "dora": (1, 4, 16),
    "loraplus": (1, 4, 16),
    "adapter_h": (1, 3, 14),
    "adapter_l": (1, 6, 30),
    "prefix_embed": (8, 16, 32),
    "prefix_layer": (4, 16, 32),
    "bitfit": (None,),
    "full": (None,),
}
GRID = {
    "lora": (3e-3, 1e-2, 3e-2),
    "dora": (3e-3, 1e-2, 3e-2),
    "loraplus": (1e-3, 3e-3, 1e-2),  # A's rate; B's is 16 times it
    "adapter_h": (1e-3, 3e-3, 1e-2),
    "adapter_l": (1e-3, 3e-3, 1e-2),
    "prefix_embed": (3e-3, 1e-2, 3e-2),
    "prefix_layer": (3e-3, 1e-2, 3e-2),
    "bitfit": (3e-3, 1e-2, 3e-2),
    "full": (1e-4, 3e-4, 1e-3),
}
LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
MAX_EXTENSIONS = 3

# latency: batch 1 short, batch 32 full (the positions a 16-token prefix leaves)
SHORT_T, FULL_T, FULL_B = 8, 48, 32
LATENCY_ROUNDS, LATENCY_CALLS = 7, {"short": 40, "full": 4}
LATENCY_VARIANTS = (
    ("base", None),
    ("lora unmerged", ("lora", 4)),
    ("lora merged", ("lora", 4)),
    ("dora merged", ("dora", 4)),
    ("adapter_h", ("adapter_h", 3)),
    ("adapter_l", ("adapter_l", 6)),
    ("prefix_embed", ("prefix_embed", 16)),
    ("prefix_layer", ("prefix_layer", 16)),
)


def longest_input(task: str = TASK) -> int:
    """The most input positions a training sequence of ``task`` needs (prompt + answer - 1),
    over a large draw of its examples."""
    return max(len(p) + len(a) - 1 for p, a in data.make_examples(task, 2000, seed=0))


def max_prefix(block_size: int = 64, task: str = TASK) -> int:
    """The longest prefix that leaves ``task``'s longest input its positions."""
    return block_size - longest_input(task)


def count(method: str, size, n_layer: int = 4, C: int = 128) -> int:
    """Trainable parameters by the paper's formulas (§5.1 and Table 15's), on the tiny GPT
    (bias-free head; targets q, v of C x C)."""
    if method in ("lora", "loraplus"):
        return n_layer * len(TARGETS) * size * (C + C)  # |Θ| = 2 L̂_LoRA d r
    if method == "dora":
        return count("lora", size, n_layer, C) + n_layer * len(TARGETS) * C  # + m (d,)
    if method in ("adapter_h", "adapter_l"):
        kind = "houlsby" if method == "adapter_h" else "lin"
        return peers.adapter_layer_count(n_layer, C, size, kind)
    if method == "prefix_embed":
        return C * size  # |Θ| = d l_p
    if method == "prefix_layer":
        return n_layer * C * size  # |Θ| = L d l_p
    if method == "bitfit":
        return n_layer * 11 * C + C
    if method == "full":
        return 817_920
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _config(method, size, section="budget", n_train=None, task=TASK, steps=STEPS) -> dict:
    return {
        "section": section,
        "task": task,
        "method": method,
        "size": size,
        "n_train": n_train,
        "steps": steps,
    }


def _middle(method: str):
    sizes = SIZES[method]
    return sizes[len(sizes) // 2]


def plan(smoke: bool = False) -> dict:
    """What a sweep runs: the configurations, seeds and evaluation sizes (``--smoke``: a
    minute-sized version for the tests)."""
    if smoke:
        configs = [_config(m, s, steps=6) for m, s in (("lora", 1), ("adapter_l", 1))]
        configs.append(_config("prefix_embed", 8, steps=6))
        configs.append(_config("lora", 1, "low_data", 100, steps=6))
        return {
            "configs": configs,
            "seeds": [0],
            "eval_n": 10,
            "forget_n": 4,
            "val_n": 16,
            "grid": {m: list(GRID[m][:2]) for m in METHODS},
            "max_extensions": 1,
            "latency_rounds": 1,
            "latency_calls": {"short": 2, "full": 1},
        }
    configs = [_config(m, s) for m in METHODS for s in SIZES[m]]
    configs += [_config(m, _middle(m), "low_data", n) for n in LOW_DATA for m in METHODS]
    return {
        "configs": configs,
        "seeds": list(SEEDS),
        "eval_n": EVAL_N,
        "forget_n": FORGET_N,
        "val_n": VAL_N,
        "grid": {m: list(GRID[m]) for m in METHODS},
        "max_extensions": MAX_EXTENSIONS,
        "latency_rounds": LATENCY_ROUNDS,
        "latency_calls": LATENCY_CALLS,
    }


CONFIGS = plan()["configs"]


def name(config: dict) -> str:
    """e.g. ``"budget prv lora r=4"``, ``"low_data prv prefix_layer l_p=16 n=100"``."""
    c = config
    size = "" if c["size"] is None else (" l_p=" if "prefix" in c["method"] else " r=")
    size += "" if c["size"] is None else str(c["size"])
    n = "" if c["n_train"] is None else f" n={c['n_train']}"
    return f"{c['section']} {c['task']} {c['method']}{size}{n} {c['steps']} steps"


# ------------------------------------------------------------------------------ the models


def build(method: str, size, seed: int):
    """The shipped base with ``method`` at ``size`` added (seeded); returns the model to train
    (a PrefixTuning wraps the GPT) and the parameters that train."""
    ln.manual_seed(seed)  # A, an adapter's down-projection, a prefix's tokens
    model = transformer.load_pretrained()
    if method in ("lora", "dora", "loraplus"):
        alpha = ALPHA_PER_RANK * size
        lora.inject(model, list(TARGETS), size, alpha=alpha, use_dora=method == "dora")
    elif method in ("adapter_h", "adapter_l"):
        peers.add_adapter_layers(model, "houlsby" if method == "adapter_h" else "lin", size)
    elif method in ("prefix_embed", "prefix_layer"):
        model = peers.PrefixTuning(
            model, size, "embedding" if method == "prefix_embed" else "layer"
        )
    elif method == "bitfit":
        peers.mark_only_bias_as_trainable(model)
    elif method == "full":
        model.requires_grad_(True)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return model, [p for p in model.parameters() if p.requires_grad]


def optimizer_for(method: str, model, params, lr: float):
    if method == "loraplus":
        return peers.create_loraplus_optimizer(
            model, optim.AdamW, lr=lr, loraplus_lr_ratio=LORAPLUS_RATIO, betas=BETAS
        )
    return optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)


def pool_batches(task: str, n: int, seed: int):
    """Batches drawn from a fixed pool of ``n`` training examples (the low-data runs): step ->
    (idx, targets), ``BATCH`` distinct examples (all of them when fewer), drawn with ``seed``."""
    pool = data.make_examples(task, n, seed=POOL_SEED)

    def batch(step: int):
        rng = ln.backend.np.random.default_rng([int(seed), int(step), 0xDA7A])
        pick = rng.choice(len(pool), size=min(BATCH, len(pool)), replace=False)
        return data.encode_examples([pool[i] for i in pick])

    return batch


def val_loss(model, task: str, n: int) -> float:
    """Mean answer loss on ``n`` held-out train-split examples (seed ``VAL_SEED``)."""
    idx, targets = data.encode_examples(data.make_examples(task, n, seed=VAL_SEED))
    with ln.no_grad():
        _, loss = model(idx, targets)
    return float(loss.data)


def run(section, task, method, size, n_train, steps, *, seed, lr, eval_n, val_n, forget_n):
    """Train one configuration at peak rate ``lr`` with ``seed`` and measure it: one row.
    ``forget_n`` = 0 skips the pretraining tasks (the tuning runs)."""
    started = time.perf_counter()
    config = _config(method, size, section, n_train, task, steps)
    model, params = build(method, size, seed)
    opt = optimizer_for(method, model, params, lr)
    source = data.batches(task, BATCH, seed=seed) if n_train is None else None
    source = source or pool_batches(task, n_train, seed)
    warmup = int(WARMUP_FRACTION * steps)
    history = train.train(
        model, source, steps, lr, optimizer=opt, grad_clip=GRAD_CLIP,
        warmup_steps=warmup, schedule="cosine", progress=False,
    )  # fmt: skip
    model.eval()
    forgetting = None
    if forget_n:
        forgetting = {t: data.exact_match(model, t, n=forget_n) for t in data.PRETRAIN_TASKS}
    return {
        **config,
        "seed": seed,
        "lr": lr,
        "warmup_steps": warmup,
        "trainable_params": int(sum(p.size for p in params)),
        "optimizer_state_bytes": int(opt.state_bytes()),
        "final_loss": float(
            statistics.fmean(history["loss"][-min(LOSS_WINDOW, steps // 4 or 1) :])
        ),
        "val_loss": val_loss(model, task, val_n),
        "exact_match": data.exact_match(model, task, n=eval_n, seed=EVAL_SEED),
        "pretrain_exact_match": forgetting,
        "pretrain_mean": None if forgetting is None else statistics.fmean(forgetting.values()),
        "step_seconds": history["train_seconds"] / history["steps_done"],
        "wall_seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------------ tuning


_same = FT._same


def choose_lr(rows: list, config: dict, grid=None, max_extensions: int = MAX_EXTENSIONS) -> dict:
    """07's rule (experiments/07_finetune.py ``choose_lr``) on this sweep's grids and ladder,
    by the held-out loss: ``{"lr", "tried", "on_edge", "next"}``."""
    grid = GRID[config["method"]] if grid is None else grid
    return FT.choose_lr(rows, config, grid, max_extensions, LADDER, by="val_loss")


def _pretrain_spread(group: list) -> dict:
    pre = [g["pretrain_mean"] for g in group]
    return {
        "pretrain_mean": statistics.fmean(pre),
        "pretrain_min": min(pre),
        "pretrain_max": max(pre),
    }


def summary(rows: list, configs: list) -> list:
    """07's summary per configuration (exact match per seed, mean, std, min, max), with the
    pretraining score's mean, min and max over the seeds."""
    return FT.summary(rows, configs, more=_pretrain_spread)


def _key(row: dict) -> tuple:
    return (name(row), row["seed"], row["lr"])


# ------------------------------------------------------------------------------ latency


def _latency_model(variant: str, spec):
    model = transformer.load_pretrained() if spec is None else build(*spec, seed=0)[0]
    if variant.endswith("merged") and not variant.endswith("unmerged"):
        lora.merge_adapter(model)
    model.eval()
    return model


def products_per_forward(model, T: int = SHORT_T) -> int:
    """Matrix products in one forward pass at batch 1 (``functional._mm`` counted)."""
    calls = [0]
    original = F._mm

    def counted(a, b):
        calls[0] += 1
        return original(a, b)

    F._mm = counted
    try:
        with ln.no_grad():
            model(ln.backend.np.ones((1, T), dtype=ln.backend.np.int64))
    finally:
        F._mm = original
    return calls[0]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> list:
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads")
    return [{k: i.get(k) for k in keys} for i in threadpool_info() if i.get("user_api") == "blas"]


def latency(rounds: int = LATENCY_ROUNDS, calls=None) -> dict:
    """One forward pass per variant at batch 1 x SHORT_T and batch FULL_B x FULL_T: seconds (the
    best of ``rounds`` rounds, variants interleaved) and ratios to the base; products per
    forward and positions processed (the structural claim). Clock numbers: recorded only."""
    np = ln.backend.np
    calls = LATENCY_CALLS if calls is None else calls
    models = {v: _latency_model(v, spec) for v, spec in LATENCY_VARIANTS}
    inputs = {
        "short": np.ones((1, SHORT_T), dtype=np.int64),
        "full": np.ones((FULL_B, FULL_T), dtype=np.int64),
    }
    best = {v: {k: float("inf") for k in inputs} for v in models}
    with ln.no_grad():
        for _ in range(rounds):
            for v, model in models.items():
                for k, idx in inputs.items():
                    started = time.perf_counter()
                    for _ in range(calls[k]):
                        model(idx)
                    seconds = (time.perf_counter() - started) / calls[k]
                    best[v][k] = min(best[v][k], seconds)
    return {
        "settings": {
            "short": [1, SHORT_T],
            "full": [FULL_B, FULL_T],
            "rounds": rounds,
            "calls": calls,
            "cpu": _cpu(),
            "blas": _blas(),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        },
        "seconds": best,
        "ratio": {v: {k: best[v][k] / best["base"][k] for k in inputs} for v in models},
        "products_per_forward": {v: products_per_forward(m) for v, m in models.items()},
        "positions": {v: getattr(m, "n_prefix", 0) + SHORT_T for v, m in models.items()},
    }


# ------------------------------------------------------------------------------ the sweep


class InlinePool:
    """``submit`` runs the job at once (``LORA_NP_WORKERS=0``): a finished Future."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _run_job(job: dict) -> dict:
    return run(**job)


def _priority(config: dict) -> int:
    """The budgets' middle sizes first, then the other sizes, then low data."""
    if config["section"] == "low_data":
        return 4 if config["n_train"] == LOW_DATA[0] else 6
    return 0 if config["size"] == _middle(config["method"]) else 2


def _decide(results: dict, runner, the_plan: dict) -> None:
    """Queue what the tuning rows so far call for: more rates, or the seeds."""
    sizes = {k: the_plan[k] for k in ("eval_n", "val_n")}
    for config in the_plan["configs"]:
        grid = the_plan["grid"][config["method"]]
        rows = [x for x in results["tuning"] if _same(x, config)]
        if not set(grid) <= {x["lr"] for x in rows}:
            continue
        choice = choose_lr(results["tuning"], config, grid, the_plan["max_extensions"])
        if choice["next"] is not None:
            job = {**config, **sizes, "forget_n": 0, "seed": TUNE_SEED, "lr": choice["next"]}
            runner.add("tuning", job, _priority(config))
            continue
        del choice["next"]
        results["lr"][name(config)] = choice
        for seed in the_plan["seeds"]:
            job = {**config, **sizes, "forget_n": the_plan["forget_n"], "seed": seed}
            runner.add("runs", {**job, "lr": choice["lr"]}, _priority(config) + 1)


def _settings(the_plan: dict, workers: int, smoke: bool) -> dict:
    return {
        **{k: v for k, v in the_plan.items() if not k.startswith("latency")},
        "smoke": smoke,
        "task": TASK,
        "methods": list(METHODS),
        "sizes": {m: list(s) for m, s in SIZES.items()},
        "targets": list(TARGETS),
        "low_data": list(LOW_DATA),
        "pool_seed": POOL_SEED,
        "tune_seed": TUNE_SEED,
        "val_seed": VAL_SEED,
        "loraplus_lr_ratio": LORAPLUS_RATIO,
        "alpha_per_rank": ALPHA_PER_RANK,
        "batch_size": BATCH,
        "grad_clip": GRAD_CLIP,
        "betas": list(BETAS),
        "weight_decay": WEIGHT_DECAY,
        "schedule": "cosine: linear warm-up over 10% of the steps, decay to 0.1 x the peak",
        "lr_ladder": list(LADDER),
        "lr_rule": (
            f"per configuration, on tuning seed {TUNE_SEED} (never reported): the lowest "
            f"held-out loss (val_loss), ties to the smaller rate; while the best is on an edge "
            f"of the rates tried, the ladder's next rate beyond it (at most max_extensions)"
        ),
        "eval": f"data.exact_match(model, task, n=eval_n, seed={EVAL_SEED}) (test split)",
        "forgetting": "data.exact_match on each of data.PRETRAIN_TASKS, n=forget_n, seed 1234",
        "blas_threads": "1",
        "workers": workers,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }


def write(results: dict, out: Path, configs: list) -> None:
    """Store ``results`` at ``out`` in one step (a temporary file renamed over it)."""
    order = {name(c): i for i, c in enumerate(configs)}
    for where in ("tuning", "runs"):
        results[where].sort(key=lambda r: (order[name(r)], r["lr"], r["seed"]))
    results["summary"] = summary(results["runs"], configs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    tmp.replace(out)


def _base_scores(forget_n: int, eval_n: int) -> dict:
    model = transformer.load_pretrained()
    model.eval()
    return {
        TASK: data.exact_match(model, TASK, n=eval_n, seed=EVAL_SEED),
        "pretrain": {t: data.exact_match(model, t, n=forget_n) for t in data.PRETRAIN_TASKS},
    }


def main(argv=None) -> dict:
    """Tune every configuration's rate, then run its seeds; see the module docstring."""
    argv = sys.argv[1:] if argv is None else list(argv)
    smoke = "--smoke" in argv or os.environ.get("LORA_NP_SMOKE") == "1"
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else RESULTS
    workers = int(os.environ.get("LORA_NP_WORKERS", "2"))
    the_plan = plan(smoke)
    configs = the_plan["configs"]
    started = time.perf_counter()
    results = {
        "about": "notebook 10: LoRA among its peers, each configuration at its own tuned "
        "learning rate; see experiments/10_peers.py",
        "settings": _settings(the_plan, workers, smoke),
        "base": {},
        "latency": None,
        "tuning": [],
        "lr": {},
        "runs": [],
        "complete": False,
        "script_seconds": 0.0,
    }
    if "--resume" in argv and out.exists():
        old = json.loads(out.read_text())
        known = {name(c) for c in configs}
        for where in ("tuning", "runs"):
            results[where] = [r for r in old.get(where, []) if name(r) in known]
        results["script_seconds"] = old.get("script_seconds", 0.0)
        results["latency"] = old.get("latency")
    before = results["script_seconds"]
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    if results["latency"] is None:  # first, while no worker runs beside it
        results["latency"] = latency(the_plan["latency_rounds"], the_plan["latency_calls"])
    results["base"] = _base_scores(the_plan["forget_n"], the_plan["eval_n"])
    write(results, out, configs)
    pool = (
        InlinePool()
        if workers == 0
        else ProcessPoolExecutor(workers, initializer=ln.backend.set_blas_threads, initargs=(1,))
    )
    sizes = {k: the_plan[k] for k in ("eval_n", "val_n")}
    with pool:
        runner = FT.Runner(
            pool,
            max(workers, 1),
            results,
            started,
            before,
            run_job=_run_job,
            key=_key,
            describe=name,
            write=lambda r: write(r, out, configs),
        )
        for config in configs:
            for lr in the_plan["grid"][config["method"]]:
                job = {**config, **sizes, "forget_n": 0, "seed": TUNE_SEED, "lr": lr}
                runner.add("tuning", job, _priority(config))
        _decide(results, runner, the_plan)
        while runner.busy():
            runner.step()
            _decide(results, runner, the_plan)
    results["script_seconds"] = before + time.perf_counter() - started
    results["complete"] = True
    write(results, out, configs)
    print(f"done in {results['script_seconds']:.0f} s -> {out}", flush=True)
    return results


if __name__ == "__main__":
    main()
