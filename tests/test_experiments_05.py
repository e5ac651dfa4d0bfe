"""The committed results of experiments/05_svd_rank.py (lora_np/results/05_*): their schema,
sizes, and cheap points rerun with the study's helpers in lora_np.svd_rank."""

from __future__ import annotations

import numpy as np
import pytest

from lora_np import results as stored_results
from lora_np import svd_rank

RESULTS = stored_results.FOLDER

RUN_KEYS = {
    "r",
    "seed",
    "init_seed",
    "exact_match",
    "eval_step",
    "eval",
    "train_seconds",
    "first_losses",
    "final_loss",
    "adapter_bytes",
}


@pytest.fixture(scope="module")
def results():
    return stored_results.load_json(svd_rank.JSON_NAME)


@pytest.fixture(scope="module")
def script():
    return svd_rank


def test_the_script_uses_the_library_study(load_experiment):
    exp = load_experiment("05_svd_rank")
    assert exp.JSON_PATH == stored_results.path(svd_rank.JSON_NAME)
    assert exp.full_finetune is svd_rank.full_finetune and exp.RANKS == svd_rank.RANKS


def test_adapter_path():
    assert svd_rank.adapter_path("r8_s0") == stored_results.path("05_lora_r8_s0")
    with pytest.raises(ValueError, match="unknown LoRA run 'r9'"):
        svd_rank.adapter_path("r9")


def test_schema(results, script):
    assert results["task"] == script.TASK
    assert results["ranks"] == list(script.RANKS)
    assert results["full_ft_settings"] == script.FULL
    assert results["lora_settings"] == script.LORA
    assert set(results["truncated_exact_match"]) == {str(r) for r in script.RANKS}
    assert all(0.0 <= v <= 1.0 for v in results["truncated_exact_match"].values())
    full = results["full_ft"]
    assert len(full["first_losses"]) == script.LOSS_STEPS
    assert 0.0 <= full["exact_match"] <= 1.0
    n_matrices = len(script.matrix_names())
    assert set(results["full_ft_seeds"]) == {str(s) for s in script.EXTRA_FULL_SEEDS}
    for run in [full, *results["full_ft_seeds"].values()]:
        for key in ("energy_rank_90", "energy_rank_99", "top_share"):
            assert len(run[key]) == n_matrices, key
        assert all(1 <= a <= b <= 128 for a, b in zip(run["energy_rank_90"], run["energy_rank_99"]))
    for run in results["full_ft_seeds"].values():
        assert set(run["truncated_exact_match"]) == {str(r) for r in script.RANKS}
    assert set(results["lora"]) == set(script.LORA_RUNS)
    for tag, (r, seed) in script.LORA_RUNS.items():
        run = results["lora"][tag]
        assert set(run) == RUN_KEYS, set(run) ^ RUN_KEYS
        assert (run["r"], run["seed"]) == (r, seed)
        assert run["init_seed"] == script.lora_init_seed(r, seed)
        assert len(run["first_losses"]) == script.LOSS_STEPS
        assert run["eval_step"][-1] == script.LORA["steps"]


def test_files_fit_the_budget(script):
    files = [p for p in RESULTS.rglob("05_*") if p.is_file()]
    files += [p for d in RESULTS.glob("05_lora_*") for p in d.iterdir()]
    assert all(p.stat().st_size <= 1024 * 1024 for p in files), [
        (p.name, p.stat().st_size) for p in files
    ]
    total = sum(p.stat().st_size for p in set(files))
    assert total <= 3 * 1024 * 1024, total


def test_stored_deltas(script):
    deltas = script.load_full_ft_deltas()
    assert list(deltas) == script.matrix_names()
    other = script.load_full_ft_other()
    assert not set(other) & set(deltas)
    from lora_np import transformer

    base = dict(transformer.load_pretrained().named_parameters())
    assert set(other) | set(deltas) == set(base)
    for name, delta in deltas.items():
        assert delta.shape == base[name].shape
        assert 0.0 < np.linalg.norm(delta) < np.linalg.norm(base[name].data)


def test_rerun_first_steps(results, script):
    """The first steps of the full fine-tune and of the r = 8 LoRA run, retrained (a few s)."""
    steps = 10
    _, full = script.full_finetune(steps=steps)
    _, lora_run = script.train_lora(8, 0, steps=steps)
    stored_full = results["full_ft"]["first_losses"][:steps]
    stored_lora = results["lora"]["r8_s0"]["first_losses"][:steps]
    np.testing.assert_allclose(full["loss"], stored_full, rtol=1e-3)
    np.testing.assert_allclose(lora_run["loss"], stored_lora, rtol=1e-3)


def test_rerun_one_truncation_point(results, script):
    """W0 + best rank-16 ΔW in every matrix, scored again from the stored files."""
    deltas, other = script.load_full_ft_deltas(), script.load_full_ft_other()
    score = script.score(script.truncated_model(deltas, other, 16))
    assert abs(score - results["truncated_exact_match"]["16"]) <= 0.02, score
