"""DoRALinear against PEFT's ``use_dora=True`` LoRA (``make crosscheck``), in float64: the
magnitude's start (which axis the norm runs over), outputs, the gradients of A, B and the
magnitude, merged weights, and adapter folders read both ways."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_lora_peft import copy_into_peft, peft_layers, random_adapters, torch_net, twin, x_pair

import lora_np as ln
from lora_np import lora

pytestmark = pytest.mark.crosscheck

TARGETS = ["q", "head"]  # head is (5, 12): a norm over the wrong axis has the wrong shape


def dora_pair(torch, peft):
    """(lora_np model, PEFT model) with the same W0, A, B and magnitudes (all random)."""
    reference = torch_net(torch)
    model = twin(reference)
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, use_dora=True)
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config)
    lora.inject(model, TARGETS, r=4, alpha=6, use_dora=True)
    layers = peft_layers(peft_model)
    for name, layer in lora.lora_layers(model):  # the start, before anything is randomised
        np.testing.assert_allclose(
            layer.magnitude.data,
            layers[name].lora_magnitude_vector["default"].weight.detach().numpy(),
            rtol=1e-14,
        )
    random_adapters(model)
    copy_into_peft(torch, model, peft_model)
    rng = np.random.default_rng(8)
    with torch.no_grad():
        for name, layer in lora.lora_layers(model):
            layer.magnitude.data = layer.magnitude.data * (1 + 0.5 * rng.random(layer.out_features))
            magnitude = layers[name].lora_magnitude_vector["default"].weight
            magnitude.copy_(torch.from_numpy(layer.magnitude.data))
    return model, peft_model


def test_outputs_and_gradients_match_peft(torch, peft):
    model, peft_model = dora_pair(torch, peft)
    x, tx = x_pair(torch)
    weights = np.random.default_rng(5).standard_normal((7, 5))
    out_torch = peft_model(tx)
    (out_torch * torch.from_numpy(weights)).sum().backward()
    out = model(ln.Tensor(x))
    np.testing.assert_allclose(out.data, out_torch.detach().numpy(), atol=1e-10, rtol=0)
    (out * weights).sum().backward()
    layers = peft_layers(peft_model)
    for name, layer in lora.lora_layers(model):
        theirs = layers[name]
        for mine, param in (
            (layer.A, theirs.lora_A["default"].weight),
            (layer.B, theirs.lora_B["default"].weight),
            (layer.magnitude, theirs.lora_magnitude_vector["default"].weight),
        ):
            np.testing.assert_allclose(mine.grad, param.grad.numpy(), atol=1e-10, rtol=1e-10)


def test_trainable_counts_match_peft(torch, peft):
    model, peft_model = dora_pair(torch, peft)
    assert lora.count_parameters(model) == peft_model.get_nb_trainable_parameters()


def test_merged_weights_match_peft(torch, peft):
    model, peft_model = dora_pair(torch, peft)
    merged_torch = peft_model.merge_and_unload()
    merged = lora.merge_and_unload(model)
    mine = dict(merged.named_parameters())
    for name, p in merged_torch.named_parameters():
        np.testing.assert_allclose(mine[name].data, p.detach().numpy(), atol=1e-10, rtol=0)


def test_adapter_folders_read_both_ways(torch, peft, tmp_path):
    model, peft_model = dora_pair(torch, peft)
    x, tx = x_pair(torch)
    with torch.no_grad():
        expected = peft_model(tx).numpy()
    peft_model.save_pretrained(tmp_path / "from_peft")
    ours = twin(torch_net(torch))
    lora.load_adapter(ours, tmp_path / "from_peft")
    np.testing.assert_allclose(ours(ln.Tensor(x)).data, expected, atol=1e-10, rtol=0)

    lora.save_adapter(model, tmp_path / "from_lora_np")
    loaded = peft.PeftModel.from_pretrained(torch_net(torch), tmp_path / "from_lora_np")
    with torch.no_grad():
        np.testing.assert_allclose(loaded(tx).numpy(), expected, atol=1e-10, rtol=0)
