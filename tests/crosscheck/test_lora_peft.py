"""LoRALinear and the adapter files against Hugging Face PEFT (``make crosscheck``).

The same W0, A and B go into lora_np and into PEFT's LoRA for a PyTorch model with the same
module names; outputs, scaling and merged weights must agree to 1e-10 in float64. The
initialisations must have PEFT's distribution, and adapter folders must read both ways.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

import lora_np as ln
from lora_np import lora, nn

pytestmark = pytest.mark.crosscheck

C, OUT = 12, 5


class Net(nn.Module):
    """lora_np twin of the PyTorch model: q, v (C -> C) and head (C -> OUT)."""

    def __init__(self, dtype="float64"):
        super().__init__()
        self.q = nn.Linear(C, C, dtype=dtype)
        self.v = nn.Linear(C, C, dtype=dtype)
        self.head = nn.Linear(C, OUT, dtype=dtype)

    def forward(self, x):
        x = x + self.q(x) * self.v(x)
        return self.head(x)


def torch_net(torch, dtype=None):
    dtype = dtype or torch.float64

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(C, C)
            self.v = torch.nn.Linear(C, C)
            self.head = torch.nn.Linear(C, OUT)

        def forward(self, x):
            x = x + self.q(x) * self.v(x)
            return self.head(x)

    torch.manual_seed(0)
    return TorchNet().to(dtype)


def twin(torch_model, dtype="float64"):
    """A lora_np Net with the torch model's weights."""
    model = Net(dtype)
    for name, p in torch_model.named_parameters():
        dict(model.named_parameters())[name].data = p.detach().numpy().astype(dtype)
    return model


def peft_layers(peft_model):
    return {
        name.removeprefix("base_model.model."): m
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A")
    }


def x_pair(torch, dtype="float64"):
    x = np.random.default_rng(3).standard_normal((7, C)).astype(dtype)
    return x, torch.from_numpy(x)


def random_adapters(model, seed=4):
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        layer.A.data = rng.standard_normal(layer.A.shape)
        layer.B.data = rng.standard_normal(layer.B.shape)


def copy_into_peft(torch, model, peft_model, adapter="default"):
    layers = peft_layers(peft_model)
    with torch.no_grad():
        for name, layer in lora.lora_layers(model):
            layers[name].lora_A[adapter].weight.copy_(torch.from_numpy(layer.A.data))
            layers[name].lora_B[adapter].weight.copy_(torch.from_numpy(layer.B.data))


@pytest.mark.parametrize("rslora", [False, True])
def test_outputs_scaling_and_merged_weights_match_peft(torch, peft, rslora):
    reference = torch_net(torch)
    model = twin(reference)
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["q", "v"], use_rslora=rslora)
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config)
    lora.inject(model, ["q", "v"], r=4, alpha=6, rslora=rslora)
    random_adapters(model)
    copy_into_peft(torch, model, peft_model)

    for name, layer in lora.lora_layers(model):
        assert layer.scaling == pytest.approx(
            peft_layers(peft_model)[name].scaling["default"], rel=1e-15
        )
    assert lora.lora_layers(model)[0][1].scaling == (6 / 2 if rslora else 6 / 4)

    x, tx = x_pair(torch)
    with torch.no_grad():
        expected = peft_model(tx).numpy()
    np.testing.assert_allclose(model(ln.Tensor(x)).data, expected, atol=1e-10, rtol=0)
    # disabling gives the base model on both sides
    with torch.no_grad(), peft_model.disable_adapter():
        base_expected = peft_model(tx).numpy()
    with lora.disable_adapters(model):
        np.testing.assert_allclose(model(ln.Tensor(x)).data, base_expected, atol=1e-10, rtol=0)
    # trainable-parameter counts and PEFT's summary line
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert lora.count_parameters(model) == (trainable, total)

    merged_torch = peft_model.merge_and_unload()
    merged = lora.merge_and_unload(model)
    for name, p in merged_torch.named_parameters():
        np.testing.assert_allclose(
            dict(merged.named_parameters())[name].data, p.detach().numpy(), atol=1e-10, rtol=0
        )


def test_trainable_summary_is_peft_line(torch, peft, capsys):
    reference = torch_net(torch)
    model = twin(reference)
    peft_model = peft.get_peft_model(
        copy.deepcopy(reference), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["v", "head"])
    )
    lora.inject(model, ["v", "head"], r=2, alpha=2)
    peft_model.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == lora.trainable_summary(model)


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_initialisation_has_peft_distribution(torch, peft, init):
    k, d, r = 1024, 256, 32
    ln.manual_seed(0)
    ours = lora.LoRALinear(nn.Linear(k, d), r=r, alpha=r, init=init)
    torch.manual_seed(0)
    theirs_model = peft.get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(k, d)),
        peft.LoraConfig(
            r=r,
            lora_alpha=r,
            target_modules=["0"],
            init_lora_weights=True if init == "kaiming" else "gaussian",
        ),
    )
    layer = peft_layers(theirs_model)["0"]
    theirs_A = layer.lora_A["default"].weight.detach().numpy()
    assert not layer.lora_B["default"].weight.detach().numpy().any() and not ours.B.data.any()
    A = ours.A.data
    assert A.shape == theirs_A.shape and A.dtype == theirs_A.dtype
    assert A.std() == pytest.approx(theirs_A.std(), rel=0.03)
    assert abs(A.mean() - theirs_A.mean()) < 0.02 * theirs_A.std()
    # 32,768 draws each: a quantile's standard error is about 1% of the std, so 6% is ~5 sigma
    # for the difference, yet a wrong bound or a wrong shape of distribution fails
    quantiles = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    np.testing.assert_allclose(
        np.quantile(A, quantiles), np.quantile(theirs_A, quantiles), atol=0.06 * theirs_A.std()
    )
    if init == "kaiming":
        bound = 1 / math.sqrt(k)
        assert np.abs(A).max() <= bound and np.abs(theirs_A).max() <= bound
    else:
        assert A.std() == pytest.approx(1 / r, rel=0.03)


def test_pissa_matches_peft(torch, peft):
    reference = torch_net(torch, torch.float32)
    model = twin(reference, "float32")
    peft_model = peft.get_peft_model(
        copy.deepcopy(reference),
        peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q"], init_lora_weights="pissa"),
    )
    lora.inject(model, ["q"], r=3, alpha=6, init="pissa")
    theirs = peft_layers(peft_model)["q"]
    ours = model.get_submodule("q")
    # singular vectors are defined up to sign, their product B·A is not
    theirs_delta = (theirs.get_delta_weight("default")).detach().numpy()
    np.testing.assert_allclose(ours.delta_weight(), theirs_delta, atol=2e-5)
    np.testing.assert_allclose(
        ours.base.weight.data, theirs.base_layer.weight.detach().numpy(), atol=2e-5
    )
    x, tx = x_pair(torch, "float32")
    with torch.no_grad():
        np.testing.assert_allclose(model(ln.Tensor(x)).data, peft_model(tx).numpy(), atol=2e-5)


def test_saved_files_have_peft_names_and_read_both_ways(torch, peft, tmp_path):
    reference = torch_net(torch)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q", "head"], use_rslora=True)
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config)
    model = twin(reference)
    lora.inject(model, ["q", "head"], r=2, alpha=4, rslora=True)
    random_adapters(model)
    copy_into_peft(torch, model, peft_model)

    peft_model.save_pretrained(tmp_path / "peft")
    lora.save_adapter(model, tmp_path / "ours")
    theirs_keys = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    ours_keys = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(ours_keys) == sorted(theirs_keys)
    for key, array in theirs_keys.items():
        np.testing.assert_array_equal(ours_keys[key], array)

    theirs_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours_config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert set(ours_config) <= set(theirs_config), set(ours_config) - set(theirs_config)
    for key in ours_config:
        if key == "target_modules":
            assert sorted(ours_config[key]) == sorted(theirs_config[key])
        else:
            assert ours_config[key] == theirs_config[key], key

    x, tx = x_pair(torch)
    with torch.no_grad():
        expected = peft_model(tx).numpy()
    # PEFT's folder into lora_np
    fresh = twin(reference)
    lora.load_adapter(fresh, tmp_path / "peft")
    np.testing.assert_allclose(fresh(ln.Tensor(x)).data, expected, atol=1e-10, rtol=0)
    # lora_np's folder into PEFT
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path / "ours")
    with torch.no_grad():
        np.testing.assert_allclose(loaded(tx).numpy(), expected, atol=1e-10, rtol=0)
