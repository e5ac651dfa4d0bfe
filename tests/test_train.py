"""The training loop: it learns, evaluates on schedule, records a history, and stops on NaN."""

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import data
from lora_np.train import lr_at, train
from lora_np.transformer import GPT, GPTConfig

CFG = GPTConfig(vocab_size=64, block_size=32, n_embd=32, n_head=2, n_layer=1)


@pytest.fixture
def model():
    ln.manual_seed(0)
    return GPT(CFG)


def test_training_lowers_the_loss_and_records_history(model):
    calls = []

    def eval_fn(m):
        calls.append(m.training)
        return {"em": data.exact_match(m, "cpy", n=8)}

    history = train(
        model,
        data.batches("cpy", 16, seed=0),
        steps=40,
        lr=1e-2,
        eval_every=15,
        eval_fn=eval_fn,
        log_every=5,
        progress=False,
    )
    assert history["steps_done"] == 40
    assert history["step"] == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    assert history["eval_step"] == [0, 15, 30, 40]
    assert calls == [False] * 4  # evaluated in eval mode
    assert model.training  # and handed back in training mode
    assert np.mean(history["loss"][-3:]) < 0.85 * history["loss"][0]
    assert all(isinstance(e["em"], float) for e in history["eval"])
    assert history["train_seconds"] > 0


def test_only_trainable_parameters_change(model):
    model.requires_grad_(False)
    model.blocks[0].attn.q.weight.requires_grad_(True)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    train(model, data.batches("rev", 8), steps=3, lr=1e-2, progress=False)
    changed = [n for n, p in model.named_parameters() if not np.array_equal(p.data, before[n])]
    assert changed == ["blocks.0.attn.q.weight"]


def test_a_function_of_the_step_can_supply_batches(model):
    seen = []

    def batch_for(step):
        seen.append(step)
        return data.encode_examples(data.make_examples("cpy", 4, seed=step))

    train(model, batch_for, steps=3, progress=False)
    assert seen == [0, 1, 2]


class _Poisoned:
    """Wraps a model; its loss turns NaN on the call numbered ``bad_call``."""

    def __init__(self, model, bad_call):
        self.model, self.bad_call, self.calls, self.snapshot = model, bad_call, 0, None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, targets=None):
        logits, loss = self.model(idx, targets)
        if self.calls == self.bad_call:
            self.snapshot = {n: p.data.copy() for n, p in self.model.named_parameters()}
            loss = loss * float("nan")
        self.calls += 1
        return logits, loss


def test_a_nan_loss_stops_training_naming_the_step(model):
    poisoned = _Poisoned(model, bad_call=3)
    with pytest.raises(FloatingPointError, match="loss became nan at step 3"):
        train(poisoned, data.batches("rev", 8), steps=10, lr=1e-2, progress=False)
    for name, p in model.named_parameters():  # no update was made from the NaN state
        assert np.array_equal(p.data, poisoned.snapshot[name]), name


def test_learning_rate_schedule():
    assert lr_at(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(50, 100, 1.0, warmup_steps=10) == 1.0
    assert lr_at(10, 100, 1.0, warmup_steps=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, warmup_steps=10, schedule="cosine") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_at(0, 10, 1.0, schedule="linear")


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="eval_every=5 needs"):
        train(model, data.batches("rev", 4), steps=1, eval_every=5, progress=False)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, data.batches("rev", 4), steps=1, progress=False)


def test_max_seconds_stops_early(model):
    history = train(model, data.batches("rev", 4), steps=10_000, max_seconds=0.2, progress=False)
    assert 0 < history["steps_done"] < 10_000
    assert math.isfinite(history["loss"][-1])
