"""Notebook 08's precomputed experiments: task adapters over 3 seeds, their combinations, a
QLoRA comparison with tuned learning rates. (Notebook 08's rank section reads the sub runs of
experiments/07_finetune.py, where every rank has its own tuned learning rate.)

Run from the repository root:

    .venv/bin/python experiments/08_adapters.py

Every LoRA below is r = 8 on q and v with alpha 16 (the recipe of the shipped base's LoRA,
``lora_np/checkpoints/tiny_gpt.json``) unless stated. Every score is greedy exact match on 200
held-out prompts (``data.exact_match(model, task, n=200)``, seed 1234). It writes, under
``lora_np/results/08_adapters/`` (``lora_np.results``, shipped with the package):

* ``swp/``, ``rot/``, ``prv/``: seed 0's task adapters (300 steps at lr 3e-3 on the task alone),
  PEFT folders written by ``lora_np.lora.save_adapter``; ``swp_replay/``, ``rot_replay/``: seed
  0's replay adapters (600 steps; half of each batch the task, a quarter the pretraining
  mixture, a quarter the base's own answers on the other downstream tasks' prompts); ``joint/``:
  seed 0's adapter trained on an even swp + rot mixture for 600 steps; ``qlora_nf4/``: seed 0's
  prv adapter trained on the NF4 base. Seeds 1 and 2 are trained and scored, not kept.
* ``scores.json``:
  - ``adapters``: name -> seed -> scores on swp, rot, prv (task adapters) and the pretraining
    mean, for swp, rot (seeds 0-2), prv (seed 0), swp_replay, rot_replay, joint (seeds 0-2);
    ``matrix`` and ``adapter_pretrain``: seed 0's task x adapter matrix, as notebook 08 shows it;
  - ``combine``: "plain" / "replay" -> seed -> {swp, rot, cat, linear, svd, ties_svd_20,
    ties_svd_50} (TIES at density 0.2 and 0.5) -> {swp, rot, pretrain}: seed i's swp adapter combined with seed i's rot;
  - ``qlora``: prv learned by LoRA on the float base and on the NF4 base (double quantised, head
    in float32): the learning-rate grid for each base on tuning seed 100 (mean training loss of
    the last 50 steps), the chosen rates, and seeds 0-2 at the chosen rate;

``--independent-init [seeds]`` reruns the swp + rot combinations with rot's adapters started
from an A of their own (seed ``INDEPENDENT_INIT`` + s) instead of swp's: it writes
``independent_init.json`` beside scores.json and seed 0's rot adapters in
``lora_np/results/08_independent_init/`` (reused if present). Per seed it trains up to four
adapters and scores 14 adapters and combinations on 7 tasks. Seeds 0-2 are committed (notebook 08
compares them with the shared-start combinations); took 692 s (``seconds``) with 2 processes on
the same busy 2-core machine.

Workers: 2 processes (WORKERS=1 for one), one BLAS thread each, so a run repeats bit for bit on
one machine. Took 15 minutes (886 s, ``seconds`` in scores.json) on a 2-core machine shared
with another experiment; about half that on a quiet one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

import lora_np as ln
from lora_np import data, lora, quantized, serialization, train, transformer
from lora_np.results import FOLDER as RESULTS_FOLDER

OUT = RESULTS_FOLDER / "08_adapters"  # lora_np/results/08_adapters, shipped with the package
TASKS = ("swp", "rot", "prv")  # the three task adapters of the notebook
PAIR = ("swp", "rot")  # the two that are combined
SEEDS = (0, 1, 2)  # reported seeds of every compared adapter
EVAL_N = 200  # held-out prompts per score (data.exact_match, seed 1234)
R, ALPHA, LR, BATCH = 8, 16, 3e-3, 32  # the recipe of lora_np/checkpoints/tiny_gpt.json
STEPS = 300
REPLAY_STEPS = 600
# The downstream tasks whose prompts the replay adapters rehearse: those that existed when the
# replay recipe was written (hop came later).
REPLAY_POOL_TASKS = ("swp", "rot", "rvn", "prv", "dup", "sub")
JOINT_STEPS = 600  # = 2 x STEPS: each task of the pair gets as many examples as its own adapter
# TIES densities: no held-out split of the prompts exists to choose one on, so two are reported
# (keep a fifth and half of each update's entries) rather than the best picked on the test set.
TIES_DENSITIES = (0.2, 0.5)
# adapter names hold no dot: "ties_svd_20" is density 0.2
COMBOS = ("cat", "linear", "svd") + tuple(f"ties_svd_{round(100 * d)}" for d in TIES_DENSITIES)
QLORA_TASK = "prv"  # the base scores 0 on it
QLORA_BASES = ("float", "nf4")
QLORA_GRID = (1e-3, 3e-3, 1e-2, 3e-2)  # extended by x3 steps while the best sits on an edge
QLORA_TUNING_SEED = 100  # chooses the learning rate; never reported
QLORA_TUNING_WINDOW = 50  # mean training loss over the last 50 steps
# --independent-init: rot's adapters of seed s draw their A with seed INDEPENDENT_INIT + s
# (the main run seeds every adapter of seed s with s, so swp and rot start from the same A)
INDEPENDENT_INIT = 1000
# seed 0's independently initialised rot and rot_replay adapters (beside 08_adapters/, whose
# folder list is fixed)
INDEPENDENT_FOLDER = RESULTS_FOLDER / "08_independent_init"

_TMP = Path(tempfile.gettempdir()) / "lora_np_08_adapters"  # seeds 1, 2's adapters, then deleted
_POOL: dict = {}  # the replay pool, filled in the parent before the workers fork


def score(model, task: str) -> float:
    return data.exact_match(model, task, n=EVAL_N)


def pretrain_mean(model) -> float:
    return float(np.mean([score(model, t) for t in data.PRETRAIN_TASKS]))


def folder(name: str, seed: int) -> Path:
    """Where seed ``seed``'s adapter ``name`` lives: seed 0 in the results, others in a tmp dir."""
    return OUT / name if seed == 0 else _TMP / f"seed{seed}" / name


# ---------------------------------------------------------------------------- adapters


def fresh_lora(seed: int, base: str = "float", init_seed: int | None = None):
    """The shipped base (NF4-quantised when base="nf4", head kept float32) with a fresh LoRA.

    ``init_seed`` draws the LoRA's A (default: ``seed``, so every adapter of one seed starts
    from the same A; ``--independent-init`` gives rot's adapters their own).
    """
    ln.manual_seed(seed if init_seed is None else init_seed)
    model = transformer.load_pretrained()
    if base == "nf4":
        quantized.quantize_model(model, kind="nf4", double_quant=True)
    lora.inject(model, ["q", "v"], R, alpha=ALPHA)
    return model


def train_task_adapter(
    task: str, steps: int = STEPS, seed: int = 0, base="float", lr=LR, init_seed=None
):
    """A fresh base with one LoRA (r=8 on q, v) trained on ``task`` alone; returns
    (model in eval mode, training history)."""
    model = fresh_lora(seed, base, init_seed)
    history = train.train(
        model, data.batches(task, BATCH, seed=seed), steps=steps, lr=lr, progress=False
    )
    return model.eval(), history


def base_answers_pool(n: int = 256) -> dict:
    """The base model's own greedy answers on ``n`` train prompts of each task of the pool."""
    base = transformer.load_pretrained()
    pool = {}
    for task in REPLAY_POOL_TASKS:
        prompts = [p for p, _ in data.make_examples(task, n, seed=7)]
        answers = data.generate_answers(base, prompts, max_new_tokens=20)
        pool[task] = [(p, a) for p, a in zip(prompts, answers) if a]
    return pool


def train_replay_adapter(
    task: str, pool: dict, steps: int = REPLAY_STEPS, seed: int = 0, init_seed=None
):
    """Like ``train_task_adapter``, but each batch of 32 is 16 examples of ``task``, 8 of the
    pretraining mixture and 8 prompts of the *other* downstream tasks answered as the base
    answers them: the adapter is told what not to change."""
    model = fresh_lora(seed, init_seed=init_seed)
    others = [t for t in REPLAY_POOL_TASKS if t != task]
    rng = np.random.default_rng([seed, 8])

    def batch(step):
        stream = step + 100_000 * seed  # seed 0: the stream the first replay adapters used
        examples = data.make_examples(task, 16, seed=stream)
        examples += data.make_mixture(list(data.PRETRAIN_TASKS), 8, seed=stream)
        for _ in range(8):
            other = pool[others[int(rng.integers(len(others)))]]
            examples.append(other[int(rng.integers(len(other)))])
        return data.encode_examples(examples)

    train.train(model, batch, steps=steps, lr=LR, progress=False)
    return model.eval()


def train_joint_adapter(tasks=PAIR, steps: int = JOINT_STEPS, seed: int = 0):
    """One LoRA of the task adapters' size (r=8 on q, v) trained on an even mixture of ``tasks``
    (every batch half swp, half rot): combining two tasks *before* training."""
    model = fresh_lora(seed)
    train.train(
        model, data.batches(list(tasks), BATCH, seed=seed), steps=steps, lr=LR, progress=False
    )
    return model.eval()


def adapter_job(job: tuple) -> tuple:
    """("task" | "replay" | "joint", name, seed): train, save, score; -> (name, seed, scores)."""
    kind, name, seed = job
    if kind == "task":
        model, _ = train_task_adapter(name, seed=seed)
        tasks = TASKS
    elif kind == "replay":
        model = train_replay_adapter(name.removesuffix("_replay"), _POOL, seed=seed)
        tasks = PAIR
    else:
        model = train_joint_adapter(seed=seed)
        tasks = PAIR
    lora.save_adapter(model, folder(name, seed))
    scores = {t: score(model, t) for t in tasks} | {"pretrain": pretrain_mean(model)}
    print(f"  {name} seed {seed}: {scores}", flush=True)
    return name, seed, scores


def combine_job(job: tuple) -> tuple:
    """("plain" | "replay", seed): seed's swp and rot adapters, alone and combined."""
    kind, seed = job
    suffix = "" if kind == "plain" else "_replay"
    model = transformer.load_pretrained()
    for t in PAIR:
        lora.load_adapter(model, folder(t + suffix, seed), adapter_name=t)
    names = list(PAIR)
    for how in COMBOS:
        if how.startswith("ties_svd"):
            density = int(how.rsplit("_", 1)[1]) / 100
            lora.combine_adapters(model, names, [1.0, 1.0], "ties_svd", how, density=density)
        else:
            lora.combine_adapters(model, names, [1.0, 1.0], how=how, new_name=how)
    result = {}
    for name in names + list(COMBOS):
        lora.set_adapter(model, name)
        result[name] = {t: score(model, t) for t in PAIR} | {"pretrain": pretrain_mean(model)}
    print(f"  combine {kind} seed {seed}: done", flush=True)
    return kind, seed, result


# ---------------------------------------------------------------------------- QLoRA


def qlora_job(job: tuple) -> dict:
    """(base, lr, seed): LoRA on ``QLORA_TASK`` over the float or NF4 base. Returns the tuning
    loss (mean of the last 50 training losses, inf if training diverged) and, for a reported
    seed, the held-out score."""
    base, lr, seed = job
    try:
        model, history = train_task_adapter(QLORA_TASK, seed=seed, base=base, lr=lr)
        loss = float(np.mean(history["loss"][-QLORA_TUNING_WINDOW:]))
    except FloatingPointError:  # train.TrainingDiverged
        return {"base": base, "lr": lr, "seed": seed, "loss": float("inf")}
    out = {"base": base, "lr": lr, "seed": seed, "loss": loss}
    if seed != QLORA_TUNING_SEED:
        out[QLORA_TASK] = score(model, QLORA_TASK)
        if base == "nf4" and seed == 0:
            lora.save_adapter(model, OUT / "qlora_nf4")
    print(f"  qlora {base} lr={lr:.0e} seed {seed}: {out}", flush=True)
    return out


def independent_job(job: tuple) -> tuple:
    """(seed,): the ``--independent-init`` rerun of one seed's combinations.

    swp's task and replay adapters as in the main run (init seed = seed); rot's with their own
    A (init seed ``INDEPENDENT_INIT + seed``), the same data order. Seed 0's rot adapters are
    kept in ``INDEPENDENT_FOLDER``; returns (seed, {"rot": scores, "rot_replay": scores,
    "combine": {"plain": ..., "replay": ...}}), the combinations as ``combine_job`` scores them.
    """
    (seed,) = job
    where = INDEPENDENT_FOLDER if seed == 0 else _TMP / f"independent{seed}"
    init = INDEPENDENT_INIT + seed
    out: dict = {"combine": {}}
    for suffix in ("", "_replay"):
        model = transformer.load_pretrained()
        for t in PAIR:
            if t == "swp" and seed == 0:  # seed 0's swp adapters are stored: load them
                lora.load_adapter(model, folder(t + suffix, 0), adapter_name=t)
                continue
            kept = where / (t + suffix)
            if t == "rot" and seed == 0 and (kept / "adapter_config.json").exists():
                trained = transformer.load_pretrained()  # --resume: seed 0's kept adapter
                lora.load_adapter(trained, kept)
                trained.eval()
            elif suffix:
                trained = train_replay_adapter(
                    t, _POOL, seed=seed, init_seed=init if t == "rot" else None
                )
            else:
                trained, _ = train_task_adapter(
                    t, seed=seed, init_seed=init if t == "rot" else None
                )
            saved = lora.save_adapter(trained, kept)
            lora.load_adapter(model, saved, adapter_name=t)
            if t == "rot":
                scores = {u: score(trained, u) for u in PAIR}
                out[t + suffix] = scores | {"pretrain": pretrain_mean(trained)}
        for how in COMBOS:
            if how.startswith("ties_svd"):
                density = int(how.rsplit("_", 1)[1]) / 100
                lora.combine_adapters(
                    model, list(PAIR), [1.0, 1.0], "ties_svd", how, density=density
                )
            else:
                lora.combine_adapters(model, list(PAIR), [1.0, 1.0], how=how, new_name=how)
        result = {}
        for name in list(PAIR) + list(COMBOS):
            lora.set_adapter(model, name)
            result[name] = {t: score(model, t) for t in PAIR} | {"pretrain": pretrain_mean(model)}
        out["combine"]["replay" if suffix else "plain"] = result
        print(f"  independent init, seed {seed}, {suffix or 'plain'}: done", flush=True)
    return seed, out


def any_job(job: tuple):
    """Dispatch for the worker pool: (what, *arguments)."""
    what, *args = job
    jobs = {"adapter": adapter_job, "combine": combine_job, "qlora": qlora_job}
    return (jobs | {"independent": independent_job})[what](tuple(args))


# ---------------------------------------------------------------------------- main


def write_scores(results: dict) -> None:
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    serialization.atomic_write(OUT / "scores.json", text.encode())


def best_lr(losses: dict) -> float:
    """The rate with the lowest tuning loss (``losses``: lr -> loss)."""
    return min(losses, key=lambda lr: (losses[lr], lr))


def tune(run, base: str, losses: dict) -> tuple:
    """``losses`` (lr -> tuning loss on the grid) extended by x3 steps while the best rate is on
    an edge of the grid; returns (losses, best rate)."""
    while True:
        best = best_lr(losses)
        lrs = sorted(losses)
        if lrs[0] < best < lrs[-1]:
            return losses, best
        new = best * 3 if best == lrs[-1] else best / 3
        losses |= {r["lr"]: r["loss"] for r in run([("qlora", base, new, QLORA_TUNING_SEED)])}


def main() -> None:
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    if sys.argv[1:2] == ["--independent-init"]:  # optionally followed by seeds: 0 1
        return independent_main([int(s) for s in sys.argv[2:]] or list(SEEDS))
    if sys.argv[1:]:
        raise SystemExit(f"unknown arguments {sys.argv[1:]}; expected none or --independent-init")
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(_TMP, ignore_errors=True)
    _POOL.update(base_answers_pool())  # before the fork: every worker shares it
    workers = int(os.environ.get("WORKERS", "2"))
    pool = None
    if workers > 1:
        pool = get_context("fork").Pool(
            workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
        )

    def run(jobs):
        if pool is None:
            return [any_job(j) for j in jobs]
        return pool.map(any_job, jobs, chunksize=1)

    results: dict = {
        "settings": {
            "r": R,
            "alpha": ALPHA,
            "lr": LR,
            "batch": BATCH,
            "targets": ["q", "v"],
            "steps": STEPS,
            "replay_steps": REPLAY_STEPS,
            "joint_steps": JOINT_STEPS,
            "seeds": list(SEEDS),
            "ties_densities": list(TIES_DENSITIES),
            "eval_n": EVAL_N,
            "eval": f"data.exact_match(model, task, n={EVAL_N}) (held-out, seed 1234)",
        }
    }
    try:
        print("1. adapters: task, replay, joint (3 seeds)", flush=True)
        jobs = [("adapter", "replay", t + "_replay", s) for t in PAIR for s in SEEDS]
        jobs += [("adapter", "joint", "joint", s) for s in SEEDS]
        jobs += [("adapter", "task", t, s) for t in PAIR for s in SEEDS] + [
            ("adapter", "task", "prv", 0)
        ]
        done = run(jobs)
        adapters: dict = {}
        for name, seed, scores in (d for d in done if isinstance(d, tuple)):
            adapters.setdefault(name, {})[str(seed)] = scores
        results["adapters"] = adapters
        results["matrix"] = {t: {u: adapters[t]["0"][u] for u in TASKS} for t in TASKS}
        results["adapter_pretrain"] = {t: adapters[t]["0"]["pretrain"] for t in TASKS}

        print("2. combinations (per seed) and the QLoRA learning-rate grids", flush=True)
        combine: dict = {"plain": {}, "replay": {}}
        jobs = [("qlora", b, lr, QLORA_TUNING_SEED) for b in QLORA_BASES for lr in QLORA_GRID]
        jobs += [("combine", k, s) for k in combine for s in SEEDS]
        grids: dict = {b: {} for b in QLORA_BASES}
        for d in run(jobs):
            if isinstance(d, dict):
                grids[d["base"]][d["lr"]] = d["loss"]
            else:
                combine[d[0]][str(d[1])] = d[2]
        results["combine"] = combine
        tuned = {base: tune(run, base, grids[base]) for base in QLORA_BASES}
        print("3. QLoRA: reported seeds at each base's chosen rate", flush=True)
        reported = run([("qlora", b, tuned[b][1], s) for b in QLORA_BASES for s in SEEDS])
        results["qlora"] = {
            "task": QLORA_TASK,
            "steps": STEPS,
            "quantisation": "quantize_model(kind='nf4', double_quant=True), head kept float32",
            "tuning_seed": QLORA_TUNING_SEED,
            "tuning_window": QLORA_TUNING_WINDOW,
            "grid": {
                b: {f"{lr:.0e}": loss for lr, loss in sorted(tuned[b][0].items())}
                for b in QLORA_BASES
            },
            "chosen_lr": {b: tuned[b][1] for b in QLORA_BASES},
            "runs": {
                b: {
                    str(r["seed"]): {"score": r[QLORA_TASK], "loss": r["loss"]}
                    for r in reported
                    if r["base"] == b
                }
                for b in QLORA_BASES
            },
        }
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        shutil.rmtree(_TMP, ignore_errors=True)

    results["seconds"] = round(time.perf_counter() - started, 1)
    write_scores(results)
    print(f"done in {results['seconds']:.0f} s; wrote {OUT}", flush=True)


def independent_main(seeds: list) -> None:
    """Rerun the combinations with independently initialised rot adapters (``seeds``); writes
    ``independent_init.json`` after every seed (a rerun keeps the seeds stored and seed 0's kept
    adapters) and seed 0's rot adapters in ``INDEPENDENT_FOLDER``."""
    started = time.perf_counter()
    shutil.rmtree(_TMP, ignore_errors=True)
    _POOL.update(base_answers_pool())
    workers = int(os.environ.get("WORKERS", "2"))
    path = OUT / "independent_init.json"
    results = {
        "about": "the combinations of scores.json rerun with rot's adapters initialised "
        f"independently of swp's (A drawn with seed {INDEPENDENT_INIT} + s; data order "
        "unchanged); experiments/08_adapters.py --independent-init",
        "init_seed_offset": INDEPENDENT_INIT,
        "seeds": {},
        "seconds": 0.0,
    }
    if path.exists():  # --resume: keep the seeds already done
        results = json.loads(path.read_text())
    jobs = [("independent", s) for s in seeds if str(s) not in results["seeds"]]
    before = results["seconds"]

    def store(seed, out):  # after every seed: a partial rerun is usable
        results["seeds"][str(seed)] = out
        results["seeds"] = dict(sorted(results["seeds"].items()))
        results["seconds"] = round(before + time.perf_counter() - started, 1)
        text = json.dumps(results, indent=1, sort_keys=True) + "\n"
        serialization.atomic_write(path, text.encode())
        print(f"seed {seed} stored in {path}", flush=True)

    try:
        if workers > 1:
            with get_context("fork").Pool(
                workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
            ) as pool:
                for seed, out in pool.imap_unordered(any_job, jobs, chunksize=1):
                    store(seed, out)
        else:
            for job in jobs:
                store(*any_job(job))
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)
    print(f"done in {results['seconds']:.0f} s; wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
