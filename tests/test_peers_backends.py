"""Every peer method on each array backend (numpy, numpy-strict, and cupy where a GPU is): a
forward and backward pass, DoRA's merge and PEFT file, LoRA+'s step, the peers file layout.
numpy-strict refuses host arrays as CuPy does, so a passing run proves the paths GPU-safe."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend, lora, optim, peers
from lora_np import transformer as T


@pytest.fixture
def gpt_and_ids(backend_name):
    ln.manual_seed(0)
    model = T.GPT(T.GPTConfig(vocab_size=20, block_size=12, n_embd=16, n_head=2, n_layer=2))
    ids = backend.xp.asarray(np.random.default_rng(0).integers(0, 20, (2, 5)))
    return model, ids


def test_dora_and_loraplus(gpt_and_ids, tmp_path):
    base, ids = gpt_and_ids
    model = copy.deepcopy(base)
    lora.inject(model, ["q", "v"], r=2, alpha=4, use_dora=True)
    opt = peers.create_loraplus_optimizer(model, optim.AdamW, lr=1e-2, loraplus_lr_ratio=4)
    model(ids, ids)[1].backward()
    opt.step()
    expected = backend.to_numpy(model(ids)[0].data)
    lora.merge_adapter(model)
    np.testing.assert_allclose(backend.to_numpy(model(ids)[0].data), expected, atol=1e-5)
    lora.unmerge_adapter(model)
    lora.save_adapter(model, tmp_path / "dora")
    loaded = copy.deepcopy(base)
    lora.load_adapter(loaded, tmp_path / "dora")
    np.testing.assert_array_equal(backend.to_numpy(loaded(ids)[0].data), expected)


@pytest.mark.parametrize("method", ["houlsby", "lin", "embedding", "layer", "bitfit"])
def test_forward_backward_and_saving(gpt_and_ids, backend_name, tmp_path, method):
    base, ids = gpt_and_ids
    model = copy.deepcopy(base)
    if method in ("houlsby", "lin"):
        peers.add_adapter_layers(model, method, r=4)
    elif method == "bitfit":
        peers.mark_only_bias_as_trainable(model)
    else:
        model = peers.PrefixTuning(model, n_prefix=3, mode=method)
    model(ids, ids)[1].backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(backend.array_module(p.grad) == backend_name for p in trained)
    if method != "bitfit":
        peers.save_peer(model, tmp_path / "peer.safetensors")
        loaded = peers.load_peer(copy.deepcopy(base), tmp_path / "peer.safetensors")
        np.testing.assert_array_equal(
            backend.to_numpy(loaded(ids)[0].data), backend.to_numpy(model(ids)[0].data)
        )
