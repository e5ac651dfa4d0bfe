"""LoRA+ against PEFT's ``create_loraplus_optimizer`` (``make crosscheck``): the same
parameter groups with the same learning rates and decays, and the same weights after AdamW
steps on a small model, in float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_lora_peft import copy_into_peft, torch_net, twin, x_pair

import lora_np as ln
from lora_np import lora, optim, peers

pytestmark = pytest.mark.crosscheck

RENAMES = (
    (".lora_A.default.weight", ".adapters.default.A"),
    (".lora_B.default.weight", ".adapters.default.B"),
    (".lora_magnitude_vector.default.weight", ".adapters.default.magnitude"),
    (".base_layer.", ".base."),
)


def lora_np_name(peft_name: str) -> str:
    name = peft_name.removeprefix("base_model.model.")
    for theirs, ours in RENAMES:
        name = name.replace(theirs, ours)
    return name


def pair(torch, peft, use_dora):
    reference = torch_net(torch)
    model = twin(reference)
    config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["q", "v"], bias="all", use_dora=use_dora
    )
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config)
    lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=use_dora)
    lora.mark_only_lora_as_trainable(model, bias="all")
    rng = np.random.default_rng(1)
    for _, layer in lora.lora_layers(model):
        layer.B.data = 0.1 * rng.standard_normal(layer.B.shape)
    copy_into_peft(torch, model, peft_model)
    return model, peft_model


@pytest.mark.parametrize("use_dora", [False, True])
def test_groups_and_learning_rates_match_peft(torch, peft, use_dora):
    from peft.optimizers import create_loraplus_optimizer

    model, peft_model = pair(torch, peft, use_dora)
    kwargs = {"lr": 2e-3, "loraplus_lr_ratio": 16, "loraplus_weight_decay": 0.05}
    theirs = create_loraplus_optimizer(peft_model, torch.optim.AdamW, **kwargs)
    ours = peers.create_loraplus_optimizer(model, optim.AdamW, **kwargs)
    names = {id(p): lora_np_name(n) for n, p in peft_model.named_parameters()}
    mine = {id(p): n for n, p in model.named_parameters()}
    expected = [
        ([names[id(p)] for p in g["params"]], g["lr"], g["weight_decay"])
        for g in theirs.param_groups
        if g["params"]  # lora_np keeps only the non-empty groups
    ]
    got = [
        ([mine[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in ours.param_groups
    ]
    assert got == expected


def test_adamw_steps_match_peft(torch, peft):
    from peft.optimizers import create_loraplus_optimizer

    model, peft_model = pair(torch, peft, use_dora=False)
    kwargs = {"lr": 1e-2, "loraplus_lr_ratio": 8, "loraplus_weight_decay": 0.1}
    theirs = create_loraplus_optimizer(peft_model, torch.optim.AdamW, **kwargs)
    ours = peers.create_loraplus_optimizer(model, optim.AdamW, **kwargs)
    x, tx = x_pair(torch)
    target = np.random.default_rng(2).standard_normal((7, 5))
    for _ in range(5):
        theirs.zero_grad()
        ((peft_model(tx) - torch.from_numpy(target)) ** 2).mean().backward()
        theirs.step()
        ours.zero_grad()
        ((model(ln.Tensor(x)) - target) ** 2).mean().backward()
        ours.step()
    mine = dict(model.named_parameters())
    for name, p in peft_model.named_parameters():
        np.testing.assert_allclose(
            mine[lora_np_name(name)].data, p.detach().numpy(), atol=1e-10, rtol=1e-10
        )
