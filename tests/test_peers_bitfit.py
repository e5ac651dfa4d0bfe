"""BitFit (peers/bitfit.py): exactly the biases train, the count, gradients, the refusal."""

from __future__ import annotations

import numpy as np
import pytest

import lora_np as ln
from lora_np import nn, peers
from lora_np import transformer as T
from lora_np.gradcheck import gradcheck

CONFIG = T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=3)


def test_only_the_biases_train_and_the_output_is_unchanged():
    ln.manual_seed(0)
    model = T.GPT(CONFIG)
    ids = np.random.default_rng(0).integers(0, 11, (2, 6))
    before = model(ids)[0].data
    names = peers.mark_only_bias_as_trainable(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == names and all(n.endswith(".bias") for n in names)
    C, L = CONFIG.n_embd, CONFIG.n_layer
    # per block: q, k, v, o (4 C), fc (4 C), proj (C), ln_1 and ln_2 (2 C); and ln_f (C)
    assert sum(p.size for p in model.parameters() if p.requires_grad) == L * 11 * C + C
    assert np.array_equal(model(ids)[0].data, before)


def test_gradcheck_of_a_bias():
    ln.manual_seed(0)
    model = T.GPT(CONFIG)
    for p in model.parameters():
        p.data = p.data.astype("float64")
    peers.mark_only_bias_as_trainable(model)
    ids = np.random.default_rng(0).integers(0, 11, (2, 5))
    bias = model.blocks[1].mlp.fc.bias

    def loss(bias):
        return model(ids, ids)[1]

    assert gradcheck(loss, bias)


def test_a_model_without_biases_is_refused_and_left_trainable():
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    with pytest.raises(ValueError, match="Sequential has no bias parameters"):
        peers.mark_only_bias_as_trainable(net)
    assert all(p.requires_grad for p in net.parameters())
