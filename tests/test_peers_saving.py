"""lora_np's own layout for adapter layers and prefixes (peers/saving.py): round trips, only
the method's tensors, what is not a peers file, a model that does not fit (left unchanged),
and a save that touches nothing else."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from test_lora import assert_same_snapshot, snapshot

import lora_np as ln
from lora_np import lora, peers, serialization
from lora_np import transformer as T

CONFIG = T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2)


def gpt(config=CONFIG):
    ln.manual_seed(0)
    return T.GPT(config)


def trained(model, seed=1):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.dtype)
    return model


def adapted(kind):
    model = gpt()
    if kind in ("houlsby", "lin"):
        peers.add_adapter_layers(model, kind, r=4)
        return trained(model)
    return trained(peers.PrefixTuning(model, n_prefix=2, mode=kind))


@pytest.mark.parametrize("kind", ["houlsby", "lin", "embedding", "layer"])
def test_round_trip_restores_the_outputs_and_holds_only_the_method(kind, tmp_path):
    model = adapted(kind)
    ids = np.random.default_rng(0).integers(0, 11, (2, 5))
    path = peers.save_peer(model, tmp_path / "peer.safetensors")
    tensors, meta = serialization.read_weights(path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(tensors) == trainable
    assert meta["format"] == "lora_np.peers"
    loaded = peers.load_peer(gpt(), path)
    np.testing.assert_array_equal(loaded(ids)[0].data, model(ids)[0].data)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trainable


def test_a_model_of_another_shape_is_refused_and_left_unchanged(tmp_path):
    path = peers.save_peer(adapted("houlsby"), tmp_path / "peer.safetensors")
    other = gpt(T.GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=3))
    before = snapshot(other)
    with pytest.raises(ValueError, match="cannot load .*blocks.2"):
        peers.load_peer(other, path)
    assert_same_snapshot(before, snapshot(other))


def test_files_that_are_not_peers_files_are_refused(tmp_path):
    model = gpt()
    ln.manual_seed(0)
    lora_model = copy.deepcopy(model)
    lora.inject(lora_model, ["q"], r=2, alpha=2)
    with pytest.raises(ValueError, match="neither adapter layers nor a prefix"):
        peers.save_peer(lora_model, tmp_path / "x.safetensors")
    model.save(tmp_path / "gpt.safetensors")
    with pytest.raises(ValueError, match="not a lora_np peers file"):
        peers.load_peer(gpt(), tmp_path / "gpt.safetensors")
    bad = tmp_path / "bad.safetensors"
    meta = {"format": "lora_np.peers", "settings": json.dumps({"method": "prefix", "mode": "x"})}
    # one tensor: safetensors 0.4.0 (our lowest) writes an invalid header for an empty file
    one = {"x": np.zeros(1, np.float32)}
    serialization.atomic_write(bad, serialization.safetensors_bytes(one, meta))
    with pytest.raises(ValueError, match="cannot load"):
        peers.load_peer(gpt(), bad)


def test_a_save_touches_nothing_else_in_the_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    peers.save_peer(adapted("lin"), tmp_path / "peer.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "peer.safetensors"]
    assert (tmp_path / "notes.txt").read_text() == "keep"
