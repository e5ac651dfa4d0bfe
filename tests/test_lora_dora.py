"""DoRA (lora/dora.py): the formula and its norm axis, the start at the base, gradients,
merge/unmerge, what trains, PEFT's file layout and the refusals. PEFT itself is compared in
tests/crosscheck/test_dora_peft.py."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from test_lora import assert_same_snapshot, snapshot

import lora_np as ln
from lora_np import functional as F
from lora_np import lora, nn
from lora_np import transformer as T
from lora_np.autograd import Tensor
from lora_np.gradcheck import gradcheck
from lora_np.quantized import QuantizedLinear


def dora_layer(d=5, k=7, r=2, alpha=3.0, dtype="float64", seed=0):
    """A DoRALinear on a (d, k) base with B and m moved off their start, so every term counts."""
    ln.manual_seed(seed)
    layer = lora.DoRALinear(nn.Linear(k, d, dtype=dtype), r=r, alpha=alpha)
    rng = np.random.default_rng(seed + 1)
    layer.B.data = rng.standard_normal(layer.B.shape).astype(dtype)
    layer.magnitude.data = layer.magnitude.data * (1 + 0.3 * rng.standard_normal(d)).astype(dtype)
    return layer


def x_of(shape, dtype="float64", seed=3):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def by_hand(layer, x):
    """x W'^T + b with W' = m ⊙ V / ‖V‖, V = W0 + s B A, the norm over each row (input axis)."""
    W0, b = layer.base.weight.data, layer.base.bias.data
    V = W0 + layer.scaling * layer.B.data @ layer.A.data  # (d, k)
    W = layer.magnitude.data[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)
    return x @ W.T + b


def test_output_is_the_formula_with_the_norm_over_the_input_axis():
    layer = dora_layer(d=5, k=7)  # d != k: a norm over the wrong axis has the wrong shape
    x = x_of((3, 4, 7))
    np.testing.assert_allclose(layer(x).data, by_hand(layer, x.data), rtol=1e-12, atol=1e-12)


def test_magnitude_starts_at_the_row_norms_of_w0_and_the_layer_at_its_base():
    ln.manual_seed(0)
    base = nn.Linear(7, 5, dtype="float64")
    W0 = base.weight.data.copy()
    layer = lora.DoRALinear(base, r=2, alpha=4)
    assert layer.magnitude.shape == (5,)
    np.testing.assert_allclose(layer.magnitude.data, np.linalg.norm(W0, axis=1), rtol=1e-15)
    x = x_of((4, 7))
    assert np.array_equal(layer(x).data, base(x).data)  # B = 0: exactly the base


def test_a_model_with_dora_starts_exactly_at_the_base():
    ln.manual_seed(0)
    model = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2))
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    before = model(idx)[0].data
    lora.inject(model, ["q", "v", "fc"], r=2, alpha=4, use_dora=True)
    assert np.array_equal(model(idx)[0].data, before)


def test_gradcheck_full_derivative():
    layer = dora_layer()
    a = layer.active
    x = x_of((3, 7))
    x.requires_grad_(True)
    b = layer.base.bias
    b.requires_grad_(True)

    def fn(x, A, B, m, b):
        return lora.dora_linear(x, layer.base.weight, b, A, B, m, a.scaling, detach_norm=False)

    assert gradcheck(fn, x, a.A, a.B, a.magnitude, b)


def test_gradients_with_the_norm_detached_treat_the_norm_as_a_constant():
    """PEFT (and the paper's §4.3) detach ‖W0 + s B A‖: the gradients of A, B and m are those
    of the formula with that norm frozen at its current value, which gradcheck proves."""
    layer = dora_layer()
    a, W0 = layer.active, layer.base.weight
    x = x_of((3, 7))
    frozen_norm = np.linalg.norm(W0.data + a.scaling * a.B.data @ a.A.data, axis=1)

    def with_constant_norm(x, A, B, m):
        return F.lora_linear(x, W0, None, A, B, a.scaling) * (m / frozen_norm) + layer.base.bias

    x.requires_grad_(True)
    assert gradcheck(with_constant_norm, x, a.A, a.B, a.magnitude)
    expected = [t.grad.copy() for t in (x, a.A, a.B, a.magnitude)]
    for t in (x, a.A, a.B, a.magnitude):
        t.grad = None
    weights = np.random.default_rng(9).standard_normal((3, 5))
    (layer(x) * weights).sum().backward()
    got = [t.grad for t in (x, a.A, a.B, a.magnitude)]
    for t in (x, a.A, a.B, a.magnitude):
        t.grad = None
    (with_constant_norm(x, a.A, a.B, a.magnitude) * weights).sum().backward()
    for e, g, t in zip([t.grad for t in (x, a.A, a.B, a.magnitude)], got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
        assert t.shape == e.shape


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_merged_outputs_equal_unmerged_and_unmerge_restores_w0(dtype, tol):
    layer = dora_layer(dtype=dtype)
    W0 = layer.base.weight.data.copy()
    x = x_of((4, 7), dtype=dtype)
    before = layer(x).data
    layer.merge()
    assert layer.merged
    np.testing.assert_allclose(layer(x).data, before, rtol=tol, atol=tol)
    V = W0 + layer.scaling * layer.B.data @ layer.A.data
    W = layer.magnitude.data[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)
    np.testing.assert_allclose(layer.base.weight.data, W, rtol=tol, atol=tol)
    layer.unmerge()
    np.testing.assert_allclose(layer.base.weight.data, W0, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer(x).data, before, rtol=tol, atol=tol)


def test_delta_weight_is_the_change_of_the_effective_weight():
    layer = dora_layer()
    x = x_of((4, 7))
    W0, b = layer.base.weight.data, layer.base.bias.data
    np.testing.assert_allclose(
        x.data @ (W0 + layer.delta_weight()).T + b, by_hand(layer, x.data), rtol=1e-12, atol=1e-12
    )


def test_merge_twice_and_unmerge_unmerged_are_errors():
    layer = dora_layer()
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_merge_and_unload_gives_a_plain_model_computing_the_same():
    ln.manual_seed(0)
    model = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1))
    lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=True)
    for _, layer in lora.lora_layers(model):
        layer.B.data = layer.B.data + 0.2
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    before = model(idx)[0].data
    lora.merge_and_unload(model)
    assert not lora.lora_layers(model)
    np.testing.assert_allclose(model(idx)[0].data, before, atol=2e-5)


def test_trainable_set_is_a_b_and_the_magnitude_of_the_active_adapter():
    ln.manual_seed(0)
    model = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2))
    names = lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=True)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    expected = sorted(f"{n}.adapters.default.{w}" for n in names for w in ("A", "B", "magnitude"))
    assert trainable == expected
    assert lora.count_parameters(model)[0] == len(names) * (2 * 16 + 16 * 2 + 16)
    layer = dict(model.named_modules())[names[0]]
    layer.add_adapter("other", r=1, alpha=1)
    assert not layer.adapters["other"].magnitude.requires_grad  # inactive adapters are frozen
    layer.set_adapter("other")
    assert layer.magnitude.requires_grad and not layer.adapters["default"].magnitude.requires_grad


def test_save_writes_peft_keys_and_load_adapter_restores_the_outputs(tmp_path):
    ln.manual_seed(0)
    base = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2))
    model = copy.deepcopy(base)
    names = lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=True)
    for _, layer in lora.lora_layers(model):
        layer.B.data = layer.B.data + 0.1
        layer.magnitude.data = layer.magnitude.data * 1.5
    idx = np.random.default_rng(0).integers(0, 11, (2, 6))
    expected = model(idx)[0].data
    folder = lora.save_adapter(model, tmp_path / "dora")
    config = json.loads((folder / lora.CONFIG_NAME).read_text())
    assert config["use_dora"] is True
    tensors = ln.serialization.read_safetensors(folder / lora.WEIGHTS_NAME)
    magnitudes = {k: v for k, v in tensors.items() if k.endswith("lora_magnitude_vector")}
    assert sorted(magnitudes) == [f"base_model.model.{n}.lora_magnitude_vector" for n in names]
    assert all(v.shape == (16,) for v in magnitudes.values())
    loaded = copy.deepcopy(base)
    assert lora.load_adapter(loaded, folder) == names
    assert all(isinstance(la, lora.DoRALinear) for _, la in lora.lora_layers(loaded))
    np.testing.assert_array_equal(loaded(idx)[0].data, expected)


def test_load_refuses_a_dora_file_without_magnitudes_and_a_lora_file_with_one(tmp_path):
    ln.manual_seed(0)
    base = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1))
    model = copy.deepcopy(base)
    lora.inject(model, ["q"], r=2, alpha=4, use_dora=True)
    folder = lora.save_adapter(model, tmp_path / "dora")
    weights = folder / lora.WEIGHTS_NAME
    tensors = ln.serialization.read_safetensors(weights)
    key = "base_model.model.blocks.0.attn.q.lora_magnitude_vector"
    without = {k: v for k, v in tensors.items() if k != key}
    ln.serialization.atomic_write(weights, ln.serialization.safetensors_bytes(without))
    target = copy.deepcopy(base)
    before = snapshot(target)
    with pytest.raises(ValueError, match=f"missing keys: {key}"):
        lora.load_adapter(target, folder)
    assert_same_snapshot(before, snapshot(target))
    ln.serialization.atomic_write(weights, ln.serialization.safetensors_bytes(tensors))
    config = json.loads((folder / lora.CONFIG_NAME).read_text())
    (folder / lora.CONFIG_NAME).write_text(json.dumps({**config, "use_dora": False}))
    with pytest.raises(ValueError, match=f"unexpected keys.*{key}"):
        lora.load_adapter(target, folder)
    assert_same_snapshot(before, snapshot(target))


def test_a_dora_adapter_does_not_load_into_a_lora_layer_nor_the_reverse(tmp_path):
    ln.manual_seed(0)
    base = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1))
    dora_model, lora_model = copy.deepcopy(base), copy.deepcopy(base)
    lora.inject(dora_model, ["q"], r=2, alpha=4, use_dora=True)
    lora.inject(lora_model, ["q"], r=2, alpha=4)
    dora_folder = lora.save_adapter(dora_model, tmp_path / "dora")
    lora_folder = lora.save_adapter(lora_model, tmp_path / "lora")
    for model, folder, kind in (
        (lora_model, dora_folder, "DoRA"),
        (dora_model, lora_folder, "LoRA"),
    ):
        before = snapshot(model)
        with pytest.raises(ValueError, match=f"a {kind} adapter cannot be added"):
            lora.load_adapter(model, folder, adapter_name="second")
        assert_same_snapshot(before, snapshot(model))


def test_refusals_name_what_was_expected():
    ln.manual_seed(0)
    with pytest.raises(TypeError, match="float nn.Linear, got QuantizedLinear"):
        lora.DoRALinear(QuantizedLinear(nn.Linear(64, 8)), r=2, alpha=2)
    with pytest.raises(ValueError, match="'pissa' is not supported"):
        lora.DoRALinear(nn.Linear(4, 3), r=2, alpha=2, init="pissa")
    with pytest.raises(ValueError, match=r"magnitude of shape \(3,\) expected, got \(4,\)"):
        lora.DoRALinear(
            nn.Linear(4, 3), r=1, alpha=1, weights=(np.zeros((1, 4)), np.zeros((3, 1)), np.ones(4))
        )
    with pytest.raises(ValueError, match="triple"):
        lora.DoRALinear(nn.Linear(4, 3), r=1, alpha=1, weights=(np.zeros((1, 4)), np.zeros((3, 1))))
    model = T.GPT(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1))
    before = snapshot(model)
    with pytest.raises(TypeError, match="use_dora must be True or False, got 'yes'"):
        lora.inject(model, ["q"], r=2, alpha=2, use_dora="yes")
    assert_same_snapshot(before, snapshot(model))


def test_dropout_is_only_on_the_dora_path_and_off_in_eval():
    layer = dora_layer()
    layer.adapters["default"].dropout = 0.5
    x = x_of((4, 7))
    layer.eval()
    np.testing.assert_allclose(layer(x).data, by_hand(layer, x.data), rtol=1e-12, atol=1e-12)
    layer.train()
    ln.manual_seed(1)
    trained = layer(x).data
    assert not np.allclose(trained, by_hand(layer, x.data))


def test_combining_dora_adapters_is_refused_and_changes_nothing():
    """combine_adapters builds a new s·B·A; a DoRA adapter also needs a magnitude that no
    combination of the others' defines, so a DoRA layer is refused (before any change)."""
    layer = dora_layer()
    layer.add_adapter("other", r=2, alpha=3)
    before = (layer.adapter_names, layer.base.weight.data.copy())
    with pytest.raises(ValueError, match="DoRA"):
        lora.combine_adapters(layer, ["default", "other"], [0.5, 0.5], how="linear", new_name="mix")
    assert layer.adapter_names == before[0]
    assert np.array_equal(layer.base.weight.data, before[1])


def test_hf_export_refuses_a_dora_adapter_rather_than_drop_its_magnitude(tmp_path):
    """hf.export writes A and B for the exported OPT model; a DoRA adapter exported that way
    would load in PEFT with a magnitude recomputed from W0, silently not the trained one."""
    from lora_np import hf

    ln.manual_seed(0)
    model = T.GPT(T.GPTConfig(vocab_size=16, block_size=8, n_embd=16, n_head=2, n_layer=1)).eval()
    lora.inject(model, ["q"], r=2, alpha=2, use_dora=True)
    with pytest.raises(ValueError, match="adapter 'default'.*DoRA"):
        hf.export(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_adding_an_adapter_while_merged_is_refused():
    """A new DoRA adapter's magnitude starts at ‖W0‖; while merged the base weight is W', so
    the start would be wrong. Refused, naming unmerge."""
    layer = dora_layer()
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.add_adapter("other", r=1, alpha=1)
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.delta_weight()
    assert layer.adapter_names == ["default"]
