"""Adapter layers (peers/adapters.py): the identity at start, placement, the paper's parameter
count, gradients, the two extra products per adapter, and the refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_lora import assert_same_snapshot, snapshot

import lora_np as ln
from lora_np import functional as F
from lora_np import peers
from lora_np import transformer as T
from lora_np.autograd import Tensor
from lora_np.gradcheck import gradcheck

CONFIG = T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=3)


def gpt(dtype="float32"):
    ln.manual_seed(0)
    model = T.GPT(CONFIG)
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def idx(seed=0):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (2, 6))


def randomise(model, seed=1):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.dtype)


@pytest.mark.parametrize("kind", peers.adapters.KINDS)
def test_adapters_start_as_the_identity_so_the_model_is_the_base(kind):
    model = gpt()
    before = model(idx())[0].data
    peers.add_adapter_layers(model, kind, r=4)
    assert np.array_equal(model(idx())[0].data, before)


@pytest.mark.parametrize("kind", peers.adapters.KINDS)
def test_trainable_count_is_the_papers_formula(kind):
    model = gpt()
    trainable = peers.add_adapter_layers(model, kind, r=4)
    C, L, r = CONFIG.n_embd, CONFIG.n_layer, 4
    count = sum(p.size for p in model.parameters() if p.requires_grad)
    # H: 2 adapters and 2 LayerNorms per block; L: 1 adapter with its own LayerNorm per block
    by_hand = (
        L * (2 * (2 * C * r + r + C) + 2 * 2 * C)
        if kind == "houlsby"
        else L * (2 * C * r + r + C + 2 * C)
    )
    assert count == by_hand == peers.adapter_layer_count(L, C, r, kind)
    assert all(".adapter." in n or ".ln_" in n for n in trainable)
    if kind == "lin":
        assert not any(".attn." in n for n in trainable)


def test_houlsby_puts_an_adapter_after_attention_and_the_mlp_before_each_residual_add():
    model = gpt("float64")
    peers.add_adapter_layers(model, "houlsby", r=4)
    randomise(model)
    block = model.blocks[0]
    x = Tensor(np.random.default_rng(2).standard_normal((2, 5, 16)))
    h = x.data + block.attn.adapter(block.attn.base(block.ln_1(x))).data
    h = h + block.mlp.adapter(block.mlp.base(block.ln_2(Tensor(h)))).data
    np.testing.assert_allclose(block(x).data, h, rtol=1e-12)


def test_lin_normalises_the_mlp_output_inside_its_adapter():
    model = gpt("float64")
    peers.add_adapter_layers(model, "lin", r=4)
    randomise(model)
    adapter = model.blocks[0].mlp.adapter
    h = np.random.default_rng(2).standard_normal((3, 16))
    z = adapter.norm(Tensor(h)).data
    expected = (
        h
        + np.maximum(z @ adapter.down.weight.data.T + adapter.down.bias.data, 0)
        @ adapter.up.weight.data.T
        + adapter.up.bias.data
    )
    np.testing.assert_allclose(adapter(Tensor(h)).data, expected, rtol=1e-12)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_gradcheck_bottleneck_adapter(layer_norm, activation):
    ln.manual_seed(0)
    adapter = peers.BottleneckAdapter(6, 3, activation, layer_norm)
    rng = np.random.default_rng(0)
    for p in adapter.parameters():  # float64, and up moved off zero so every path counts
        p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype("float64")
    h = Tensor(rng.standard_normal((2, 4, 6)), requires_grad=True)
    params = list(adapter.parameters())

    def fn(h, *_):
        return adapter(h)

    assert gradcheck(fn, h, *params)


def test_gradcheck_through_the_adapted_model():
    model = gpt("float64")
    peers.add_adapter_layers(model, "houlsby", r=2)
    randomise(model)
    targets = idx(5)
    up = model.blocks[1].mlp.adapter.up.weight

    def loss(up):
        return model(idx(), targets)[1]

    assert gradcheck(loss, up)


@pytest.mark.parametrize("kind, extra", [("houlsby", 4), ("lin", 2)])
def test_each_adapter_adds_two_matrix_products_per_forward(monkeypatch, kind, extra):
    model = gpt()
    calls = []
    original = F._mm
    monkeypatch.setattr(F, "_mm", lambda a, b: calls.append(1) or original(a, b))
    model(idx())
    base_products = len(calls)
    peers.add_adapter_layers(model, kind, r=4)
    calls.clear()
    model(idx())
    assert len(calls) == base_products + extra * CONFIG.n_layer


def test_refusals_leave_the_model_unchanged():
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match="kind must be one of .*got 'pfeiffer'"):
        peers.add_adapter_layers(model, "pfeiffer", r=4)
    with pytest.raises(ValueError, match=r"r must be an int in \[1, n_embd=16\], got 17"):
        peers.add_adapter_layers(model, "lin", r=17)
    with pytest.raises(ValueError, match="activation must be one of"):
        peers.add_adapter_layers(model, "lin", r=4, activation="swish")
    assert_same_snapshot(before, snapshot(model))
    peers.add_adapter_layers(model, "lin", r=4)
    again = snapshot(model)
    with pytest.raises(ValueError, match="already has adapter layers"):
        peers.add_adapter_layers(model, "houlsby", r=4)
    assert_same_snapshot(again, snapshot(model))


def test_the_copy_of_the_model_is_untouched():
    base = gpt()
    model = copy.deepcopy(base)
    peers.add_adapter_layers(model, "houlsby", r=4)
    assert all(p.requires_grad for p in base.parameters())
