"""Pretraining: a short run writes a loadable, reproducible checkpoint; the shipped base
loads in one call and scores what its JSON file says."""

import json

import numpy as np
import pytest

from lora_np import data, pretrain
from lora_np.transformer import GPT, PRETRAINED_PATH, GPTConfig, load_pretrained

TINY = GPTConfig(vocab_size=64, block_size=40, n_embd=16, n_head=2, n_layer=1)


def test_short_pretraining_is_reproducible():
    a, history = pretrain.pretrain(
        steps=4, batch_size=8, config=TINY, warmup_steps=2, progress=False
    )
    b, _ = pretrain.pretrain(steps=4, batch_size=8, config=TINY, warmup_steps=2, progress=False)
    c, _ = pretrain.pretrain(
        steps=4, batch_size=8, config=TINY, warmup_steps=2, seed=1, progress=False
    )
    assert history["steps_done"] == 4
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(np.array_equal(pa[n].data, pb[n].data) for n in pa)
    assert not all(np.array_equal(pa[n].data, pc[n].data) for n in pa)


def test_command_line_writes_weights_and_json(tmp_path, capsys, monkeypatch):
    threads = []
    monkeypatch.setattr(pretrain.backend, "set_blas_threads", threads.append)
    args = ["--steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--eval-n", "2"]
    assert pretrain.main([*args, "--out-dir", str(tmp_path), "--name", "t", "--no-progress"]) == 0
    assert threads == [1]  # one BLAS thread, as the shipped file was made, without env vars
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.safetensors"]
    info = json.loads((tmp_path / "t.json").read_text())
    assert info["settings"]["steps"] == 2
    assert set(info["exact_match"]) == set(data.TASKS)
    model = GPT.load(tmp_path / "t.safetensors")
    assert model.config == GPTConfig(**info["config"])
    assert "wrote" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shipped():
    info = json.loads(PRETRAINED_PATH.with_suffix(".json").read_text())
    return load_pretrained(), info


def test_shipped_base_is_small_and_loads_in_one_call(shipped):
    model, info = shipped
    assert PRETRAINED_PATH.stat().st_size <= 10 * 2**20
    assert model.config == GPTConfig() == GPTConfig(**info["config"])
    assert not model.training


def test_shipped_base_scores_what_its_json_says(shipped):
    model, info = shipped
    n = 40  # the first 40 of the prompts the JSON's scores were measured on
    for task in data.PRETRAIN_TASKS:
        documented = info["exact_match"][task]
        assert documented >= 0.85, task  # rev is the weakest: it fails 7-letter inputs
        assert data.exact_match(model, task, n=n) >= documented - 0.1, task
    for task in data.DOWNSTREAM_TASKS:  # what LoRA has to teach it: the base fails these
        assert info["exact_match"][task] <= 0.2, task
        assert data.exact_match(model, task, n=n) <= 0.25, task


def test_pretraining_shows_a_progress_bar_by_default(capsys):
    pretrain.pretrain(steps=2, batch_size=4, config=TINY, warmup_steps=1)
    assert "pretrain: 100%|" in capsys.readouterr().err


def test_the_checkpoint_and_its_json_are_written_as_a_pair(tmp_path, monkeypatch):
    """A save that fails at its second rename leaves both old files, not new weights beside
    the old JSON (whose scores would then describe another model)."""
    import os

    from lora_np import backend, serialization

    backend.manual_seed(0)
    weights, card = pretrain.write_checkpoint(GPT(TINY), tmp_path, "t", {"run": 1})
    old = (weights.read_bytes(), card.read_bytes())
    calls, real = [], os.replace

    def failing(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args)

    monkeypatch.setattr(serialization.os, "replace", failing)
    backend.manual_seed(1)
    with pytest.raises(OSError, match="disk full"):
        pretrain.write_checkpoint(GPT(TINY), tmp_path, "t", {"run": 2})
    monkeypatch.undo()
    assert (weights.read_bytes(), card.read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.safetensors"]
    backend.manual_seed(1)
    pretrain.write_checkpoint(GPT(TINY), tmp_path, "t", {"run": 2})
    assert json.loads(card.read_text()) == {"run": 2}
    assert weights.read_bytes() != old[0]
