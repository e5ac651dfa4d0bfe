"""Blockwise absmax quantisation: a frozen weight stored in a few bits per number.

The scheme QLoRA builds on, in its plainest form. Flatten the weight and cut it into blocks of
``block_size`` consecutive values (the last block is shorter when the size is not a multiple;
padding it with zeros gives the same result, since zeros change no block's absmax). Each block
keeps one scale ``c = max|w| / L`` with ``L = 2**(bits - 1) - 1`` and integer codes

    q = round(w / c)  in  {-L, ..., L},        w_hat = c * q.

The codes are symmetric (``-L`` to ``L``, so ``2**bits - 1`` levels; the most negative value of
a ``bits``-bit integer is left unused) and each weight is off by at most half a step, ``c / 2``.
An all-zero block gets scale 0 and codes 0: its round trip is zeros, never NaN.

Functions take host NumPy arrays or the backend's arrays (CuPy on a GPU) and answer in the
same kind:

* :func:`quantize_blockwise` -- the round trip ``w_hat``, of ``w``'s shape and dtype;
* :func:`encode_blockwise` / :func:`decode_blockwise` -- the stored form (codes and scales);
* :func:`pack_codes` / :func:`unpack_codes` -- ``bits`` bits per code in a byte array.
"""

from __future__ import annotations

import math

from . import backend

__all__ = [
    "decode_blockwise",
    "encode_blockwise",
    "levels",
    "pack_codes",
    "quantize_blockwise",
    "unpack_codes",
]


def _module_of(array):
    """Host NumPy for a host array, the backend's module for a backend array."""
    return backend.np if backend.array_module(array) == "numpy" else backend.xp


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be a whole number from 2 to 8, got {bits!r}")
    return bits


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a whole number >= 1, got {block_size!r}")
    return block_size


def levels(bits: int) -> int:
    """L = 2**(bits - 1) - 1: the largest code; codes run over -L .. L."""
    return 2 ** (_check_bits(bits) - 1) - 1


def encode_blockwise(w, bits: int, block_size: int = 64) -> tuple:
    """The stored form of ``w``: integer codes and one absmax scale per block.

    Args:
        w: a float array of any shape; it is read flattened (C order).
        bits: 2 to 8. block_size: values per block, >= 1.
    Returns:
        codes: int8 (n_blocks, block_size), n_blocks = ceil(w.size / block_size); the slots
            past w.size in the last block hold 0.
        scales: (n_blocks,) of w's float dtype, max|w| / L over each block (0 for an all-zero
            block).
    """
    bits, block_size = _check_bits(bits), _check_block_size(block_size)
    xp = _module_of(w)
    if w.size == 0:
        raise ValueError("encode_blockwise: w is empty; expected at least one value")
    dtype = w.dtype if xp.issubdtype(w.dtype, xp.floating) else xp.float64
    flat = w.reshape(-1).astype(dtype)
    n_blocks = math.ceil(flat.size / block_size)
    pad = n_blocks * block_size - flat.size
    if pad:  # zeros leave the last block's absmax as it is
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=dtype)])
    blocks = flat.reshape(n_blocks, block_size)  # (n_blocks, block_size): consecutive values
    L = levels(bits)
    scales = xp.abs(blocks).max(axis=1) / L  # (n_blocks,)
    safe = xp.where(scales > 0, scales, 1)  # an all-zero block: its codes are 0 either way
    codes = xp.clip(xp.rint(blocks / safe[:, None]), -L, L).astype(xp.int8)
    return codes, scales


def decode_blockwise(codes, scales, shape) -> object:
    """w_hat = scale * code per block, cut back to ``prod(shape)`` values and reshaped.

    Args:
        codes: (n_blocks, block_size) integers; scales: (n_blocks,) floats; shape: w's shape.
    Returns:
        an array of ``shape`` in the scales' dtype.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    if codes.ndim != 2 or scales.shape != (codes.shape[0],) or not 0 < size <= codes.size:
        raise ValueError(
            f"decode_blockwise: codes {codes.shape}, scales {scales.shape} cannot hold shape "
            f"{shape}; expected codes (n_blocks, block_size) and scales (n_blocks,)"
        )
    values = codes.astype(scales.dtype) * scales[:, None]  # (n_blocks, block_size)
    return values.reshape(-1)[:size].reshape(shape)


def quantize_blockwise(w, bits: int, block_size: int = 64):
    """The round trip ``decode(encode(w))``: what the model computes with after quantisation.

    Args:
        w: a float array of any shape (blocks run over its flattened values).
        bits: 2 to 8; block_size: values per block.
    Returns:
        w_hat, of w's shape and dtype: each value replaced by its block's scale times its code.
    """
    codes, scales = encode_blockwise(w, bits, block_size)
    return decode_blockwise(codes, scales, w.shape)


def pack_codes(codes, bits: int):
    """The codes as a byte array, ``bits`` bits each (the last byte padded with zeros).

    Each code q in -L..L is stored as the unsigned number q + 2**(bits - 1), which fits in
    ``bits`` bits. Returns uint8 of ceil(codes.size * bits / 8) bytes.
    """
    bits = _check_bits(bits)
    xp = _module_of(codes)
    unsigned = (codes.reshape(-1).astype(xp.int16) + 2 ** (bits - 1)).astype(xp.uint8)
    bit_rows = xp.unpackbits(unsigned[:, None], axis=1)[:, 8 - bits :]  # (n, bits), high first
    return xp.packbits(bit_rows.reshape(-1))


def unpack_codes(packed, bits: int, count: int):
    """The first ``count`` codes of :func:`pack_codes`' bytes, as int8 (count,)."""
    bits = _check_bits(bits)
    xp = _module_of(packed)
    if count * bits > 8 * packed.size:
        raise ValueError(
            f"unpack_codes: {packed.size} bytes hold at most {8 * packed.size // bits} codes of "
            f"{bits} bits, asked for {count}"
        )
    bit_rows = xp.unpackbits(packed)[: count * bits].reshape(count, bits)  # high bit first
    weights = (2 ** xp.arange(bits - 1, -1, -1)).astype(xp.int16)  # (bits,)
    unsigned = (bit_rows.astype(xp.int16) * weights).sum(axis=1)
    return (unsigned - 2 ** (bits - 1)).astype(xp.int8)
