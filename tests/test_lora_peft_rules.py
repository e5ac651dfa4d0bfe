"""Issue 21, section 3: where a PEFT user would trip, lora_np follows PEFT's rules.

* ``load_adapter`` changes what trains only when asked (PEFT's ``is_trainable``) and draws no
  random numbers;
* ``set_scale(adapter, scale)``, PEFT's order;
* one targeting rule for ``inject``, ``add_adapter`` and ``load_adapter``: a string is a regular
  expression for the whole module name, a list entry the whole name or its dotted tail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_lora import assert_same_snapshot, inputs, make_net, randomise_B, snapshot

import lora_np as ln
from lora_np import lora
from lora_np.lora import peft_format


def _trainable(model) -> list:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _saved(tmp_path, targets=("q", "v")):
    model = make_net()
    lora.inject(model, list(targets), r=2, alpha=4)
    randomise_B(model, seed=3)
    return model, lora.save_adapter(model, tmp_path / "adapter")


# ------------------------------------------------------------------ load_adapter: what trains
def test_loading_into_a_fresh_model_trains_nothing_by_default(tmp_path):
    """PeftModel.from_pretrained(base, folder): the base is frozen (every PEFT model's is), and
    the adapter too unless is_trainable=True, so training cannot silently tune the base."""
    _, folder = _saved(tmp_path)
    fresh = make_net()
    assert _trainable(fresh) == [n for n, _ in fresh.named_parameters()]  # a fresh model: all
    lora.load_adapter(fresh, folder)
    assert _trainable(fresh) == []
    assert fresh.training  # PEFT also calls eval() here; lora_np leaves the mode alone
    with pytest.raises(ValueError, match="nothing to train"):
        ln.train.train(fresh, lambda step: None, 1, progress=False)


def test_is_trainable_makes_the_loaded_adapter_and_only_it_trainable(tmp_path):
    injected, folder = _saved(tmp_path)
    fresh = make_net()
    lora.load_adapter(fresh, folder, is_trainable=True)
    assert _trainable(fresh) == _trainable(injected)  # exactly as after inject (get_peft_model)
    assert all(
        n.endswith((".adapters.default.A", ".adapters.default.B")) for n in _trainable(fresh)
    )


def test_a_second_adapter_loads_frozen_and_the_base_stays_frozen(tmp_path):
    """Where the loaded adapter goes it becomes active (PEFT's load_adapter leaves the active
    adapter as it was) and frozen; elsewhere the flags stay as they were. PEFT differs: its
    load_adapter(..., is_trainable=False) also freezes the adapter that was active."""
    _, folder = _saved(tmp_path, targets=("q",))
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)  # "default" trains on q and v
    lora.load_adapter(model, folder, adapter_name="other")  # on q only; active there
    assert _trainable(model) == [f"blocks.{i}.v.adapters.default.{w}" for i in (0, 1) for w in "AB"]
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    lora.load_adapter(model, folder, adapter_name="other", is_trainable=True)
    assert _trainable(model) == [
        f"blocks.{i}.{m}.adapters.{a}.{w}"
        for i in (0, 1)
        for m, a in (("q", "other"), ("v", "default"))
        for w in "AB"
    ]


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_is_trainable_must_be_a_bool_checked_before_anything_changes(tmp_path, bad):
    _, folder = _saved(tmp_path)
    fresh = make_net()
    before = snapshot(fresh)
    with pytest.raises(TypeError, match=f"is_trainable must be True or False, got {bad!r}"):
        lora.load_adapter(fresh, folder, is_trainable=bad)
    assert_same_snapshot(before, snapshot(fresh))


def test_loading_draws_no_random_numbers(tmp_path):
    injected, folder = _saved(tmp_path)
    fresh, again = make_net(), make_net()
    lora.load_adapter(again, folder)
    ln.manual_seed(7)
    expected = ln.backend.rng().random(4)
    ln.manual_seed(7)
    lora.load_adapter(fresh, folder)
    np.testing.assert_array_equal(ln.backend.rng().random(4), expected)
    x = inputs()
    np.testing.assert_array_equal(fresh(x).data, injected(x).data)  # and loads what was saved


def test_an_added_layer_built_from_given_weights_draws_nothing():
    layer = lora.LoRALinear(ln.nn.Linear(6, 5), r=2, alpha=4)
    A = np.arange(12, dtype="float32").reshape(2, 6)
    B = np.ones((5, 2), dtype="float32")
    ln.manual_seed(3)
    expected = ln.backend.rng().random(2)
    ln.manual_seed(3)
    layer.add_adapter("given", 2, 4.0, weights=(A, B))
    assert np.array_equal(ln.backend.rng().random(2), expected)
    np.testing.assert_array_equal(layer.adapters["given"].A.data, A)
    with pytest.raises(
        ValueError, match=r"adapter 'bad': A of shape \(3, 6\) expected \(r=3\), got \(2, 6\)"
    ):
        layer.add_adapter("bad", 3, 4.0, weights=(A, B))
    assert "bad" not in layer.adapters


# ------------------------------------------------------------------ set_scale: PEFT's order
def test_set_scale_takes_the_adapter_then_the_scale():
    ln.manual_seed(0)
    layer = lora.LoRALinear(ln.nn.Linear(6, 5, dtype="float64"), r=2, alpha=4)
    layer.add_adapter("other", 2, 8.0)
    layer.set_scale("other", 0.5)  # PEFT: LoraLayer.set_scale(adapter, scale)
    assert layer.adapters["other"].scaling == 0.5 * 8.0 / 2
    assert layer.adapters["default"].scaling == 4.0 / 2
    with pytest.raises(TypeError, match=r"set_scale\(adapter, scale\).*got adapter=0.5"):
        layer.set_scale(0.5, "default")  # the old order is refused, not misread
    with pytest.raises(KeyError, match="no adapter named 'missing'"):  # PEFT skips it silently
        layer.set_scale("missing", 0.5)
    assert layer.adapters["default"].scaling == 2.0


# ------------------------------------------------------------------ one targeting rule
def _linear_names(model) -> list:
    return [n for n, m in model.named_modules() if isinstance(m, ln.nn.Linear)]


STRING_TARGETS = [r".*\.q", r"blocks\.0\.(q|v)", r"blocks\.\d\.mlp\.0", "head", r".*(q|v)"]


@pytest.mark.parametrize("target", STRING_TARGETS + [["q"], ["mlp.0", "head"], ["blocks.1.v"]])
def test_inject_selects_what_the_adapter_config_rule_selects(target):
    model = make_net()
    expected = [n for n in _linear_names(model) if peft_format._names_match(n, target)]
    assert lora.find_targets(model, target) == expected
    assert lora.inject(model, target, r=2, alpha=4) == expected


def test_a_string_target_is_a_regex_for_the_whole_name():
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'q'.*regular expression for the whole module name"):
        lora.inject(model, "q", r=2, alpha=4)  # PEFT: a string is re.fullmatch'ed, no suffix
    with pytest.raises(ValueError, match=r"target 'q\(' is not a valid regular expression"):
        lora.inject(model, "q(", r=2, alpha=4)
    with pytest.raises(ValueError, match="matches no module"):
        lora.inject(model, "lock.q", r=2, alpha=4)
    assert_same_snapshot(before, snapshot(model))
    # a list keeps the suffix rule: "mlp.0" is the dotted tail of blocks.<i>.mlp.0
    assert lora.inject(model, ["mlp.0"], r=2, alpha=2) == ["blocks.0.mlp.0", "blocks.1.mlp.0"]


def test_add_adapter_targets_follow_the_same_rule():
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    assert lora.add_adapter(model, "a", 2, 4.0, targets=r".*\.v") == ["blocks.0.v", "blocks.1.v"]
    assert lora.add_adapter(model, "b", 2, 4.0, targets=["q"]) == ["blocks.0.q", "blocks.1.q"]
    with pytest.raises(ValueError, match="match no LoRA layer"):
        lora.add_adapter(model, "c", 2, 4.0, targets="v")


def test_a_regex_config_loads_the_layers_inject_wraps_with_that_regex(tmp_path):
    pattern = r"blocks\.1\.(q|v)"
    model = make_net()
    names = lora.inject(model, pattern, r=2, alpha=4)
    randomise_B(model, seed=2)
    folder = lora.save_adapter(model, tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = pattern
    (folder / "adapter_config.json").write_text(json.dumps(config))
    fresh = make_net()
    assert lora.load_adapter(fresh, folder) == names
    x = inputs()
    np.testing.assert_array_equal(fresh(x).data, model(x).data)
