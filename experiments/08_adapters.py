"""Notebook 08's precomputed experiments: task adapters, their combinations, a rank sweep.

Run from the repository root:

    .venv/bin/python experiments/08_adapters.py

It writes, under ``lora_np/results/08_adapters/`` (``lora_np.results``, shipped with the package):

* ``swp/``, ``rot/``, ``prv/``: one LoRA adapter per task (r = 8 on q and v, alpha 16, 300
  steps on the task alone), each a PEFT folder written by ``lora_np.lora.save_adapter``.
* ``swp_replay/``, ``rot_replay/``: the same tasks trained for 600 steps with replay (half of
  each batch is the task, a quarter the pretraining mixture, a quarter the base model's own
  answers on the other downstream tasks' prompts), the best attempt at adapters that can be
  summed (they still cannot; see the notebook).
* ``joint/``: one adapter of the same size (r = 8 on q and v) trained on an even mixture of
  swp and rot for 600 steps (each task sees as many examples as its own adapter did): what
  works where summing two adapters does not.
* ``scores.json``: every score the notebook shows from these runs (exact match on 100
  held-out prompts): the task x adapter matrix, the combinations, the "sub" rank sweep
  (r = 1, 2, 8 and a full fine-tune, 3 seeds each, a score every 200 steps) and the QLoRA-style
  recovery run on a 2-bit base.

``--only joint`` (re)computes the joint adapter alone and updates its entry in ``scores.json``,
leaving every other stored result as it is.

Deterministic (seeded); about 10-15 minutes on a shared 2-core machine (the sweep runs in 2
processes; set WORKERS=1 for one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import get_context

import numpy as np

import lora_np as ln
from lora_np import data, lora, nn, serialization, train, transformer
from lora_np.results import FOLDER as RESULTS_FOLDER

OUT = RESULTS_FOLDER / "08_adapters"  # lora_np/results/08_adapters, shipped with the package
TASKS = ("swp", "rot", "prv")  # the three task adapters of the notebook
PAIR = ("swp", "rot")  # the two that are combined
EVAL_N = 100  # held-out prompts per score (data.exact_match, seed 1234)
R, ALPHA, LR, BATCH = 8, 16, 3e-3, 32  # the recipe of lora_np/checkpoints/tiny_gpt.json
STEPS = 300
REPLAY_STEPS = 600
# The downstream tasks whose prompts the replay adapters rehearse: those that existed when the
# stored adapters were made (hop came later), so that a rerun reproduces them.
REPLAY_POOL_TASKS = ("swp", "rot", "rvn", "prv", "dup", "sub")
JOINT_STEPS = 600  # = 2 x STEPS: each task of the pair gets as many examples as its own adapter
SUB_RANKS = (1, 2, 8)
SUB_SEEDS = (0, 1, 2)
SUB_STEPS = 800
SUB_EVAL_EVERY = 200
FULL_LR = 1e-3
QUANT_BITS, QUANT_BLOCK = 2, 64
QLORA_TARGETS = ("q", "k", "v", "o", "fc", "proj")
QLORA_STEPS = 200


def score(model, task: str) -> float:
    return data.exact_match(model, task, n=EVAL_N)


def pretrain_mean(model) -> float:
    return float(np.mean([score(model, t) for t in data.PRETRAIN_TASKS]))


# ---------------------------------------------------------------------------- task adapters


def train_task_adapter(task: str, steps: int = STEPS, seed: int = 0):
    """A fresh base with one LoRA (r=8 on q, v) trained on ``task`` alone; returns the model."""
    ln.manual_seed(seed)
    model = transformer.load_pretrained()
    lora.inject(model, ["q", "v"], R, alpha=ALPHA)
    train.train(model, data.batches(task, BATCH, seed=seed), steps=steps, lr=LR, progress=False)
    return model.eval()


def base_answers_pool(n: int = 256) -> dict:
    """The base model's own greedy answers on ``n`` train prompts of each task of the pool."""
    base = transformer.load_pretrained()
    pool = {}
    for task in REPLAY_POOL_TASKS:
        prompts = [p for p, _ in data.make_examples(task, n, seed=7)]
        answers = data.generate_answers(base, prompts, max_new_tokens=20)
        pool[task] = [(p, a) for p, a in zip(prompts, answers) if a]
    return pool


def train_replay_adapter(task: str, pool: dict, steps: int = REPLAY_STEPS, seed: int = 0):
    """Like ``train_task_adapter``, but each batch of 32 is 16 examples of ``task``, 8 of the
    pretraining mixture and 8 prompts of the *other* downstream tasks answered as the base
    answers them: the adapter is told what not to change."""
    ln.manual_seed(seed)
    model = transformer.load_pretrained()
    lora.inject(model, ["q", "v"], R, alpha=ALPHA)
    others = [t for t in REPLAY_POOL_TASKS if t != task]
    rng = np.random.default_rng([seed, 8])

    def batch(step):
        examples = data.make_examples(task, 16, seed=step)
        examples += data.make_mixture(list(data.PRETRAIN_TASKS), 8, seed=step)
        for _ in range(8):
            other = pool[others[int(rng.integers(len(others)))]]
            examples.append(other[int(rng.integers(len(other)))])
        return data.encode_examples(examples)

    train.train(model, batch, steps=steps, lr=LR, progress=False)
    return model.eval()


def train_joint_adapter(tasks=PAIR, steps: int = JOINT_STEPS, seed: int = 0):
    """One LoRA of the task adapters' size (r=8 on q, v) trained on an even mixture of ``tasks``
    (every batch half swp, half rot): combining two tasks *before* training."""
    ln.manual_seed(seed)
    model = transformer.load_pretrained()
    lora.inject(model, ["q", "v"], R, alpha=ALPHA)
    train.train(
        model, data.batches(list(tasks), BATCH, seed=seed), steps=steps, lr=LR, progress=False
    )
    return model.eval()


def joint_scores() -> dict:
    """Train, save and score the joint adapter: ``{task: score, ..., "pretrain": mean}``."""
    model = train_joint_adapter()
    lora.save_adapter(model, OUT / "joint")
    return {t: score(model, t) for t in PAIR} | {"pretrain": pretrain_mean(model)}


def combination_scores(folders: dict) -> dict:
    """Load two adapters into one base, combine them three ways, score both tasks."""
    model = transformer.load_pretrained()
    for name, folder in folders.items():
        lora.load_adapter(model, folder, adapter_name=name)
    names = list(folders)
    result = {}
    for name in names:
        lora.set_adapter(model, name)
        result[name] = {t: score(model, t) for t in names} | {"pretrain": pretrain_mean(model)}
    for how in ("cat", "linear", "svd"):
        lora.combine_adapters(model, names, [1.0, 1.0], how=how, new_name=how)
        lora.set_adapter(model, how)
        result[how] = {t: score(model, t) for t in names} | {"pretrain": pretrain_mean(model)}
    return result


# ---------------------------------------------------------------------------- rank sweep on sub


def sub_run(job: tuple) -> dict:
    """One run of the sweep: ``("lora", r, seed)`` or ``("full", 0, seed)`` on "sub"."""
    kind, r, seed = job
    ln.manual_seed(seed)
    model = transformer.load_pretrained()
    if kind == "lora":
        lora.inject(model, ["q", "v"], r, alpha=ALPHA)
        lr = LR
    else:
        model.requires_grad_(True)
        lr = FULL_LR
    trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    history = train.train(
        model,
        data.batches("sub", BATCH, seed=seed),
        steps=SUB_STEPS,
        lr=lr,
        eval_every=SUB_EVAL_EVERY,
        eval_fn=lambda m: score(m, "sub"),
        progress=False,
    )
    print(f"  sub {kind} r={r} seed={seed}: {history['eval'][-1]:.2f}", flush=True)
    return {
        "kind": kind,
        "r": r,
        "seed": seed,
        "lr": lr,
        "trainable": int(trainable),
        "eval_step": history["eval_step"],
        "exact_match": history["eval"],
        "train_seconds": round(history["train_seconds"], 1),
    }


# ---------------------------------------------------------------------------- quantised base


def quantise_blockwise(w: np.ndarray, bits: int, block: int):
    """Blockwise absmax quantisation: int codes in [-L, L] (L = 2^(bits-1) - 1), one float32
    scale per block of ``block`` weights. The notebook writes the same function."""
    flat = w.reshape(-1, block)  # (n_blocks, block)
    levels = 2 ** (bits - 1) - 1
    absmax = np.abs(flat).max(axis=1, keepdims=True)  # (n_blocks, 1)
    codes = np.clip(np.round(flat / absmax * levels), -levels, levels).astype(np.int8)
    return codes, (absmax / levels).astype(np.float32)


def quantised_base(bits: int = QUANT_BITS, block: int = QUANT_BLOCK):
    """The shipped base with every Linear weight replaced by its dequantised codes."""
    model = transformer.load_pretrained()
    for _, module in model.named_modules():
        if isinstance(module, nn.Linear):
            w = module.weight.data
            codes, scales = quantise_blockwise(w, bits, block)
            module.weight.data = (codes * scales).reshape(w.shape).astype(w.dtype)
    return model


def qlora_run(seed: int = 0) -> dict:
    """A LoRA (r=8, every Linear of the blocks) trained on the pretraining mixture on top of the
    2-bit base: how much of what quantisation lost does it recover?"""
    model = quantised_base()
    ln.manual_seed(seed)
    lora.inject(model, list(QLORA_TARGETS), R, alpha=ALPHA)
    history = train.train(
        model,
        data.batches(list(data.PRETRAIN_TASKS), BATCH, seed=seed),
        steps=QLORA_STEPS,
        lr=LR,
        progress=False,
    )
    model.eval()
    return {
        "bits": QUANT_BITS,
        "block": QUANT_BLOCK,
        "targets": list(QLORA_TARGETS),
        "steps": QLORA_STEPS,
        "seed": seed,
        "scores": {t: score(model, t) for t in data.PRETRAIN_TASKS},
        "final_loss": round(float(np.mean(history["loss"][-20:])), 4),
    }


# ---------------------------------------------------------------------------- main


def write_scores(results: dict) -> None:
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    serialization.atomic_write(OUT / "scores.json", text.encode())


def main() -> None:
    ln.backend.set_blas_threads(1)  # one BLAS thread: bit-reproducible runs
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["--only", "joint"]:
        results = json.loads((OUT / "scores.json").read_text())
        results["joint"] = joint_scores()
        results["settings"]["joint_steps"] = JOINT_STEPS
        print("  joint adapter:", results["joint"], flush=True)
        write_scores(results)
        return
    if sys.argv[1:]:
        raise SystemExit(f"unknown arguments {sys.argv[1:]}; expected none or --only joint")
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
            "eval": f"data.exact_match(model, task, n={EVAL_N}) (held-out, seed 1234)",
        }
    }

    print("1. task adapters (r=8 on q, v, 300 steps each)", flush=True)
    models = {}
    for task in TASKS:
        models[task] = train_task_adapter(task)
        lora.save_adapter(models[task], OUT / task)
    results["matrix"] = {
        name: {t: score(m, t) for t in TASKS} for name, m in models.items()
    }  # adapter -> task -> score
    results["adapter_pretrain"] = {name: pretrain_mean(m) for name, m in models.items()}
    print("  ", results["matrix"], flush=True)

    print("2. replay adapters for", PAIR, flush=True)
    pool = base_answers_pool()
    for task in PAIR:
        lora.save_adapter(train_replay_adapter(task, pool), OUT / f"{task}_replay")

    print("3. combining swp and rot", flush=True)
    results["combine"] = {
        "plain": combination_scores({t: OUT / t for t in PAIR}),
        "replay": combination_scores({t: OUT / f"{t}_replay" for t in PAIR}),
    }
    print("  ", json.dumps(results["combine"]), flush=True)

    print("3b. one adapter trained on both tasks", flush=True)
    results["joint"] = joint_scores()
    print("  ", results["joint"], flush=True)

    print("4. QLoRA-style recovery on a 2-bit base", flush=True)
    results["qlora"] = qlora_run()
    print("  ", results["qlora"]["scores"], flush=True)

    print("5. 'sub': LoRA r = 1, 2, 8 and full fine-tuning, 3 seeds", flush=True)
    jobs = [("lora", r, s) for r in SUB_RANKS for s in SUB_SEEDS]
    jobs += [("full", 0, s) for s in SUB_SEEDS]
    workers = int(os.environ.get("WORKERS", "2"))
    if workers > 1:
        with get_context("fork").Pool(
            workers, initializer=ln.backend.set_blas_threads, initargs=(1,)
        ) as pool_:
            results["sub_sweep"] = pool_.map(sub_run, jobs, chunksize=1)
    else:
        results["sub_sweep"] = [sub_run(job) for job in jobs]
    results["sub_sweep_settings"] = {
        "steps": SUB_STEPS,
        "eval_every": SUB_EVAL_EVERY,
        "full_lr": FULL_LR,
        "seeds": list(SUB_SEEDS),
    }

    results["seconds"] = round(time.perf_counter() - started, 1)
    write_scores(results)
    print(f"done in {results['seconds']:.0f} s; wrote {OUT}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
