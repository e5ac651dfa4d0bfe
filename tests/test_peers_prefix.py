"""Prefix-embedding and prefix-layer tuning (peers/prefix.py): what the model computes at
start (not the base's output on idx, and why), the trainable counts, the positions a prefix
takes, gradients, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from test_lora import assert_same_snapshot, snapshot

import lora_np as ln
from lora_np import peers
from lora_np import transformer as T
from lora_np.autograd import Tensor
from lora_np.gradcheck import gradcheck

CONFIG = T.GPTConfig(vocab_size=11, block_size=10, n_embd=16, n_head=2, n_layer=3)


def gpt(dtype="float32"):
    ln.manual_seed(0)
    model = T.GPT(CONFIG)
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def idx(T=6, seed=0):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (2, T))


@pytest.mark.parametrize("mode, tol", [("embedding", 1e-5), ("layer", 1e-5)])
def test_at_start_the_model_reads_its_prefix_tokens_before_the_input(mode, tol):
    """Not the base's output on idx: a prefix is l_p extra positions every input attends to,
    and the input moves to positions l_p.. . At start those are real tokens, so the output is
    the base's on prefix_tokens + idx, at idx's positions (up to BLAS rounding: the head
    reads fewer rows)."""
    base = gpt()
    tuned = peers.PrefixTuning(gpt(), n_prefix=3, mode=mode)
    ids = idx()
    longer = np.concatenate([np.tile(tuned.prefix_tokens, (2, 1)), ids], axis=1)
    np.testing.assert_allclose(tuned(ids)[0].data, base(longer)[0].data[:, 3:], rtol=0, atol=tol)
    assert not np.allclose(tuned(ids)[0].data, base(ids)[0].data, atol=1e-3)


@pytest.mark.parametrize("mode, per_token", [("embedding", 16), ("layer", 3 * 16)])
def test_only_the_prefix_trains_and_its_count_is_the_papers(mode, per_token):
    tuned = peers.PrefixTuning(gpt(), n_prefix=4, mode=mode)
    trainable = [(n, p.size) for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable == [("prefix", 4 * per_token)]  # C l_p, or L C l_p


def test_the_prefix_takes_positions_of_block_size():
    tuned = peers.PrefixTuning(gpt(), n_prefix=3)
    assert tuned.config.block_size == CONFIG.block_size - 3
    assert tuned(idx(T=7))[0].shape == (2, 7, 11)  # 3 + 7 = block_size: fits
    with pytest.raises(
        ValueError,
        match="input of 8 tokens does not fit: the prefix takes 3 of the model's block_size 10",
    ):
        tuned(idx(T=8))


def test_generation_crops_to_the_positions_left():
    tuned = peers.PrefixTuning(gpt(), n_prefix=3)
    tokens, _ = T.generate_tokens(tuned, [[1, 2, 3, 4, 5, 6, 7]], max_new_tokens=3)
    assert tokens.shape == (1, 10)
    np.testing.assert_array_equal(tuned.generate(np.array([[1, 2, 3, 4, 5, 6, 7]]), 3), tokens)


@pytest.mark.parametrize("mode", peers.prefix.MODES)
def test_gradcheck_through_the_prefix(mode):
    tuned = peers.PrefixTuning(gpt("float64"), n_prefix=2, mode=mode)
    targets = idx(T=4, seed=3)

    def loss(prefix):
        return tuned(idx(T=4), targets)[1]

    assert gradcheck(loss, tuned.prefix)


def test_gradcheck_prepend():
    rng = np.random.default_rng(0)
    prefix = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    x = Tensor(rng.standard_normal((4, 5, 3)), requires_grad=True)
    assert gradcheck(peers.prepend, prefix, x)
    assert peers.prepend(prefix, x).shape == (4, 7, 3)


def test_the_base_model_is_frozen_and_unchanged_by_training_the_prefix():
    model = gpt()
    tuned = peers.PrefixTuning(model, n_prefix=2)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = ln.optim.Adam([tuned.prefix], lr=0.1)
    tuned(idx(), idx(seed=4))[1].backward()
    opt.step()
    assert all(np.array_equal(p.data, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_refusals():
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"n_prefix=10 must be in \[1, block_size - 1 = 9\]"):
        peers.PrefixTuning(model, n_prefix=10)
    with pytest.raises(ValueError, match="n_prefix=0"):
        peers.PrefixTuning(model, n_prefix=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        peers.PrefixTuning(model, n_prefix=2, mode="infix")
    with pytest.raises(ValueError, match="must be an int"):
        peers.PrefixTuning(model, n_prefix=2.0)
    assert_same_snapshot(before, snapshot(model))
