"""Checkers for notebook 06 (the tiny transformer): splitting a layer's output into heads, and
causal self-attention.

The references are the library's own: ``split_heads_reference`` does what
:class:`lora_np.transformer.CausalSelfAttention` does to q, k and v (the engine's reshape and
transpose), and ``causal_attention_reference`` is
:func:`lora_np.functional.scaled_dot_product_attention` with ``is_causal=True``. For every case
the checkers also compute what the classic wrong versions give, so a wrong answer is named
("no causal mask", "the mask hides the diagonal too", "no 1/√hd", ...). Two cases have large
scores: one where a softmax that does not subtract the row's maximum overflows, and one where a
future key outscores every past key by hundreds, which only a mask applied before the softmax
(and before its maximum) survives.
"""

from __future__ import annotations

import math
from typing import Any

from .. import functional
from ..autograd import Tensor, no_grad
from ._harness import (
    ExerciseError,
    as_array,
    call,
    compare,
    exercise,
    np,
    passed,
    precision_of,
)

__all__ = [
    "causal_attention_reference",
    "check_causal_attention",
    "check_split_heads",
    "split_heads_reference",
]


# ----------------------------------------------------------------------------- references


def split_heads_reference(x, n_head):
    """(B, T, C) -> (B, n_head, T, C // n_head), as ``CausalSelfAttention.forward`` splits q, k, v.

    Head ``h`` holds channels ``h * hs`` to ``(h + 1) * hs - 1`` of every position.
    Returns a NumPy array of x's dtype.
    """
    B, T, C = np.shape(x)
    hs = C // n_head
    with no_grad():
        return Tensor(x).reshape(B, T, n_head, hs).transpose(0, 2, 1, 3).numpy()


def causal_attention_reference(q, k, v):
    """softmax(q kᵀ / √hd with the future masked) v, by the library's fused attention op.

    Args:
        q, k, v: (B, heads, T, hd) NumPy arrays.
    Returns:
        (B, heads, T, hd), a NumPy array of the inputs' dtype.
    """
    with no_grad():
        out = functional.scaled_dot_product_attention(
            Tensor(q), Tensor(k), Tensor(v), is_causal=True
        )
    return out.numpy()


# ----------------------------------------------------------------------------- shared


def _same(got, wrong, dtype) -> bool:
    """``got`` equals ``wrong`` at ``dtype``'s precision, NaNs in the same places."""
    got = np.asarray(got, dtype=np.float64)
    wrong = np.asarray(wrong, dtype=np.float64)
    if got.shape != wrong.shape:
        return False
    single = np.finfo(dtype).bits <= 32
    rtol, atol = (2e-4, 2e-5) if single else (1e-7, 1e-9)
    finite = wrong[np.isfinite(wrong)]
    scale = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    return bool(np.allclose(got, wrong, rtol=rtol, atol=atol * scale, equal_nan=True))


def _unchanged(fn_name: str, case: str, **arrays) -> None:
    for arg, (before, after) in arrays.items():
        if not np.array_equal(before, after):
            raise ExerciseError(
                f"{fn_name} changed its input `{arg}` in place on {case}: compute into new "
                f"arrays (`{arg} = {arg} / ...` rather than `{arg} /= ...`); the caller still "
                f"needs `{arg}`"
            )


# ------------------------------------------------------------------------------ split_heads

# (B, T, C, n_head, dtype, what the case is)
_SPLIT_CASES = [
    (2, 5, 12, 3, "float64", "B = 2, T = 5, C = 12, 3 heads of 4 channels"),
    (1, 6, 8, 4, "float64", "B = 1, T = 6, C = 8, 4 heads of 2 channels"),
    (3, 4, 8, 4, "float64", "T = 4 equal to the number of heads (4 heads of 2 channels)"),
    (2, 3, 6, 1, "float64", "a single head (n_head = 1): only a new axis"),
    (2, 1, 6, 2, "float64", "a sequence of one token (T = 1), 2 heads"),
    (1, 3, 5, 5, "float64", "one channel per head (C = n_head = 5)"),
    (2, 7, 16, 2, "float32", "float32 activations, B = 2, T = 7, C = 16, 2 heads"),
]


def _split_mistakes(x, n_head):
    B, T, C = x.shape
    hs = C // n_head
    return [
        (
            "Your heads hold interleaved channels (head h got channels h, h + n_head, ...): "
            "reshape C as (n_head, hs), heads first, so each head gets hs neighbouring channels "
            "— x.reshape(B, T, n_head, hs), not (B, T, hs, n_head)",
            x.reshape(B, T, hs, n_head).transpose(0, 3, 1, 2),
        ),
        (
            "You reshaped straight to (B, n_head, T, hs): that cuts the rows of (T, C) numbers "
            "in memory order, so a head mixes several positions. Reshape to (B, T, n_head, hs) "
            "first, then move the head axis in front of T with a transpose",
            x.reshape(B, n_head, T, hs),
        ),
        (
            "Your output still has positions before heads, (B, T, n_head, hs): move the head "
            "axis in front of T, transpose(0, 2, 1, 3)",
            x.reshape(B, T, n_head, hs),
        ),
    ]


def _split_shape_hint(shape, B, T, C, n_head) -> str | None:
    hs = C // n_head
    hints = {
        (B, T, n_head, hs): "positions still come before heads: transpose(0, 2, 1, 3)",
        (B, n_head, hs, T): "the last two axes are swapped: it must be (B, n_head, T, hs)",
        (B, T, C): "no split happened: reshape to (B, T, n_head, hs), then transpose",
        (B * n_head, T, hs): "the batch and head axes were merged: keep them apart",
    }
    return hints.get(tuple(shape))


@exercise("split_heads", split_heads_reference)
def check_split_heads(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(x, n_head)``: (B, T, C) -> (B, n_head, T, C // n_head), head h holding channels
    h·hs ... (h+1)·hs - 1 of every position.

    Cases: several heads, T equal to the number of heads (where forgetting the transpose still
    gives the right shape), one head, T = 1, one channel per head, float32.
    """
    name = "split_heads"
    rng = np.random.default_rng(6)
    for B, T, C, n_head, dtype, what in _SPLIT_CASES:
        case = f"x of shape {(B, T, C)}, n_head = {n_head} ({what})"
        x = rng.standard_normal((B, T, C)).astype(dtype)
        before = x.copy()
        want = split_heads_reference(x.copy(), n_head)  # first, from a private copy
        got = call(fn, name, case, x, n_head)
        _unchanged(name, case, x=(before, x))
        got = as_array(got, name, case)
        shape = got.shape
        if shape != want.shape:
            hint = _split_shape_hint(shape, B, T, C, n_head)
            if hint is not None:
                raise ExerciseError(
                    f"{name} returned shape {shape} on {case}; expected {want.shape}: {hint}"
                )
        compare(got, want, name, case, _split_mistakes(x, n_head), "heads", precision_of(x))
    passed(name, len(_SPLIT_CASES), quiet)


# ------------------------------------------------------------------------ causal_attention


def _softmax(scores, axis=-1):
    """A stable softmax (the row's max subtracted), NaN where a whole row is -inf."""
    with np.errstate(all="ignore"):
        shifted = scores - np.max(scores, axis=axis, keepdims=True)
        weights = np.exp(shifted)
        return weights / weights.sum(axis=axis, keepdims=True)


def _future(T):
    return np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T): key j after query i


def _attention_variants(q, k, v) -> dict[str, Any]:
    """What the correct and the classic wrong versions give on (q, k, v), in float64."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    T, hd = q.shape[-2], q.shape[-1]
    future = _future(T)
    with np.errstate(all="ignore"):
        raw = q @ k.swapaxes(-1, -2)  # (B, nh, T, T)
        scores = raw / math.sqrt(hd)
        masked = np.where(future, -np.inf, scores)
        full = _softmax(scores)
        out = {
            "no_mask": full @ v,
            "diagonal_inf": _softmax(np.where(np.triu(np.ones((T, T), bool)), -np.inf, scores)) @ v,
            "diagonal_finite": _softmax(np.where(np.triu(np.ones((T, T), bool)), -1e9, scores)) @ v,
            "zero_mask": _softmax(np.where(future, 0.0, scores)) @ v,
            "no_scale": _softmax(np.where(future, -np.inf, raw)) @ v,
            "sqrt_T": _softmax(np.where(future, -np.inf, raw / math.sqrt(T))) @ v,
            "past_masked": _softmax(np.where(np.tril(np.ones((T, T), bool), k=-1), -np.inf, scores))
            @ v,
            "only_future": _softmax(np.where(future, scores, -np.inf)) @ v,
            "over_hd": _softmax(np.where(future, -np.inf, raw / hd)) @ v,
            "axis_queries": _softmax(masked, axis=-2) @ v,
            "axis_heads": _softmax(masked, axis=1) @ v,
            "axis_batch": _softmax(masked, axis=0) @ v,
            "after_softmax": np.where(future, 0.0, full) @ v,
            "swapped": _softmax(np.where(future, -np.inf, raw.swapaxes(-1, -2) / math.sqrt(hd)))
            @ v,
        }
        kept = np.where(future, 0.0, full)
        out["after_softmax_renormalised"] = (kept / kept.sum(axis=-1, keepdims=True)) @ v
        weights = np.exp(masked)  # no max subtracted
        out["naive_softmax"] = (weights / weights.sum(axis=-1, keepdims=True)) @ v
        out["weights"] = _softmax(masked)
    return out


_RENORMALISED = (
    "Your output breaks when a future key outscores every past key by hundreds. It looks like "
    "the mask is applied after the softmax and the rows renormalised (or the maximum you "
    "subtract for stability was taken over the future keys too): right in exact arithmetic, "
    "but exp underflows, the past weights become exactly 0 and 0/0 = NaN. Causality means "
    "position t does not depend on the keys after t at all: mask the scores (with -inf) before "
    "the softmax, then take each row's maximum"
)
_OVERFLOW = (
    "exp overflowed: the scores here reach hundreds or more, exp(score) is inf and inf/inf = NaN "
    "(float64's exp overflows above 709, float32's above 88). Subtract each row's maximum score "
    "before exp: a softmax does not change when a constant is subtracted from its row"
)


def _attention_mistakes(variants) -> list[tuple[str, Any]]:
    return [
        (
            "Your output matches attention without the causal mask: position t also reads the "
            "keys after t. Set the scores of keys j > i to -inf before the softmax "
            "(np.triu(np.ones((T, T), bool), k=1) marks them)",
            variants["no_mask"],
        ),
        (
            "Your mask is on the wrong side: it hides the PAST keys (j < i, np.tril) and lets "
            "position t read the future. Mask the keys after t, j > i: "
            "np.triu(np.ones((T, T), bool), k=1)",
            variants["past_masked"],
        ),
        (
            "Your mask is the wrong way round: it keeps only the future keys (j > i) and hides "
            "the rest. Set the scores to -inf WHERE the key is in the future, "
            "np.where(future, -np.inf, scores)",
            variants["only_future"],
        ),
        (
            "Your mask also hides the diagonal: position t must read itself (keys j <= i), so "
            "mask only j > i (np.triu(..., k=1), not k=0). With -inf there, position 0 has "
            "nothing left to read and its row is 0/0 = NaN",
            variants["diagonal_inf"],
        ),
        (
            "Your mask also hides the diagonal: position t must read itself (keys j <= i), so "
            "mask only j > i (np.triu(..., k=1), not k=0)",
            variants["diagonal_finite"],
        ),
        (
            "The future scores were set to 0 instead of -inf: exp(0) = 1, so the future keys "
            "still get weight. Use -np.inf (exp(-inf) = 0)",
            variants["zero_mask"],
        ),
        (
            "Your scores are not scaled: divide q kᵀ by √hd (hd = q.shape[-1]) before the softmax",
            variants["no_scale"],
        ),
        (
            "You divided the scores by hd; the scale is 1/√hd (math.sqrt(hd))",
            variants["over_hd"],
        ),
        (
            "You divided the scores by √T, the sequence length; the scale is 1/√hd, the size "
            "of each head's vectors (hd = q.shape[-1]), whatever the length",
            variants["sqrt_T"],
        ),
        (
            "Your softmax runs over the queries (axis -2): each query's row of scores over the "
            "keys, the last axis, must sum to 1",
            variants["axis_queries"],
        ),
        (
            "Your softmax runs over the heads (axis 1): each query's scores over the keys, the "
            "last axis, must sum to 1",
            variants["axis_heads"],
        ),
        (
            "Your softmax runs over the batch (axis 0): each query's scores over the keys, the "
            "last axis, must sum to 1",
            variants["axis_batch"],
        ),
        (
            "You masked after the softmax without renormalising: the weights a position may use "
            "no longer sum to 1. Mask the scores with -inf before the softmax",
            variants["after_softmax"],
        ),
        (
            "Your scores are k qᵀ, not q kᵀ: row i must hold query i's scores against every "
            "key (q @ k.swapaxes(-1, -2))",
            variants["swapped"],
        ),
        (_RENORMALISED, variants["after_softmax_renormalised"]),
        (_OVERFLOW, variants["naive_softmax"]),
    ]


def _attention_inputs():
    """(q, k, v, what the case is, large scores?) for every case; the large ones come last."""
    rng = np.random.default_rng(60)
    cases = []
    for B, nh, T, hd, dtype, what in [
        (2, 3, 5, 4, "float64", "B = 2, 3 heads, T = 5, hd = 4"),
        (1, 1, 6, 8, "float64", "one sequence, one head, T = 6, hd = 8"),
        (3, 2, 4, 3, "float32", "float32, B = 3, 2 heads, T = 4, hd = 3"),
        (2, 4, 1, 5, "float64", "a sequence of one token (T = 1), 4 heads, hd = 5"),
        (1, 2, 7, 2, "float64", "T = 7 longer than hd = 2"),
        (2, 2, 4, 4, "float64", "T = hd = 4"),
        (2, 2, 3, 16, "float32", "float32, T = 3, hd = 16"),
    ]:
        q, k, v = (rng.standard_normal((B, nh, T, hd)).astype(dtype) for _ in range(3))
        cases.append((q, k, v, f"q, k, v of shape {(B, nh, T, hd)} ({what})", False))

    # Large scores with a common offset: q·k = offset + O(1) in every row. A softmax that does
    # not subtract the row's max overflows; any stable one gives ordinary weights.
    for dtype, offset in (("float64", 1000.0), ("float32", 150.0)):
        B, nh, T, hd = 2, 2, 5, 4
        q, k, v = (rng.standard_normal((B, nh, T, hd)) for _ in range(3))
        q[..., 0], k[..., 0] = math.sqrt(offset * math.sqrt(hd)), math.sqrt(offset * math.sqrt(hd))
        cases.append(
            tuple(a.astype(dtype) for a in (q, k, v))
            + (
                f"{dtype} q, k, v of shape {(B, nh, T, hd)} whose scores are all near "
                f"{offset:.0f} (large logits)",
                True,
            )
        )

    # Each later key outscores the earlier ones by about 800: for query i the largest score in
    # the whole row is a future key's, so far above every past one that exp(past - that max)
    # underflows to 0 even in float64. Correct attention does not care (the future is masked
    # before anything else); its answer is close to v itself.
    B, nh, T, hd = 2, 2, 5, 4
    q, k, v = (rng.standard_normal((B, nh, T, hd)) for _ in range(3))
    step = math.sqrt(800.0 * math.sqrt(hd))
    q[..., 0], k[..., 0] = step, step * np.arange(T)
    what = "each later key scores about 800 higher than the one before (large logits)"
    cases.append((q, k, v, f"q, k, v of shape {(B, nh, T, hd)}: {what}", True))
    return cases


@exercise("causal_attention", causal_attention_reference)
def check_causal_attention(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(q, k, v)``: softmax(q kᵀ / √hd, keys j > i masked) v, all (B, heads, T, hd).

    Cases: batch > 1, several heads, T = 1, hd ≠ T, float32 (judged at float32 precision) and
    float64, scores in the hundreds (a softmax without the max subtracted overflows), and a
    future key far above the past ones (a mask applied after the softmax gives NaN).
    """
    name = "causal_attention"
    cases = _attention_inputs()
    for q, k, v, case, large in cases:
        saved = (q.copy(), k.copy(), v.copy())
        variants = _attention_variants(q, k, v)
        want = causal_attention_reference(*(np.array(a, dtype=np.float64) for a in (q, k, v)))
        got = call(fn, name, case, q, k, v)
        _unchanged(name, case, q=(saved[0], q), k=(saved[1], k), v=(saved[2], v))
        host = as_array(got, name, case, finite=False)
        shape = host.shape
        T, hd = q.shape[-2], q.shape[-1]
        if shape != want.shape and shape == q.shape[:-1] + (T,):
            raise ExerciseError(
                f"{name} returned shape {shape} on {case}; expected {want.shape}: that is the "
                "shape of the attention weights (B, heads, T, T). Multiply them by v: each "
                "position's output is the weighted sum of the values it reads"
            )
        if shape == want.shape and T == hd and _same(host, variants["weights"], q.dtype):
            raise ExerciseError(
                f"{name}: wrong output on {case}: you returned the attention weights; multiply "
                "them by v"
            )
        mistakes = _attention_mistakes(variants)
        if host.shape == want.shape:
            if np.issubdtype(host.dtype, np.inexact) and not np.all(np.isfinite(host)):
                for explanation, wrong in mistakes:  # a NaN output: whose NaNs are these?
                    if _same(host, wrong, q.dtype) and not _same(wrong, want, q.dtype):
                        raise ExerciseError(f"{name}: wrong output on {case}. {explanation}")
                if large:
                    raise ExerciseError(f"{name} returned NaN or inf on {case}. {_OVERFLOW}")
                as_array(host, name, case, want.shape)  # names the NaN
        compare(host, want, name, case, mistakes, precision=precision_of(q, k, v))
    passed(name, len(cases), quiet)
