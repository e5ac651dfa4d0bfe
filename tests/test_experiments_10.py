"""experiments/10_peers.py: its pieces on the smoke setting (resume, schema, the learning-rate
edge rule, the counts), and one stored point rerun once the sweep's results exist."""

from __future__ import annotations

import json

import pytest

import lora_np as ln
from lora_np import results as stored_results

RUN_KEYS = {
    "section",
    "task",
    "method",
    "size",
    "n_train",
    "steps",
    "seed",
    "lr",
    "warmup_steps",
    "trainable_params",
    "optimizer_state_bytes",
    "final_loss",
    "val_loss",
    "exact_match",
    "pretrain_exact_match",
    "pretrain_mean",
    "step_seconds",
    "wall_seconds",
}


@pytest.fixture(scope="module")
def script(load_experiment):
    return load_experiment("10_peers")


@pytest.fixture(scope="module")
def smoke(script, tmp_path_factory, monkeypatch_module):
    """The smoke sweep, in this process (LORA_NP_WORKERS=0), written to a temporary file."""
    out = tmp_path_factory.mktemp("peers10") / "10_peers.json"
    monkeypatch_module.setenv("LORA_NP_WORKERS", "0")
    results = script.main(["--smoke", "--out", str(out)])
    return out, results


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _rows(rows, **where):
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def test_smoke_schema(script, smoke):
    """Every smoke configuration was tuned on the tuning seed, its rate is the rule's choice,
    each reported seed ran at it and was scored on the pretraining tasks; latency recorded."""
    out, results = smoke
    the_plan = script.plan(smoke=True)
    stored = json.loads(out.read_text())
    assert stored["complete"] is True and stored["settings"]["smoke"] is True
    assert stored["settings"]["configs"] == the_plan["configs"]
    assert set(stored["base"]["pretrain"]) == set(ln.data.PRETRAIN_TASKS)
    for row in stored["runs"] + stored["tuning"]:
        assert set(row) == RUN_KEYS, set(row) ^ RUN_KEYS
        assert 0.0 <= row["exact_match"] <= 1.0
        assert row["trainable_params"] == script.count(row["method"], row["size"])
    assert {r["seed"] for r in stored["tuning"]} == {script.TUNE_SEED}
    assert all(r["pretrain_exact_match"] is None for r in stored["tuning"])
    assert len(stored["runs"]) == len(the_plan["configs"]) * len(the_plan["seeds"])
    for config in the_plan["configs"]:
        choice = stored["lr"][script.name(config)]
        grid = the_plan["grid"][config["method"]]
        redo = script.choose_lr(stored["tuning"], config, grid, the_plan["max_extensions"])
        assert redo["next"] is None and redo["lr"] == choice["lr"]
        assert set(grid) <= set(choice["tried"])
        for seed in the_plan["seeds"]:
            (row,) = _rows(stored["runs"], **config, seed=seed)
            assert row["lr"] == choice["lr"]
            assert set(row["pretrain_exact_match"]) == set(ln.data.PRETRAIN_TASKS)
    assert len(stored["summary"]) == len(the_plan["configs"])
    lat = stored["latency"]
    assert set(lat["ratio"]) == {v for v, _ in script.LATENCY_VARIANTS}
    assert lat["settings"]["cpu"] and lat["settings"]["blas"] is not None


def test_resume_keeps_finished_runs(script, smoke, tmp_path, monkeypatch):
    """--resume keeps every stored run as it is (a marked one stays marked), adds none twice,
    and reruns only what is missing (a deleted run comes back)."""
    out, _ = smoke
    stored = json.loads(out.read_text())
    resumed = tmp_path / "10_peers.json"
    stored["runs"][0]["wall_seconds"] = -1.0  # a mark no real run has
    dropped = stored["runs"].pop()
    resumed.write_text(json.dumps(stored))
    monkeypatch.setenv("LORA_NP_WORKERS", "0")
    again = script.main(["--smoke", "--resume", "--out", str(resumed)])
    assert len(again["runs"]) == len(stored["runs"]) + 1
    assert len(again["tuning"]) == len(stored["tuning"])
    assert -1.0 in [r["wall_seconds"] for r in again["runs"]]
    back = _rows(again["runs"], **{k: dropped[k] for k in ("method", "size", "section", "seed")})
    assert len(back) == 1 and back[0]["lr"] == dropped["lr"]
    assert again["latency"] == stored["latency"]  # measured once


def _tuning(config, losses):
    return [{**config, "lr": lr, "val_loss": loss} for lr, loss in losses.items()]


def test_lr_edge_extension(script):
    """A best on the grid's top edge asks for the ladder's next rate up, on the bottom edge the
    next one down; a best inside ends the search; after the allowed extensions a best still on
    an edge is recorded as such; ties go to the smaller rate."""
    config = script._config("lora", 4)
    grid = (3e-3, 1e-2, 3e-2)
    top = script.choose_lr(_tuning(config, {3e-3: 3.0, 1e-2: 2.0, 3e-2: 1.0}), config, grid)
    assert top["next"] == 1e-1 and top["on_edge"] and top["lr"] == 3e-2
    low = script.choose_lr(_tuning(config, {3e-3: 1.0, 1e-2: 2.0, 3e-2: 3.0}), config, grid)
    assert low["next"] == 1e-3
    inside = _tuning(config, {3e-3: 3.0, 1e-2: 2.0, 3e-2: 1.0, 1e-1: 1.5})
    done = script.choose_lr(inside, config, grid)
    assert done["next"] is None and done["lr"] == 3e-2 and not done["on_edge"]
    climbing = _tuning(config, {3e-3: 5, 1e-2: 4, 3e-2: 3, 1e-1: 2, 3e-1: 1.5, 1.0: 1})
    spent = script.choose_lr(climbing, config, grid, max_extensions=3)
    assert spent["next"] is None and spent["on_edge"] and spent["lr"] == 1.0
    tie = script.choose_lr(_tuning(config, {3e-3: 2.0, 1e-2: 1.0, 3e-2: 1.0}), config, grid)
    assert tie["lr"] == 1e-2 and tie["next"] is None
    other = script._config("lora", 16)  # another configuration's rows do not count
    mixed = _tuning(config, {3e-3: 3.0, 1e-2: 2.0, 3e-2: 2.5}) + _tuning(other, {1e-1: 0.1})
    assert script.choose_lr(mixed, config, grid)["lr"] == 1e-2


@pytest.mark.parametrize(
    "method", ["lora", "dora", "loraplus", "adapter_h", "adapter_l", "prefix_embed", "bitfit"]
)
def test_counts_follow_the_papers_formulas(script, method):
    """The sweep's sizes train exactly the paper's |Θ| (the models' own counts)."""
    for size in script.SIZES[method]:
        _, params = script.build(method, size, seed=0)
        assert sum(p.size for p in params) == script.count(method, size), (method, size)


def test_sizes_fit_and_sit_near_the_budgets(script):
    """Every prefix leaves the task's longest input its positions; the 3-size methods sit near
    2 K, 8 K and 32 K (within a factor of 2) where the method can reach them (Adapter^H's
    LayerNorms alone hold 2 K: its smallest size, r = 1, is the nearest it gets to 2 K)."""
    for method in ("prefix_embed", "prefix_layer"):
        assert max(script.SIZES[method]) <= script.max_prefix()
    for method in ("lora", "dora", "loraplus", "adapter_h", "adapter_l"):
        for size, budget in zip(script.SIZES[method], (2048, 8192, 32768), strict=True):
            n = script.count(method, size)
            assert budget / 2 <= n and (n <= 2 * budget or size == 1), (method, size)


def test_products_per_forward_are_the_structural_claim(script):
    """A merged LoRA or DoRA runs the base's products; unmerged LoRA on q, v adds two per
    adapted layer; Adapter^H adds four per block, Adapter^L two; a prefix adds none (it adds
    positions instead)."""
    count = {v: script.products_per_forward(script._latency_model(v, spec))
             for v, spec in script.LATENCY_VARIANTS}  # fmt: skip
    base, n_layer = count["base"], 4
    assert count["lora merged"] == count["dora merged"] == base
    assert count["lora unmerged"] == base + 2 * 2 * n_layer
    assert count["adapter_h"] == base + 4 * n_layer
    assert count["adapter_l"] == base + 2 * n_layer
    assert count["prefix_embed"] == count["prefix_layer"] == base


# The rerun below: LoRA r = 4 on q, v, prv, seed 0, at its tuned rate (1e-2), measured
# 2026-12-05 on this project's AMD EPYC (AVX-512; numpy 2.4.6 with OpenBLAS 0.3.31), each kernel
# forced for that one command (OPENBLAS_CORETYPE=<kernel>):
#   kernel        exact match   final loss   held-out loss
#   stored        0.940         0.05442      0.04774
#   SkylakeX      0.940         0.05442      0.04774   (the kernel that made the stored results)
#   Haswell       0.940         0.05464      0.04811
#   Sandybridge   0.935         0.05426      0.04800
#   Nehalem       0.945         0.05433      0.04839
# Largest deviation: 0.005 (one prompt of 200), 0.4 % and 1.4 %. Allowed, with margin: 0.015
# (three prompts), 1 % and 4 %. Seeds 0-2 span 0.925-0.945, 0.037-0.084 and 0.038-0.074. The
# point is notebook 07's rerun point too (the same recipe): both scripts store the same numbers.
RERUN = {"method": "lora", "size": 4}
RERUN_TOLERANCE = {
    "exact_match": (0.015, False),
    "final_loss": (0.01, True),
    "val_loss": (0.04, True),
}


def _rerun(script, lr_factor=1.0):
    """The stored point's configuration again, at ``lr_factor`` times its tuned rate (the
    pretraining tasks skipped: they are not compared), and the stored rows of its seeds."""
    try:
        results = stored_results.load_json("10_peers.json")
    except FileNotFoundError:
        pytest.skip("lora_np/results/10_peers.json is not there yet: the sweep has not run")
    if not results.get("complete"):
        pytest.skip("the 10_peers sweep is still partial: the rerun waits for its results")
    config = script._config(RERUN["method"], RERUN["size"])
    lr = results["lr"][script.name(config)]["lr"] * lr_factor
    ln.backend.set_blas_threads(1)
    row = script.run(**config, seed=0, lr=lr, eval_n=script.EVAL_N, val_n=script.VAL_N,
                     forget_n=0)  # fmt: skip
    return row, _rows(results["runs"], **config)


def _misses(row, seed_rows, rerun_miss):
    (stored,) = [r for r in seed_rows if r["seed"] == 0]
    assert row["trainable_params"] == stored["trainable_params"]
    found = []
    for key, (allowed, relative) in RERUN_TOLERANCE.items():
        seeds = [r[key] for r in seed_rows]
        found.append(rerun_miss(key, row[key], stored[key], seeds, allowed, relative))
    return [miss for miss in found if miss]


def test_rerun_one_point(script, rerun_miss):
    """LoRA q, v r=4 on prv, seed 0, at its tuned rate: the stored point again."""
    row, seed_rows = _rerun(script)
    assert _misses(row, seed_rows, rerun_miss) == []


@pytest.mark.sensitivity
def test_rerun_one_point_misses_at_twice_the_rate(script, rerun_miss):
    """A changed script fails the rerun: at twice the tuned rate the point scored 0.985 with
    losses 0.0242 and 0.0243 under SkylakeX, 0.940 with 0.0308 and 0.0189 under Haswell
    (2026-12-05), outside RERUN_TOLERANCE of the stored 0.940, 0.0544 and 0.0477."""
    row, seed_rows = _rerun(script, lr_factor=2.0)
    found = _misses(row, seed_rows, rerun_miss)
    assert {"final_loss", "val_loss"} <= {miss.split(":")[0] for miss in found}, found
