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


def test_training_tunes_the_allocator_explicitly(model, monkeypatch):
    calls = []
    monkeypatch.setattr(ln.fastpaths, "tune_allocator", lambda: calls.append(1) or True)
    train(model, data.batches("rev", 4), steps=1, progress=False)
    assert calls == [1]


@pytest.mark.parametrize("make", [lambda b: iter(b), lambda b: (x for x in b), list])
def test_batches_that_run_out_are_named(model, make):
    two = [data.encode_examples(data.make_examples("cpy", 4, seed=s)) for s in range(2)]
    batches = make(two)
    with pytest.raises(ValueError, match=r"batches ran out at step 2 of 5") as info:
        train(model, batches, steps=5, progress=False)
    assert type(batches).__name__ in str(info.value)  # names what was given


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


def _weights(model):
    return {n: p.data.copy() for n, p in model.named_parameters()}


def _assert_same_weights(model, expected):
    for name, p in model.named_parameters():
        assert np.array_equal(p.data, expected[name]), name


def _assert_same_state(opt, expected_opt):
    """Two optimisers over parameters of the same names hold the same state, bit for bit."""
    assert opt.step_count == expected_opt.step_count
    got = [opt.state.get(id(p)) for p in opt.params]
    want = [expected_opt.state.get(id(p)) for p in expected_opt.params]
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(a[key], b[key]), key


def _run(n_steps, lr, **kwargs):
    """A fresh model trained ``n_steps`` steps with an AdamW we keep: (model, optimizer)."""
    ln.manual_seed(0)
    fresh = GPT(CFG)
    opt = ln.optim.AdamW(fresh.parameters(), lr=lr)
    train(fresh, data.batches("rev", 8), steps=n_steps, lr=lr, optimizer=opt, progress=False)
    return fresh, opt


def test_a_nan_loss_stops_training_naming_the_step(model):
    poisoned = _Poisoned(model, bad_call=3)
    opt = ln.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(FloatingPointError, match="loss became nan at step 3") as info:
        train(poisoned, data.batches("rev", 8), steps=10, lr=1e-2, optimizer=opt, progress=False)
    # the weights that gave the last finite loss (step 2's, before its update) and the
    # optimiser state that goes with them: as if training had stopped after two updates
    good, good_opt = _run(2, 1e-2)
    _assert_same_weights(model, _weights(good))
    _assert_same_state(opt, good_opt)
    history = info.value.history  # the partial history survives the error, up to step 2:
    assert history["step"] == [0, 1, 2] and history["steps_done"] == 2  # the kept weights' loss
    assert all(math.isfinite(v) for v in history["loss"])
    assert "restored" in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_learning_rate_keeps_the_last_finite_weights(model):
    before = _weights(model)
    with pytest.raises(FloatingPointError, match="at step 1") as info:
        train(model, data.batches("rev", 8), steps=10, lr=1e30, progress=False)
    _assert_same_weights(model, before)  # step 0's loss was the last finite one
    assert info.value.history["steps_done"] == 0
    assert "no update was made" not in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_sgd_that_diverges_leaves_no_nan_weights(model):
    before = _weights(model)
    opt = ln.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError):
        train(model, data.batches("rev", 8), steps=5, lr=1e30, optimizer=opt, progress=False)
    _assert_same_weights(model, before)
    assert opt.step_count == 0


class _Vandal(ln.optim.SGD):
    """An optimiser whose steps write NaN into the weights."""

    def step(self):
        super().step()
        for p in self.params:
            p.data[...] = np.nan


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_weights_after_the_last_update_are_rolled_back(model):
    before = _weights(model)
    opt = _Vandal(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="not finite"):
        train(model, data.batches("rev", 8), steps=1, optimizer=opt, progress=False)
    _assert_same_weights(model, before)


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


def _untouched(model, **kwargs):
    """train(**kwargs) raises ValueError or TypeError and changes no weight."""
    before = _weights(model)
    with pytest.raises((ValueError, TypeError)) as info:
        train(model, data.batches("rev", 4), **{"steps": 3, "progress": False, **kwargs})
    _assert_same_weights(model, before)
    return str(info.value)


@pytest.mark.parametrize("bad", [-1.0, 0, 0.0, float("nan"), "1"])
def test_grad_clip_must_be_positive_or_none(model, bad):
    assert "grad_clip" in _untouched(model, grad_clip=bad)


@pytest.mark.parametrize("bad", [-1e-2, float("nan"), float("inf"), "0.1"])
def test_lr_is_checked_even_with_an_optimizer(model, bad):
    opt = ln.optim.SGD(model.parameters(), lr=0.1)
    assert "lr" in _untouched(model, lr=bad, optimizer=opt)


@pytest.mark.parametrize(
    "field, bad",
    [
        ("warmup_steps", -1),
        ("warmup_steps", 1.5),
        ("log_every", 0),
        ("log_every", -2),
        ("steps", -1),
        ("steps", 2.5),
        ("eval_every", 0),
        ("max_seconds", -1.0),
        ("max_seconds", float("nan")),
        ("weight_decay", -0.1),
        ("schedule", "linear"),
        ("betas", (0.9, 1.5)),
    ],
)
def test_bad_settings_are_named_before_any_update(model, field, bad):
    kwargs = {field: bad}
    if field == "eval_every":
        kwargs["eval_fn"] = lambda m: 0.0
    assert field in _untouched(model, **kwargs)


def test_learning_rate_schedule_refuses_negative_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, 10, 1.0, warmup_steps=-1)


@pytest.mark.parametrize("mode", [True, False])
def test_a_failing_eval_fn_leaves_the_mode_as_it_was(model, mode):
    def broken(m):
        raise KeyError("boom")

    model.train(mode)
    with pytest.raises(KeyError, match="boom"):
        train(model, data.batches("rev", 4), steps=3, eval_every=1, eval_fn=broken, progress=False)
    assert model.training is mode
    assert all(m.training is mode for _, m in model.named_modules())


def test_training_a_merged_model_says_to_unmerge_first(model):
    from lora_np import lora

    lora.inject(model, ["q", "v"], 2, alpha=4)
    lora.merge_adapter(model)
    before = _weights(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        train(model, data.batches("rev", 4), steps=2, progress=False)
    _assert_same_weights(model, before)


def test_the_progress_bar_is_plain_text_nbval_can_mask(model, capsys):
    import re

    train(model, data.batches("rev", 4), steps=3, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"\d+%\|[^|\n]*\|[^\r\n]*", err), err
    train(model, data.batches("rev", 4), steps=3, progress=False)
    assert capsys.readouterr().err == ""


def test_importing_the_library_prints_nothing():
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lora_np, lora_np.train, lora_np.pretrain\n"
            "assert 'tqdm.auto' not in sys.modules, 'tqdm.auto warns in a notebook without ipywidgets'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "" and done.stderr == ""
