"""Checkers for notebook 08 (adapters in practice): a blockwise-quantised frozen weight and a
batch whose rows use different adapters.

References: :func:`lora_np.quantization.quantize_blockwise` for the round trip, and for the
mixed batch the library's single-adapter layer op :func:`lora_np.functional.lora_linear`, run on
the rows of each adapter in turn (the per-row path a mixed batch must reproduce).
"""

from __future__ import annotations

from .. import backend, functional, quantization
from ..autograd import Tensor, no_grad
from ._harness import (
    ExerciseError,
    as_array,
    call,
    call_explained,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
    with_hint,
)

__all__ = [
    "check_mixed_lora_forward",
    "check_quantize_blockwise",
    "mixed_lora_forward_reference",
]


# ----------------------------------------------------------------------------- quantize_blockwise

# (shape, bits, block_size, dtype, zero_block, description)
_QUANT_CASES = [
    ((6, 10), 4, 4, "float64", False, "a (6, 10) matrix, 4 bits, blocks of 4 (blocks cross rows)"),
    ((8, 16), 3, 16, "float64", False, "an (8, 16) matrix, 3 bits, blocks of 16 (one per row)"),
    ((50,), 4, 16, "float64", False, "50 values, 4 bits, blocks of 16 (the last block holds 2)"),
    ((4, 8), 4, 8, "float64", True, "a (4, 8) matrix whose second block is all zeros, 4 bits"),
    ((5, 12), 8, 32, "float32", False, "float32 (5, 12), 8 bits, blocks of 32 (last holds 28)"),
    ((16, 12), 2, 64, "float64", False, "a (16, 12) matrix, 2 bits, blocks of 64"),
    ((2, 3, 8), 4, 12, "float64", False, "a (2, 3, 8) array, 4 bits, blocks of 12"),
    ((3, 5), 6, 64, "float64", False, "a (3, 5) matrix, 6 bits, one block larger than it"),
]


def _quant_inputs():
    rng = np.random.default_rng(20260808)
    for shape, bits, block, dtype, zero_block, description in _QUANT_CASES:
        w = rng.standard_normal(shape)
        if len(shape) > 1:  # rows of different sizes, so one global scale is clearly worse
            w = w * np.exp(rng.standard_normal(shape[:-1] + (1,)))
        if zero_block:
            w.reshape(-1)[block : 2 * block] = 0.0
        yield w.astype(dtype), bits, block, description


def _round_trip(w, bits, block, L=None, scale_of=None, rounding=np.rint, lo=None, hi=None):
    """A blockwise round trip in float64 with each ingredient swappable (for the wrong versions)."""
    L = 2 ** (bits - 1) - 1 if L is None else L
    flat = np.asarray(w, dtype=np.float64).reshape(-1)
    n_blocks = -(-flat.size // block)
    blocks = np.concatenate([flat, np.zeros(n_blocks * block - flat.size)]).reshape(n_blocks, block)
    size = np.abs(blocks).max(axis=1) if scale_of is None else scale_of(blocks, flat.size)
    scale = size / L
    safe = np.where(scale > 0, scale, 1.0)
    codes = rounding(blocks / safe[:, None])
    codes = np.clip(codes, -L if lo is None else lo, L if hi is None else hi)
    return codes, scale, (codes * scale[:, None]).reshape(-1)[: flat.size].reshape(np.shape(w))


def _wrong_quantizations(w, bits, block) -> list:
    """The answers of the classic wrong versions, in float64."""
    half = 2 ** (bits - 1)
    big = 10**6  # no clipping
    wrong = [
        (
            "It matches ONE scale for the whole array: take max|w| over each block of "
            "`block_size` consecutive values, so a block of small weights gets a fine step.",
            _round_trip(w, bits, w.size)[2],
        ),
        (
            "It matches truncation toward zero (int() or astype(int)): round to the nearest "
            "code (np.rint or np.round) instead.",
            _round_trip(w, bits, block, rounding=np.trunc)[2],
        ),
        (
            "It matches np.floor: round to the nearest code (np.rint or np.round) instead.",
            _round_trip(w, bits, block, rounding=np.floor)[2],
        ),
        (
            "It matches codes in -2**(bits-1) .. 2**(bits-1)-1 (the asymmetric int range) with "
            "scale max|w| / 2**(bits-1): the codes are symmetric, -L .. L with "
            "L = 2**(bits-1) - 1, so the block's largest weight maps to exactly L.",
            _round_trip(w, bits, block, L=half, lo=-half, hi=half - 1)[2],
        ),
        (
            "It matches codes up to +-2**(bits-1): use L = 2**(bits-1) - 1 levels on each side "
            "(2**(bits-1) does not fit in `bits` bits as a signed code).",
            _round_trip(w, bits, block, L=half)[2],
        ),
        (
            "It matches L = 2**bits - 1 levels on each side: one of the `bits` bits holds the "
            "sign, so a symmetric signed code reaches L = 2**(bits-1) - 1 (7 for 4 bits, not 15).",
            _round_trip(w, bits, block, L=2**bits - 1)[2],
        ),
        (
            "It matches dequantising with max|w| instead of the step max|w| / L: w_hat is "
            "code * scale with scale = max|w| / L.",
            _codes_times_absmax(w, bits, block),
        ),
        ("It matches the integer codes: return the dequantised values scale * code.", None),
    ]
    for stat, how in (("mean", _mean_abs), ("std", _std)):
        for clip in (True, False):
            wrong.append(
                (
                    f"It matches a scale from the {stat} of the block instead of its absmax: "
                    "the scale is max|w| / L, so that no weight falls outside -L .. L.",
                    _round_trip(
                        w,
                        bits,
                        block,
                        scale_of=how,
                        lo=None if clip else -big,
                        hi=None if clip else big,
                    )[2],
                )
            )
    if w.ndim >= 2:
        by_columns = _round_trip(np.asfortranarray(w).reshape(-1, order="F"), bits, block)[2]
        wrong.append(
            (
                "It matches blocks taken down the columns: a block is `block_size` CONSECUTIVE "
                "values of w.reshape(-1) (row after row), not of a column.",
                by_columns.reshape(w.shape, order="F"),
            )
        )
        rows = w.reshape(-1, w.shape[-1])
        per_row = np.stack([_round_trip(row, bits, row.size)[2] for row in rows]).reshape(w.shape)
        wrong.append(
            (
                "It matches one scale per row: blocks are `block_size` consecutive values of the "
                "flattened array, whatever the row length.",
                per_row,
            )
        )
    return wrong


def _codes_times_absmax(w, bits, block):
    codes, scale, _ = _round_trip(w, bits, block)
    L = 2 ** (bits - 1) - 1
    return (codes * (scale * L)[:, None]).reshape(-1)[: w.size].reshape(w.shape)


def _mean_abs(blocks, size):
    # the mean |w| over each block's real values (the last block's padding left out)
    counts = np.full(blocks.shape[0], blocks.shape[1], dtype=np.float64)
    counts[-1] = size - (blocks.shape[0] - 1) * blocks.shape[1]
    return np.abs(blocks).sum(axis=1) / counts


def _std(blocks, size):
    counts = np.full(blocks.shape[0], blocks.shape[1], dtype=np.float64)
    counts[-1] = size - (blocks.shape[0] - 1) * blocks.shape[1]
    mean = blocks.sum(axis=1) / counts
    return np.sqrt(np.maximum((blocks**2).sum(axis=1) / counts - mean**2, 0.0))


def _accept_either_rounding_at_ties(got, want, w, bits, block):
    """``want`` with every value that sits on a rounding tie replaced by ``got`` when ``got``
    holds one of the two nearest codes there (round-half-even and half-up are both right)."""
    codes, scale, _ = _round_trip(w, bits, block)
    flat = np.asarray(w, dtype=np.float64).reshape(-1)
    n = flat.size
    step = np.repeat(scale, block)[:n]
    ratio = np.divide(flat, step, out=np.zeros(n), where=step > 0)
    tie = np.abs(np.abs(ratio) % 1.0 - 0.5) < 1e-4
    if not tie.any():
        return want
    got_flat = np.asarray(got, dtype=np.float64).reshape(-1)
    candidates = (np.floor(ratio) * step, np.ceil(ratio) * step)
    ok = tie & np.any([np.abs(got_flat - c) <= 1e-5 * (1 + np.abs(c)) for c in candidates], axis=0)
    adjusted = want.reshape(-1).copy()
    adjusted[ok] = got_flat[ok]
    return adjusted.reshape(want.shape)


@exercise("quantize_blockwise", quantization.quantize_blockwise)
def check_quantize_blockwise(fn, *, quiet: bool = False) -> None:
    """Check ``fn(w, bits, block_size)`` -> the dequantised round trip, an array of w's shape:
    absmax per block of ``block_size`` consecutive values (of w flattened; the last block may be
    shorter), symmetric codes in -L..L with L = 2**(bits-1) - 1, rounded to the nearest."""
    name = "quantize_blockwise"
    n_cases = 0
    for w, bits, block, case in _quant_inputs():
        want = quantization.quantize_blockwise(w.astype(np.float64), bits, block)  # first
        mistakes = _wrong_quantizations(w.astype(np.float64), bits, block)
        given = w.copy()
        try:
            got = call(fn, name, case, given, bits, block)
        except ExerciseError as err:
            if "reshape" not in str(err) and "size" not in str(err):
                raise
            raise with_hint(
                err,
                ". When w.size is not a multiple of block_size the last block is shorter: "
                "pad the flattened values with zeros to whole blocks (zeros change no "
                "absmax), then cut the padding off again",
            ) from None
        if not np.array_equal(given, w) or given.shape != w.shape:
            raise ExerciseError(f"{name} changed w in place on {case}: return a new array")
        host = as_array(got, name, case, finite=False)
        shape = host.shape
        if shape != w.shape and int(np.prod(shape)) == w.size:
            raise ExerciseError(
                f"{name} returned shape {shape} on {case}; expected w's shape {w.shape}: "
                "reshape the round trip back to w.shape"
            )
        if np.issubdtype(host.dtype, np.floating) and np.isnan(host).any():
            zero = np.asarray(w).reshape(-1) == 0
            hint = (
                " An all-zero block has max|w| = 0, and 0 / 0 is NaN: give such a block "
                "scale 0 (or divide by 1 there) so that its values come back as zeros."
                if zero.any()
                else ""
            )
            raise ExerciseError(f"{name} returned NaN on {case}.{hint}")
        got = as_array(host, name, case, w.shape)
        want = _accept_either_rounding_at_ties(got, want, w, bits, block)
        codes = _round_trip(w, bits, block)[0].reshape(-1)[: w.size].reshape(w.shape)
        mistakes = [(text, codes if wrong is None else wrong) for text, wrong in mistakes]
        compare(got, want, name, case, mistakes, "round trip", precision_of(w))
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- mixed batch


def mixed_lora_forward_reference(x, W0, b, A, B, scaling, adapter_ids):
    """h[i] = x[i] W0^T + b + scaling[a] · x[i] A[a]^T B[a]^T with a = adapter_ids[i].

    The rows of each adapter go through the library's single-adapter op ``F.lora_linear``.

    Args:
        x: (batch, T, k); W0: (d, k); b: (d,) or None; A: (n_adapters, r, k);
        B: (n_adapters, d, r); scaling: (n_adapters,); adapter_ids: (batch,) integers.
    Returns:
        h: (batch, T, d), host NumPy when x is a host array, else a backend array.
    """
    xp = backend.xp
    on_host = backend.array_module(x) == "numpy"
    ids = np.asarray(backend.to_numpy(adapter_ids)).astype(np.int64).reshape(-1)
    scales = np.asarray(backend.to_numpy(scaling), dtype=np.float64).reshape(-1)
    if on_host:
        x, W0, A, B = (xp.asarray(np.asarray(a)) for a in (x, W0, A, B))
        b = None if b is None else xp.asarray(np.asarray(b))
    n, T, _ = x.shape
    out = xp.zeros((n, T, W0.shape[0]), dtype=x.dtype)
    with no_grad():
        for a in np.unique(ids):
            rows = xp.asarray(np.flatnonzero(ids == a))
            h = functional.lora_linear(
                Tensor(x[rows]),
                Tensor(W0),
                None if b is None else Tensor(b),
                Tensor(A[int(a)].astype(x.dtype)),
                Tensor(B[int(a)].astype(x.dtype)),
                float(scales[a]),
            )
            out[rows] = h.data
    return backend.to_numpy(out) if on_host else out


# (batch, T, k, d, r, ids, scalings, bias, dtype, description)
_MIXED_CASES = [
    (5, 3, 6, 7, 2, [2, 0, 1, 0, 2], [2.0, 0.5, 4.0], True, "float64",
     "5 rows over 3 adapters (ids 2, 0, 1, 0, 2), T = 3, k = 6, d = 7, r = 2, a bias"),
    (4, 2, 5, 5, 3, [1, 1, 0, 1], [1.5, 3.0], False, "float64",
     "4 rows over 2 adapters, a square W0 (d = k = 5), r = 3, b = None"),
    (1, 4, 4, 6, 1, [3], [0.5, 1.0, 2.0, 8.0], True, "float64",
     "one row using adapter 3 of 4, T = 4, r = 1"),
    (6, 3, 8, 6, 4, [0, 1, 2, 2, 1, 0], [1.0, 2.0, 0.25], True, "float32",
     "float32, 6 rows over 3 adapters, k = 8, d = 6, r = 4"),
]  # fmt: skip


def _mixed_inputs():
    rng = np.random.default_rng(20260909)
    for n, T, k, d, r, ids, scalings, bias, dtype, description in _MIXED_CASES:
        n_adapters = len(scalings)
        x = rng.standard_normal((n, T, k)).astype(dtype)
        W0 = rng.standard_normal((d, k)).astype(dtype)
        b = rng.standard_normal(d).astype(dtype) if bias else None
        A = rng.standard_normal((n_adapters, r, k)).astype(dtype)
        B = rng.standard_normal((n_adapters, d, r)).astype(dtype)
        s = np.asarray(scalings, dtype=dtype)
        yield (x, W0, b, A, B, s, np.asarray(ids, dtype=np.int64)), description


def _wrong_mixed(x, W0, b, A, B, s, ids) -> list:
    base = x @ W0.T + (0.0 if b is None else b)  # (n, T, d)

    def update(a, scale):  # (T, d) rows of adapter a: x A^T B^T, times scale
        return lambda row: scale * (x[row] @ A[a].T) @ B[a].T

    def with_adapters(pick, scale_of=lambda a: s[a], extra=base):
        return extra + np.stack([update(pick(i), scale_of(pick(i)))(i) for i in range(len(ids))])

    wrong = [
        (
            "Every row got the FIRST row's adapter: gather A[adapter_ids[i]], B[...] and "
            "scaling[...] for each row i.",
            with_adapters(lambda i: ids[0]),
        ),
        ("Every row got adapter 0: use adapter_ids to pick each row's adapter.",
         with_adapters(lambda i: 0)),
        (
            "It matches the sum of EVERY adapter's update on every row: each row takes only its "
            "own adapter's.",
            base + sum(s[a] * (x @ A[a].T) @ B[a].T for a in range(len(s))),
        ),
        ("Your output is off by the factors `scaling`: multiply each row's low-rank path by "
         "scaling[adapter_ids[i]].", with_adapters(lambda i: ids[i], lambda a: 1.0)),
        (
            "Every row used scaling[0]: each adapter has its own scaling; take "
            "scaling[adapter_ids[i]].",
            with_adapters(lambda i: ids[i], lambda a: s[0]),
        ),
    ]  # fmt: skip
    if b is not None:
        wrong += [
            ("The bias b is missing: add b (d,) to every row.",
             with_adapters(lambda i: ids[i], extra=x @ W0.T)),
            ("The bias b is added twice.", with_adapters(lambda i: ids[i], extra=base + b)),
        ]  # fmt: skip
    if W0.shape[0] == W0.shape[1]:
        wrong.append(
            (
                "It matches x @ W0: the frozen path is x W0^T (W0 is (d, k)).",
                with_adapters(lambda i: ids[i], extra=x @ W0 + (0.0 if b is None else b)),
            )
        )
    return wrong


@exercise("mixed_lora_forward", mixed_lora_forward_reference)
def check_mixed_lora_forward(fn, *, quiet: bool = False) -> None:
    """Check ``fn(x, W0, b, A, B, scaling, adapter_ids)`` -> h (batch, T, d), row i using
    adapter ``adapter_ids[i]``: x[i] W0^T + b + scaling[a] x[i] A[a]^T B[a]^T."""
    name = "mixed_lora_forward"
    n_cases = 0
    labels = ("x", "W0", "b", "A", "B", "scaling", "adapter_ids")
    for args, case in _mixed_inputs():
        args64 = [
            None if a is None else a.copy() if a.dtype.kind == "i" else a.astype(np.float64)
            for a in args
        ]
        want = mixed_lora_forward_reference(*args64)  # first, from private copies
        mistakes = _wrong_mixed(*args64)
        given = [None if a is None else a.copy() for a in args]
        before = snapshot(*given)
        got = call_explained(
            fn,
            name,
            case,
            *given,
            shape_hint=". Write the shape beside every factor: A[adapter_ids] is (batch, r, k), "
            "B[adapter_ids] is (batch, d, r); `@` multiplies the last two axes, batch by batch",
            none_hint=". b can be None (no bias): add it only when it is given",
        )
        unchanged(name, case, labels, before, given)
        got = as_array(got, name, case, want.shape)
        precision = precision_of(*(a for a in args if a is not None and a.dtype.kind == "f"))
        compare(got, want, name, case, mistakes, "output h", precision)
        n_cases += 1
    passed(name, n_cases, quiet)
