"""Issue 10, section 2: each fault found by the reliability probe, as a test."""

from __future__ import annotations

import numpy as np
import pytest
from test_lora import assert_same_snapshot, inputs, make_net, randomise_B, snapshot

import lora_np as ln
from lora_np import lora


def two_adapter_net():
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    randomise_B(model)
    lora.add_adapter(model, "other", r=2, alpha=4)
    return model


# ------------------------------------------------------------------ combine_adapters (9, 10)
def test_combine_does_not_shift_later_seeded_draws():
    model = two_adapter_net()
    ln.manual_seed(7)
    expected = ln.backend.rng().random(3)
    ln.manual_seed(7)
    lora.combine_adapters(model, ["default", "other"], [1.0, 1.0])
    np.testing.assert_array_equal(ln.backend.rng().random(3), expected)


def test_combine_takes_a_single_name_as_one_adapter():
    model = two_adapter_net()
    lora.combine_adapters(model, "default", [2.0], new_name="twice")
    layer = lora.lora_layers(model)[0][1]
    np.testing.assert_allclose(
        layer.delta_weight("twice"), 2 * layer.delta_weight("default"), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("how", ["cat", "linear", "svd"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_combine_refuses_non_finite_weights_and_changes_nothing(how, bad):
    model = two_adapter_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="finite"):
        lora.combine_adapters(model, ["default", "other"], [1.0, bad], how=how)
    assert_same_snapshot(before, snapshot(model))


def test_svd_combine_refuses_rank_zero():
    model = two_adapter_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="rank"):
        lora.combine_adapters(model, ["default", "other"], [1.0, 1.0], how="svd", rank=0)
    assert_same_snapshot(before, snapshot(model))


def test_combine_while_merged_raises_and_changes_nothing():
    model = two_adapter_net()
    lora.merge_adapter(model)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.combine_adapters(model, ["default", "other"], [1.0, 1.0])
    assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------------------ mark_only_lora_as_trainable
def test_mark_only_lora_as_trainable_without_lora_raises_and_freezes_nothing():
    model = make_net()
    with pytest.raises(ValueError, match="no LoRALinear"):
        lora.mark_only_lora_as_trainable(model)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ 3: names that shadow
@pytest.mark.parametrize("name", ["named_children", "names", "forward", "train", "parameters"])
def test_adapter_names_that_shadow_attributes_are_refused(name):
    model = make_net()
    lora.inject(model, ["q"], r=2, alpha=4)
    before = snapshot(model)
    with pytest.raises(ValueError, match=name):
        lora.add_adapter(model, name, r=2, alpha=4)
    assert_same_snapshot(before, snapshot(model))
    lora.set_adapter(model, "default")  # still usable
    model.named_parameters()


def test_inject_refuses_a_shadowing_name_before_freezing_the_base():
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="named_children"):
        lora.inject(model, ["q"], r=2, alpha=4, adapter_name="named_children")
    assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------------------ 4: inactive pissa
def test_an_inactive_pissa_adapter_never_changes_the_outputs():
    """PiSSA turns W0 into its residual; as a second adapter that would change the model, so
    it is refused up front (nothing changes) and the model computes what it did."""
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    randomise_B(model)
    x = inputs()
    with ln.no_grad():
        reference = model(x).numpy()
    before = snapshot(model)
    with pytest.raises(ValueError, match="first adapter"):
        lora.add_adapter(model, "pissa", r=2, alpha=4, init="pissa")
    assert_same_snapshot(before, snapshot(model))
    with ln.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), reference)


def test_pissa_as_the_first_adapter_still_works():
    model = make_net()
    x = inputs()
    with ln.no_grad():
        reference = model(x).numpy()
        lora.inject(model, ["q"], r=2, alpha=4, init="pissa")
        np.testing.assert_allclose(model(x).numpy(), reference, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 1: save is all or nothing
def _saved_pair(tmp_path):
    old = make_net()
    lora.inject(old, ["q", "v"], r=2, alpha=4)
    randomise_B(old, seed=3)
    folder = lora.save_adapter(old, tmp_path / "adapter")
    (folder / "README.md").write_text("notes")
    new = make_net(seed=5)
    lora.inject(new, ["q"], r=3, alpha=6, rslora=True)
    randomise_B(new, seed=4)
    return old, new, folder


def _loaded_B(folder):
    fresh = make_net()
    lora.load_adapter(fresh, folder)
    return {n: layer.B.data.copy() for n, layer in lora.lora_layers(fresh)}


@pytest.mark.parametrize("fail_at", range(1, 8))
def test_a_save_that_fails_at_any_rename_leaves_the_old_adapter(tmp_path, monkeypatch, fail_at):
    import os

    from lora_np import serialization

    old, new, folder = _saved_pair(tmp_path)
    expected = _loaded_B(folder)
    calls = {"n": 0}

    def failing(real):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError("disk full (simulated)")
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(serialization.os, "replace", failing(os.replace))
    monkeypatch.setattr(serialization.os, "rename", failing(os.rename))
    try:
        lora.save_adapter(new, folder)
    except OSError:
        pass
    monkeypatch.undo()
    loaded = _loaded_B(folder)
    if calls["n"] < fail_at:  # the save made fewer renames than this: it succeeded
        assert sorted(loaded) == ["blocks.0.q", "blocks.1.q"]
    else:
        assert loaded.keys() == expected.keys()
        for name in expected:
            np.testing.assert_array_equal(loaded[name], expected[name])
    assert (folder / "README.md").read_text() == "notes"  # other files survive either way
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left
