"""Blockwise absmax quantisation: the round trip's contract, the stored form, packing."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import quantization


def test_round_trip_contract():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((7, 9)).astype(np.float32)  # 63 values: blocks of 16, last holds 15
    codes, scales = quantization.encode_blockwise(w, 4, 16)
    assert codes.shape == (4, 16) and codes.dtype == np.int8 and scales.dtype == np.float32
    assert np.abs(codes).max() == 7 == quantization.levels(4)
    assert np.all(codes.reshape(-1)[63:] == 0)  # the padding of the last block
    w_hat = quantization.quantize_blockwise(w, 4, 16)
    assert w_hat.shape == w.shape and w_hat.dtype == np.float32
    step = np.repeat(scales, 16)[:63].reshape(w.shape)
    assert np.all(np.abs(w - w_hat) <= step / 2 + 1e-7)  # at most half a step per weight
    flat = w.reshape(-1)
    for i, start in enumerate(range(0, 63, 16)):  # each block's largest weight is exact
        block = flat[start : start + 16]
        assert scales[i] == np.float32(np.abs(block).max() / 7)
        j = start + int(np.argmax(np.abs(block)))
        assert abs(w_hat.reshape(-1)[j] - flat[j]) < 1e-6


def test_zero_block_gives_zeros_and_a_shorter_last_block_equals_padding():
    w = np.zeros((2, 8))
    w[1] = np.linspace(-1, 1, 8)
    out = quantization.quantize_blockwise(w, 3, 8)
    assert np.array_equal(out[0], np.zeros(8)) and np.isfinite(out).all()
    v = np.random.default_rng(0).standard_normal(50)
    padded = np.concatenate([v, np.zeros(14)])
    assert np.array_equal(
        quantization.quantize_blockwise(v, 4, 16),
        quantization.quantize_blockwise(padded, 4, 16)[:50],
    )


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_and_unpack_lose_nothing(bits):
    w = np.random.default_rng(bits).standard_normal((5, 13))
    codes, _ = quantization.encode_blockwise(w, bits, 8)
    packed = quantization.pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    assert np.array_equal(quantization.unpack_codes(packed, bits, codes.size), codes.reshape(-1))


def test_backend_arrays_stay_on_the_backend():
    xp = ln.backend.xp
    w = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    got = quantization.quantize_blockwise(xp.asarray(w), 4, 8)
    assert ln.backend.array_module(got) == ln.backend.array_module(xp.asarray(w))
    assert np.array_equal(ln.to_numpy(got), quantization.quantize_blockwise(w, 4, 8))


@pytest.mark.parametrize(
    "args, phrase",
    [
        ((np.ones(4), 1, 4), "bits must be"),
        ((np.ones(4), 9, 4), "bits must be"),
        ((np.ones(4), 4.0, 4), "bits must be"),
        ((np.ones(4), 4, 0), "block_size must be"),
        ((np.ones(0), 4, 4), "empty"),
    ],
)
def test_bad_arguments_are_named(args, phrase):
    with pytest.raises(ValueError, match=phrase):
        quantization.quantize_blockwise(*args)


def test_decode_and_unpack_refuse_what_does_not_fit():
    codes, scales = quantization.encode_blockwise(np.ones(8), 4, 4)
    with pytest.raises(ValueError, match="cannot hold shape"):
        quantization.decode_blockwise(codes, scales, (3, 3))
    with pytest.raises(ValueError, match="hold at most"):
        quantization.unpack_codes(np.zeros(1, dtype=np.uint8), 4, 3)
