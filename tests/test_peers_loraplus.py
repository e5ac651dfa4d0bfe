"""LoRA+ (peers/loraplus.py): PEFT's groups, B's learning rate a multiple of A's, the steps,
and the refusals. PEFT's own optimiser is compared in tests/crosscheck/test_loraplus_peft.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora, optim, peers
from lora_np import transformer as T

CONFIG = T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2)


def lora_gpt(use_dora=False, bias="none"):
    ln.manual_seed(0)
    model = T.GPT(CONFIG)
    lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=use_dora)
    lora.mark_only_lora_as_trainable(model, bias=bias)
    for _, layer in lora.lora_layers(model):  # B off zero, so A gets a gradient too
        layer.B.data = layer.B.data + 0.1
    return model


def names_of(model, group):
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_groups_and_learning_rates_are_peft_s():
    model = lora_gpt(use_dora=True, bias="all")
    opt = peers.create_loraplus_optimizer(
        model, optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=0.1
    )
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["groupA", "groupB", "groupB_no_decay"]
    assert all(n.endswith(".A") for n in names_of(model, groups["groupA"]))
    b_names = names_of(model, groups["groupB"])
    assert sorted(n.rpartition(".")[2] for n in b_names) == sorted(["B", "magnitude"] * 4)
    assert all(n.endswith("bias") for n in names_of(model, groups["groupB_no_decay"]))
    assert (groups["groupA"]["lr"], groups["groupB"]["lr"]) == (1e-3, 16e-3)
    assert groups["groupB_no_decay"]["lr"] == 16e-3
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in opt.param_groups for p in g["params"]}


def test_a_step_moves_b_ratio_times_as_far_as_plain_adam_would():
    model = lora_gpt()
    plain = copy.deepcopy(model)
    ids = np.random.default_rng(0).integers(0, 11, (2, 6))
    opt = peers.create_loraplus_optimizer(model, optim.Adam, lr=1e-3, loraplus_lr_ratio=8)
    reference = optim.Adam([p for p in plain.parameters() if p.requires_grad], lr=1e-3)
    for m, o in ((model, opt), (plain, reference)):
        o.zero_grad()
        m(ids, ids)[1].backward()
        before = {n: p.data.copy() for n, p in m.named_parameters() if p.requires_grad}
        o.step()
        m.moved = {n: p.data - before[n] for n, p in m.named_parameters() if p.requires_grad}
    for name, moved in model.moved.items():
        ratio = 8 if name.endswith(".B") else 1  # Adam's first step is linear in lr
        np.testing.assert_allclose(moved, ratio * plain.moved[name], rtol=1e-5, atol=1e-9)


def test_refusals():
    model = lora_gpt()
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be a number > 0, got 0"):
        peers.create_loraplus_optimizer(model, optim.Adam, lr=1e-3, loraplus_lr_ratio=0)
    with pytest.raises(ValueError, match="learning rate must be a finite number >= 0, got -1"):
        peers.create_loraplus_optimizer(model, optim.Adam, lr=-1, loraplus_lr_ratio=2)
    with pytest.raises(TypeError, match="loraplus_weight_decay=0.1 instead of weight_decay"):
        peers.create_loraplus_optimizer(
            model, optim.Adam, lr=1e-3, loraplus_lr_ratio=2, weight_decay=0.1
        )
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        peers.create_loraplus_optimizer(model, optim.Adam, lr=1e-3, loraplus_lr_ratio=2)


def test_train_drives_it_and_a_schedule_keeps_b_at_ratio_times_a():
    model = lora_gpt()
    opt = peers.create_loraplus_optimizer(model, optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    rng = np.random.default_rng(0)

    def batch(step):
        ids = rng.integers(0, 11, (2, 6))
        return ids, ids

    before = {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}
    history = ln.train.train(
        model, batch, steps=4, lr=2e-3, optimizer=opt, schedule="cosine", progress=False
    )
    assert history["steps_done"] == 4
    groups = {g["name"]: g for g in opt.param_groups}
    assert opt.lr == history["lr"][-1]
    assert groups["groupB"]["lr"] == pytest.approx(16 * opt.lr) and groups["groupA"]["lr"] == opt.lr
    assert all(opt.optimizers[i].state is opt.state for i in range(len(opt.optimizers)))
    assert len(opt.state) == len(before)  # one state per trained parameter, in the shared dict
    assert all(
        not np.array_equal(p.data, before[n]) for n, p in model.named_parameters() if n in before
    )
