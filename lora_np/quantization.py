"""Quantised weights: a frozen weight stored in a few bits per number (the QLoRA base).

Two code books, one blockwise scheme. Flatten the weight (C order) and cut it into blocks of
``block_size`` consecutive values (the last block is shorter when the size is not a multiple;
padding it with zeros gives the same result, since zeros change no block's absmax). Each block
keeps one scale and every value becomes the index of a code-book entry.

**absmax** (integers). The scale is ``c = max|w| / L`` with ``L = 2**(bits - 1) - 1`` and the
codes are integers

    q = round(w / c)  in  {-L, ..., L},        w_hat = c * q.

They are symmetric (``-L`` to ``L``, so ``2**bits - 1`` levels; the most negative value of a
``bits``-bit integer is left unused) and each weight is off by at most half a step, ``c / 2``.
An all-zero block gets scale 0 and codes 0: its round trip is zeros, never NaN.

**nf4** (QLoRA's 4-bit NormalFloat, Dettmers et al. 2023, arXiv:2305.14314). The scale is
``c = max|w|`` and each value ``w / c`` in [-1, 1] is replaced by the nearest of 16 fixed
levels spaced like the quantiles of a normal distribution: dense near 0, where most weights of
a trained layer sit, sparse in the tails (:func:`nf4_code_book` builds them).

**Double quantisation** (QLoRA). One float32 scale per 64 weights costs 32 / 64 = 0.5 bits per
weight. :func:`double_quantize` stores those scales as 8-bit codes instead, in blocks of 256
scales with one float32 scale each, after subtracting their mean: about
8 / 64 + 32 / (64 * 256) = 0.127 bits per weight.

Functions take host NumPy arrays or the backend's arrays (CuPy on a GPU) and answer in the
same kind:

* :func:`quantize_blockwise` -- the absmax round trip ``w_hat``, of ``w``'s shape and dtype;
* :func:`encode_blockwise` / :func:`decode_blockwise` -- absmax's stored form (codes, scales);
* :func:`pack_codes` / :func:`unpack_codes` -- ``bits`` bits per code in a byte array;
* :func:`nf4_code_book`, :data:`NF4`, :func:`encode_nf4` / :func:`decode_nf4` /
  :func:`quantize_nf4` -- the same for NF4 (codes are indices 0..15 into :data:`NF4`);
* :func:`double_quantize` / :func:`double_dequantize` -- the block scales in 8 bits;
* :func:`pack_indices` / :func:`unpack_indices` -- level indices (0 .. 2**bits - 1) in bytes,
  two 4-bit indices per byte.

:mod:`lora_np.quantized` puts these together: a weight's complete stored form, a Linear layer
that keeps only that form in memory, and whole-model quantisation.
"""

from __future__ import annotations

import math
import statistics

from . import backend

__all__ = [
    "KINDS",
    "NF4",
    "NF4_OFFSET",
    "code_book",
    "decode_blockwise",
    "decode_nf4",
    "double_dequantize",
    "double_quantize",
    "encode_blockwise",
    "encode_nf4",
    "levels",
    "nf4_code_book",
    "pack_codes",
    "pack_indices",
    "quantize_blockwise",
    "quantize_nf4",
    "unpack_codes",
    "unpack_indices",
]

KINDS = ("nf4", "absmax")
"""The code books :func:`quantize_weight` knows."""


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be a whole number from 2 to 8, got {bits!r}")
    return bits


def check_block_size(block_size) -> int:
    """``block_size`` itself when it is a whole number >= 1; else ValueError naming it."""
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
    bits, block_size = _check_bits(bits), check_block_size(block_size)
    xp = backend.module_of(w)
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
    ``bits`` bits (:func:`pack_indices`). Returns uint8 of ceil(codes.size * bits / 8) bytes.
    """
    bits = _check_bits(bits)
    xp = backend.module_of(codes)
    return pack_indices((codes.reshape(-1).astype(xp.int16) + 2 ** (bits - 1)), bits)


def unpack_codes(packed, bits: int, count: int):
    """The first ``count`` codes of :func:`pack_codes`' bytes, as int8 (count,)."""
    bits = _check_bits(bits)
    unsigned = unpack_indices(packed, bits, count).astype(backend.module_of(packed).int16)
    return (unsigned - 2 ** (bits - 1)).astype(backend.module_of(packed).int8)


# ============================================================================ NF4


NF4_OFFSET = 0.9677083
"""The probability of NF4's outermost level: bitsandbytes' value (``create_normal_map``)."""


def nf4_code_book(offset: float = NF4_OFFSET):
    """The 16 levels of NF4, ascending: host float32 (16,), from -1 to 1, with 0 at index 7.

    How they are built. Blockwise absmax scales a block of a trained layer into [-1, 1], and
    such weights are roughly normal, so levels placed at quantiles of a normal distribution
    (equal probability between neighbours) spend the 16 codes where the weights are: dense near
    0, sparse in the tails. Two constraints shape the set:

    * 0 must be a level, so a zero weight (and the padding of a block) comes back exactly 0.
      Sixteen is even, so the levels cannot be symmetric about 0: NF4 has 8 positive levels,
      7 negative ones and 0.
    * A normal distribution has no last quantile (probability 1 lies at infinity), so the
      outermost level is the quantile at ``offset`` < 1.

    So: the positive levels are the standard-normal quantiles at 8 probabilities spaced evenly
    above 0.5 up to ``offset`` (0.5 itself, the median 0, excluded); the negative levels are the
    same construction with 7 probabilities, mirrored; add 0 and divide all by the largest level
    (the quantile at ``offset``), so both -1 and 1 are levels.

    ``offset = 0.9677083`` is bitsandbytes' value (its source says it was chosen empirically;
    to its 7 decimals it is the midpoint of 1 - 1/(2*15) and 1 - 1/(2*16)). The quantiles are
    ``statistics.NormalDist().inv_cdf`` in double precision, rounded to float32 at the end; they
    agree with the float32 table bitsandbytes ships (``get_4bit_type("nf4")``) to about 1e-7,
    float32 rounding (tested); bitsandbytes spaces its probabilities in float32, not double.
    """
    if not (isinstance(offset, float | int) and not isinstance(offset, bool) and 0.5 < offset < 1):
        raise ValueError(f"offset must be a probability in (0.5, 1), got {offset!r}")
    normal = statistics.NormalDist()  # N(0, 1)
    step_up, step_down = (offset - 0.5) / 8, (offset - 0.5) / 7
    positive = [normal.inv_cdf(0.5 + i * step_up) for i in range(1, 9)]  # 8 levels > 0
    negative = [-normal.inv_cdf(0.5 + i * step_down) for i in range(1, 8)]  # 7 levels < 0
    levels_ = backend.np.sort(backend.np.array(negative + [0.0] + positive))  # (16,) float64
    return (levels_ / levels_[-1]).astype(backend.np.float32)


NF4 = nf4_code_book()
"""NF4's 16 levels (host float32, ascending; read-only). Index 7 is 0, index 15 is 1."""
NF4.flags.writeable = False


def code_book(kind: str, bits: int = 4):
    """The levels an index stands for (host float32, (2**bits,), ascending).

    "nf4": :data:`NF4`. "absmax": the integers ``i - 2**(bits - 1)``; index 0 (the most negative
    integer) is never used, since absmax codes run over -L..L.
    """
    kind, bits = check_kind(kind, bits)
    if kind == "nf4":
        return NF4
    return (backend.np.arange(2**bits) - 2 ** (bits - 1)).astype(backend.np.float32)


def check_kind(kind, bits) -> tuple:
    """(kind, bits) when ``kind`` is in :data:`KINDS` and ``bits`` fits it; else ValueError."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantisation kind {kind!r}; expected one of {KINDS}")
    if kind == "nf4" and (isinstance(bits, bool) or bits != 4):
        raise ValueError(f"nf4 is a 4-bit code book (16 levels); bits must be 4, got {bits!r}")
    return kind, _check_bits(bits)


def _blocks(w, block_size: int, who: str):
    """w flattened, zero-padded and cut into (n_blocks, block_size), in w's float dtype."""
    block_size = check_block_size(block_size)
    xp = backend.module_of(w)
    if w.size == 0:
        raise ValueError(f"{who}: w is empty; expected at least one value")
    if w.dtype.kind != "f":
        raise TypeError(f"{who}: w must be a float array, got dtype {w.dtype}")
    flat = w.reshape(-1)
    if not bool(xp.isfinite(flat).all()):
        raise ValueError(f"{who}: w holds NaN or infinite values; only finite weights quantise")
    n_blocks = math.ceil(flat.size / block_size)
    pad = n_blocks * block_size - flat.size
    if pad:  # zeros leave the last block's absmax as it is (and map to the level 0)
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(n_blocks, block_size)


def encode_nf4(w, block_size: int = 64) -> tuple:
    """NF4's stored form of ``w``: a level index per value and one absmax per block.

    Each block is divided by its largest |value| (so it lies in [-1, 1]) and every value is
    replaced by the index of the nearest NF4 level (a value exactly halfway between two levels
    takes the lower one).

    Args:
        w: a finite float array of any shape, read flattened (C order).
        block_size: values per block, >= 1 (QLoRA: 64).
    Returns:
        indices: uint8 (n_blocks, block_size), each in 0..15 (padding slots hold 7, the 0 level).
        absmax: (n_blocks,) of w's dtype, max|w| per block (0 for an all-zero block).
    """
    xp = backend.module_of(w)
    blocks = _blocks(w, block_size, "encode_nf4")  # (n_blocks, block_size)
    absmax = xp.abs(blocks).max(axis=1)  # (n_blocks,)
    safe = xp.where(absmax > 0, absmax, 1)  # an all-zero block maps to the level 0 either way
    book = xp.asarray(NF4, dtype=blocks.dtype)
    return _nearest(blocks / safe[:, None], book, xp), absmax


def _nearest(values, book, xp):
    """uint8 index of the nearest level of ``book`` (ascending) for every value."""
    midpoints = (book[1:] + book[:-1]) / 2  # (n - 1,): the decision boundaries
    return xp.searchsorted(midpoints, values, side="left").astype(xp.uint8)


def decode_nf4(indices, absmax, shape):
    """w_hat = NF4[index] * absmax per block, cut to ``prod(shape)`` values and reshaped.

    Args:
        indices: (n_blocks, block_size) integers in 0..15; absmax: (n_blocks,) floats.
    Returns:
        an array of ``shape`` in absmax's dtype.
    """
    xp = backend.module_of(absmax)
    book = xp.asarray(NF4, dtype=absmax.dtype)
    return _decode(xp.take(book, indices.astype(xp.intp)), absmax, shape, "decode_nf4")


def _decode(levels_, scales, shape, who: str):
    """levels (n_blocks, block_size) times their block's scale, cut back to ``shape``."""
    shape = tuple(shape)
    size = math.prod(shape)
    if levels_.ndim != 2 or scales.shape != (levels_.shape[0],) or not 0 < size <= levels_.size:
        raise ValueError(
            f"{who}: indices {levels_.shape}, scales {scales.shape} cannot hold shape {shape}; "
            "expected indices (n_blocks, block_size) and scales (n_blocks,)"
        )
    return (levels_ * scales[:, None]).reshape(-1)[:size].reshape(shape)


def quantize_nf4(w, block_size: int = 64):
    """The NF4 round trip ``decode_nf4(encode_nf4(w))``, of w's shape and dtype."""
    indices, absmax = encode_nf4(w, block_size)
    return decode_nf4(indices, absmax, w.shape)


# ============================================================================ double quantisation


def double_quantize(scales, block_size: int = 256) -> tuple:
    """The block scales in 8 bits each instead of 32 (QLoRA's double quantisation).

    The scales are all >= 0 and close to each other, so they are centred on their mean first:
    the 8-bit codes then spend their range on the spread, not on the common part. The centred
    scales are absmax-quantised with 8-bit integer codes (:func:`encode_blockwise`, codes in
    -127..127) in blocks of ``block_size`` scales, one float32 scale per block. Each scale comes
    back off by at most half a step, ``max|centred block| / 254``. (bitsandbytes codes the
    centred scales with its own 8-bit "dynamic" float code rather than integers; the layout --
    mean removed, blocks of 256, one float32 per block -- is the same.)

    Args:
        scales: (n,) floats. block_size: scales per second-level block, >= 1 (QLoRA: 256).
    Returns:
        codes: int8 (n,); second: float32 (ceil(n / block_size),); offset: float32 (1,), the mean.
    """
    xp = backend.module_of(scales)
    if scales.ndim != 1:
        raise ValueError(f"double_quantize: scales must be 1-D (n,), got shape {scales.shape}")
    scales = scales.astype(xp.float32)
    offset = scales.astype(xp.float64).mean().astype(xp.float32).reshape(1)  # (1,)
    codes, second = encode_blockwise(scales - offset, 8, block_size)  # (m, block_size), (m,)
    return codes.reshape(-1)[: scales.size], second, offset


def double_dequantize(codes, second, offset, block_size: int = 256):
    """The float32 scales (n,) back from :func:`double_quantize`'s codes, second scales, offset."""
    block_size = check_block_size(block_size)
    xp = backend.module_of(second)
    n = codes.size
    m = math.ceil(n / block_size)
    if codes.ndim != 1 or second.shape != (m,) or offset.shape != (1,):
        raise ValueError(
            f"double_dequantize: codes {codes.shape}, second {second.shape}, offset "
            f"{offset.shape} do not fit blocks of {block_size}; expected (n,), "
            f"(ceil(n / {block_size}),), (1,)"
        )
    pad = m * block_size - n
    if pad:
        codes = xp.concatenate([codes, xp.zeros(pad, dtype=codes.dtype)])
    centred = decode_blockwise(codes.reshape(m, block_size), second, (n,))  # (n,) float32
    return centred + offset


# ============================================================================ index packing


def pack_indices(indices, bits: int):
    """Level indices (each in 0 .. 2**bits - 1) as bytes: uint8 (ceil(n * bits / 8),).

    The same layout as :func:`pack_codes` (and as bitsandbytes for 4 bits): high bits first, so
    with 4 bits the first index of each pair sits in the byte's high nibble.
    """
    bits = _check_bits(bits)
    xp = backend.module_of(indices)
    flat = indices.reshape(-1).astype(xp.uint8)
    if flat.size and int(flat.max()) >= 2**bits:
        raise ValueError(f"pack_indices: an index is {int(flat.max())}, above 2**{bits} - 1")
    if bits == 8:
        return flat.copy()
    if bits == 4:  # the common case, without going through single bits
        if flat.size % 2:
            flat = xp.concatenate([flat, xp.zeros(1, dtype=xp.uint8)])
        return (flat[0::2] << 4) | flat[1::2]
    bit_rows = xp.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]  # (n, bits), high first
    return xp.packbits(bit_rows.reshape(-1))


def unpack_indices(packed, bits: int, count: int):
    """The first ``count`` indices of :func:`pack_indices`' bytes, as uint8 (count,)."""
    bits = _check_bits(bits)
    xp = backend.module_of(packed)
    if count * bits > 8 * packed.size:
        raise ValueError(
            f"unpack_indices: {packed.size} bytes hold at most {8 * packed.size // bits} indices "
            f"of {bits} bits, asked for {count}"
        )
    if bits == 8:
        return packed[:count].copy()
    if bits == 4:
        pairs = xp.stack([packed >> 4, packed & 15], axis=1)  # (bytes, 2): high nibble first
        return pairs.reshape(-1)[:count]
    bit_rows = xp.unpackbits(packed)[: count * bits].reshape(count, bits)  # high bit first
    weights = (2 ** xp.arange(bits - 1, -1, -1)).astype(xp.uint8)  # (bits,)
    return (bit_rows * weights).sum(axis=1, dtype=xp.uint8)
