"""The notebook-08 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import quantization
from lora_np.checks import check_mixed_lora_forward, check_quantize_blockwise
from lora_np.checks._harness import ExerciseError, passing_or_reference
from lora_np.checks.adapters import mixed_lora_forward_reference

# ----------------------------------------------------------------------------- quantize_blockwise


def quantize(w, bits, block_size, *, levels=None, lo=None, hi=None, rounding=np.rint, scale=None):
    """A padded-blocks round trip with each ingredient swappable (the wrong versions below)."""
    L = 2 ** (bits - 1) - 1 if levels is None else levels
    flat = w.reshape(-1)
    n_blocks = -(-flat.size // block_size)
    padded = np.zeros(n_blocks * block_size, dtype=w.dtype)
    padded[: flat.size] = flat
    blocks = padded.reshape(n_blocks, block_size)
    size = np.abs(blocks).max(axis=1, keepdims=True) if scale is None else scale(blocks)
    step = size / L
    codes = rounding(np.divide(blocks, step, out=np.zeros_like(blocks), where=step > 0))
    codes = np.clip(codes, -L if lo is None else lo, L if hi is None else hi)
    return (codes * step).reshape(-1)[: flat.size].reshape(w.shape)


def quantize_by_loops(w, bits, block_size):
    """Correct, written differently: a shorter last block, one block at a time, half-up rounding."""
    L = 2 ** (bits - 1) - 1
    flat = w.reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, block_size):
        block = flat[start : start + block_size]
        absmax = np.abs(block).max()
        codes = np.floor(np.abs(block) / absmax * L + 0.5) * np.sign(block) if absmax else 0
        out[start : start + block_size] = codes * (absmax / L)
    return out.reshape(w.shape)


def test_quantize_reference_and_independent_solutions_pass(capsys):
    check_quantize_blockwise(quantization.quantize_blockwise)
    assert "quantize_blockwise: all 8 checks passed" in capsys.readouterr().out
    check_quantize_blockwise(quantize, quiet=True)
    check_quantize_blockwise(quantize_by_loops, quiet=True)
    as_float32 = lambda w, b, n: quantize(w.astype(np.float32), b, n)  # noqa: E731
    check_quantize_blockwise(as_float32, quiet=True)  # judged at float32 precision
    check_quantize_blockwise(lambda *a: ln.Tensor(quantize(*a)), quiet=True)  # a Tensor is read


def _no_zero_guard(w, bits, block_size):
    L = 2 ** (bits - 1) - 1
    flat = np.concatenate([w.reshape(-1), np.zeros(-w.size % block_size)])
    blocks = flat.reshape(-1, block_size)
    step = np.abs(blocks).max(axis=1, keepdims=True) / L
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.rint(blocks / step) * step).reshape(-1)[: w.size].reshape(w.shape)


def _by_columns(w, bits, n):
    flat = np.asfortranarray(w).reshape(-1, order="F")
    return quantize(flat, bits, n).reshape(w.shape, order="F")


def _per_row(w, bits, n):
    rows = w.reshape(-1, w.shape[-1])
    return np.stack([quantize(r, bits, r.size) for r in rows]).reshape(w.shape)


def _codes(w, bits, n):
    L = 2 ** (bits - 1) - 1
    values = quantize(w, bits, n)
    steps = quantize(w, bits, n, rounding=lambda r: np.where(r == 0, 0.0, 1.0))  # 0 or the step
    return np.rint(np.divide(values, steps, out=np.zeros_like(values), where=steps != 0))[...].clip(
        -L, L
    )


def _mean_scale(blocks):
    return np.abs(blocks).mean(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda w, b, n: quantize(w, b, w.size), "ONE scale for the whole array"),
        (lambda w, b, n: quantize(w, b, n, rounding=np.trunc), "truncation"),
        (lambda w, b, n: quantize(w, b, n, rounding=np.floor), "np.floor"),
        (
            lambda w, b, n: quantize(w, b, n, levels=2 ** (b - 1), hi=2 ** (b - 1) - 1),
            "asymmetric",
        ),
        (lambda w, b, n: quantize(w, b, n, levels=2 ** (b - 1)), "+-2**(bits-1)"),
        (lambda w, b, n: quantize(w, b, n, scale=_mean_scale), "mean of the block"),
        (
            lambda w, b, n: quantize(w, b, n, scale=lambda x: x.std(axis=1, keepdims=True)),
            "std of the block",
        ),
        (_by_columns, "down the columns"),
        (_per_row, "one scale per row"),
        (_no_zero_guard, "all-zero block"),
        (_codes, "integer codes"),
        (lambda w, b, n: quantize(w, b, n) * (2 ** (b - 1) - 1), "max|w| instead of the step"),
    ],
    ids=[
        "global",
        "trunc",
        "floor",
        "asymmetric",
        "unclipped-2^(b-1)",
        "mean",
        "std",
        "columns",
        "rows",
        "zero-block",
        "codes",
        "absmax",
    ],
)
def test_each_quantize_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_quantize_blockwise(wrong)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        ("not a function", "expected your function"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda w, b, n: quantize(w, b, n).reshape(-1), "reshape the round trip back"),
        (lambda w, b, n: quantize(w, b, n)[..., :-1], "returned shape"),
        (
            lambda w, b, n: quantize(w.reshape(-1, n).reshape(w.shape), b, n),
            "last block is shorter",
        ),
        (lambda *a: None, "forget `return`"),
        (lambda w, b, n: quantize(w, b, n) + np.inf, "NaN or inf"),
    ],
    ids=["not-callable", "stub", "flat", "shape", "no-padding", "none", "inf"],
)
def test_quantize_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_quantize_blockwise(bad)
    assert phrase in str(info.value), str(info.value)


def test_quantize_in_place_change_is_refused():
    def in_place(w, bits, n):
        w[...] = quantize(w, bits, n)
        return w

    with pytest.raises(ExerciseError, match="changed w in place"):
        check_quantize_blockwise(in_place)


# ----------------------------------------------------------------------------- mixed batch


def mixed(x, W0, b, A, B, scaling, adapter_ids):
    h = x @ W0.T
    if b is not None:
        h = h + b
    low = (x @ A[adapter_ids].transpose(0, 2, 1)) * scaling[adapter_ids][:, None, None]
    return h + low @ B[adapter_ids].transpose(0, 2, 1)


def mixed_by_rows(x, W0, b, A, B, scaling, adapter_ids):
    """Correct, written differently: a loop over rows, the update formed as s B A, float32."""
    out = []
    for row, a in zip(x, list(adapter_ids)):
        W = W0.astype(np.float32) + np.float32(scaling[a]) * (B[a] @ A[a]).astype(np.float32)
        out.append(row.astype(np.float32) @ W.T + (0 if b is None else b.astype(np.float32)))
    return np.stack(out)


def test_mixed_reference_and_independent_solutions_pass(capsys):
    check_mixed_lora_forward(mixed_lora_forward_reference)
    assert "mixed_lora_forward: all 4 checks passed" in capsys.readouterr().out
    check_mixed_lora_forward(mixed, quiet=True)
    check_mixed_lora_forward(mixed_by_rows, quiet=True)


def _with(pick=lambda ids, i: ids[i], scale=lambda s, a: s[a], bias=1):
    def wrong(x, W0, b, A, B, s, ids):
        rows = []
        for i in range(len(ids)):
            a = pick(ids, i)
            rows.append(scale(s, a) * (x[i] @ A[a].T) @ B[a].T)
        base = x @ W0.T + (0 if b is None else bias * b)
        return base + np.stack(rows)

    return wrong


def _sum_of_all(x, W0, b, A, B, s, ids):
    h = x @ W0.T + (0 if b is None else b)
    return h + sum(s[a] * (x @ A[a].T) @ B[a].T for a in range(len(s)))


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (_with(pick=lambda ids, i: ids[0]), "FIRST row's adapter"),
        (_with(pick=lambda ids, i: 0), "adapter 0"),
        (_sum_of_all, "EVERY adapter's update"),
        (_with(scale=lambda s, a: 1.0), "factors `scaling`"),
        (_with(scale=lambda s, a: s[0]), "scaling[0]"),
        (_with(bias=0), "bias b is missing"),
        (_with(bias=2), "added twice"),
    ],
    ids=["first-row", "adapter-0", "sum-all", "no-scaling", "scaling-0", "no-bias", "bias-twice"],
)
def test_each_mixed_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_mixed_lora_forward(wrong)
    assert phrase in str(info.value), str(info.value)


def test_mixed_bad_answers_give_clear_messages():
    with pytest.raises(ExerciseError, match="not written yet"):
        check_mixed_lora_forward(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="returned shape"):
        check_mixed_lora_forward(lambda *a: mixed(*a)[:, 0])
    with pytest.raises(ExerciseError, match="NaN"):
        check_mixed_lora_forward(lambda *a: mixed(*a) * np.nan)
    with pytest.raises(ExerciseError, match="b can be None"):
        check_mixed_lora_forward(lambda x, W0, b, *rest: mixed(x, W0, None, *rest) + b)
    with pytest.raises(ExerciseError, match="expected your function"):
        check_mixed_lora_forward(42)


def test_passing_or_reference_falls_back_to_the_library(capsys):
    stub = lambda *a: (_ for _ in ()).throw(NotImplementedError())  # noqa: E731
    assert passing_or_reference(mixed, "mixed_lora_forward") is mixed
    assert passing_or_reference(stub, "quantize_blockwise") is quantization.quantize_blockwise
    assert "using the library's quantize_blockwise" in capsys.readouterr().out


def test_mixed_reference_keeps_backend_arrays_on_the_backend():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 4))
    W0, b = rng.standard_normal((5, 4)), rng.standard_normal(5)
    A, B = rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 5, 2))
    s, ids = np.array([1.0, 3.0]), np.array([1, 0, 1])
    want = mixed(x, W0, b, A, B, s, ids)
    xp = ln.backend.xp
    got = mixed_lora_forward_reference(*(xp.asarray(a) for a in (x, W0, b, A, B, s, ids)))
    assert ln.backend.array_module(got) == ln.backend.array_module(xp.asarray(x))
    assert np.abs(ln.to_numpy(got) - want).max() < 1e-12


# ----------------------------------------------------------------------------- soundness


def test_levels_of_two_to_the_bits_minus_one_are_named():
    def unsigned_levels(w, bits, block_size):
        L = 2**bits - 1  # forgets that one bit holds the sign
        flat = np.asarray(w, dtype=np.float64).reshape(-1)
        pad = -flat.size % block_size
        blocks = np.concatenate([flat, np.zeros(pad)]).reshape(-1, block_size)
        scale = np.abs(blocks).max(axis=1, keepdims=True) / L
        safe = np.where(scale > 0, scale, 1.0)
        out = np.clip(np.rint(blocks / safe), -L, L) * scale
        return out.reshape(-1)[: flat.size].reshape(np.shape(w))

    with pytest.raises(ExerciseError, match=r"2\*\*bits - 1"):
        check_quantize_blockwise(unsigned_levels)


def test_a_mixed_forward_that_changes_A_is_refused():
    def scales_A(x, W0, b, A, B, scaling, ids):
        A *= scaling[:, None, None]  # folds the scale into A, in the caller's array
        h = np.einsum("ntk,dk->ntd", x, W0) + (0.0 if b is None else b)
        return h + np.einsum("ntk,nrk,ndr->ntd", x, A[ids], B[ids])

    with pytest.raises(ExerciseError, match="changed its input A"):
        check_mixed_lora_forward(scales_A)
