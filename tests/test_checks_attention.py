"""The notebook-06 checkers accept every correct solution and name each classic mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_np.checks import (
    ExerciseError,
    check_causal_attention,
    check_split_heads,
    passing_or_reference,
)
from lora_np.checks.attention import causal_attention_reference, split_heads_reference


def rejected(checker, fn) -> str:
    """The checker's message for ``fn``; fails the test if ``fn`` passes."""
    with pytest.raises(ExerciseError) as info:
        checker(fn, quiet=True)
    return str(info.value)


# ------------------------------------------------------------------------------ split_heads
def split_heads_loops(x, n_head):
    """Written differently: a loop over heads, slicing each head's channels."""
    B, T, C = x.shape
    hs = C // n_head
    out = np.empty((B, n_head, T, hs), dtype=x.dtype)
    for h in range(n_head):
        out[:, h] = x[:, :, h * hs : (h + 1) * hs]
    return out


def split_heads_float32(x, n_head):
    """Correct, but answers in float32 (judged at float32 precision)."""
    B, T, C = x.shape
    return np.moveaxis(x.astype(np.float32).reshape(B, T, n_head, C // n_head), 2, 1)


@pytest.mark.parametrize("fn", [split_heads_reference, split_heads_loops, split_heads_float32])
def test_split_heads_correct_versions_pass(fn, capsys):
    check_split_heads(fn)
    assert "✓ split_heads: all 7 checks passed" in capsys.readouterr().out


def _split_parts(x, n_head):
    B, T, C = x.shape
    return B, T, C, C // n_head


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (
            lambda x, nh: x.reshape(*x.shape[:2], x.shape[2] // nh, nh).transpose(0, 3, 1, 2),
            "interleaved channels",
        ),
        (lambda x, nh: x.reshape(x.shape[0], nh, x.shape[1], x.shape[2] // nh), "straight to"),
        (
            lambda x, nh: x.reshape(*x.shape[:2], nh, x.shape[2] // nh),
            "positions still come before heads",
        ),
        (
            lambda x, nh: x.reshape(*x.shape[:2], nh, x.shape[2] // nh).transpose(0, 2, 3, 1),
            "last two axes are swapped",
        ),
        (lambda x, nh: x, "no split happened"),
        (lambda x, nh: split_heads_reference(x, nh) * np.nan, "NaN"),
        (lambda x, nh: None, "forget `return`"),
        (lambda x, nh: "heads", "expected numbers"),
    ],
)
def test_split_heads_mistakes_are_named(wrong, names):
    assert names in rejected(check_split_heads, wrong)


def test_split_heads_without_transpose_is_named_where_the_shape_fits():
    """With T equal to n_head the un-transposed output has the right shape: named by value."""

    def no_transpose_same_shape(x, n_head):
        B, T, C, hs = _split_parts(x, n_head)
        out = x.reshape(B, T, n_head, hs)
        return out if T == n_head else split_heads_reference(x, n_head)

    assert "(B, T, n_head, hs)" in rejected(check_split_heads, no_transpose_same_shape)


def test_split_heads_stub_non_callable_and_in_place():
    def stub(x, n_head):
        raise NotImplementedError

    def scales_in_place(x, n_head):
        x *= 1.0 + 1e-3
        return split_heads_reference(x / (1.0 + 1e-3), n_head)

    assert "not written yet" in rejected(check_split_heads, stub)
    assert "expected your function" in rejected(check_split_heads, [1, 2])
    assert "in place" in rejected(check_split_heads, scales_in_place)


# ------------------------------------------------------------------------- causal_attention
def attention_loops(q, k, v):
    """Written differently: one query at a time, reading only the keys up to it (no mask)."""
    B, nh, T, hd = q.shape
    out = np.zeros(np.broadcast_shapes(q.shape), dtype=np.result_type(q, k, v))
    for b in range(B):
        for h in range(nh):
            for i in range(T):
                scores = k[b, h, : i + 1] @ q[b, h, i] / math.sqrt(hd)  # (i + 1,)
                weights = np.exp(scores - scores.max())
                out[b, h, i] = (weights / weights.sum()) @ v[b, h, : i + 1]
    return out


def attention_float32_finite_mask(q, k, v):
    """Correct, in float32, masking with a large finite number instead of -inf."""
    q, k, v = (np.asarray(a, dtype=np.float32) for a in (q, k, v))
    T, hd = q.shape[-2:]
    scores = np.einsum("bhid,bhjd->bhij", q, k) / np.float32(math.sqrt(hd))
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, np.float32(-1e9))
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


def attention_tensor(q, k, v):
    """Correct, returning a lora_np Tensor (the checker reads its data)."""
    import lora_np as ln

    return ln.functional.scaled_dot_product_attention(
        ln.Tensor(q), ln.Tensor(k), ln.Tensor(v), is_causal=True
    )


@pytest.mark.parametrize(
    "fn",
    [causal_attention_reference, attention_loops, attention_float32_finite_mask, attention_tensor],
)
def test_causal_attention_correct_versions_pass(fn, capsys):
    check_causal_attention(fn)
    assert "✓ causal_attention: all 10 checks passed" in capsys.readouterr().out


def make_attention(
    *,
    mask="future",
    fill=-np.inf,
    scale="sqrt",
    axis=-1,
    after=None,
    swap=False,
    use_v=True,
    stable="masked",
):
    """A configurable (mostly wrong) attention: each keyword is one classic mistake."""

    def attention(q, k, v):
        T, hd = q.shape[-2:]
        raw = (k @ q.swapaxes(-1, -2)) if swap else (q @ k.swapaxes(-1, -2))
        factor = {"sqrt": 1 / math.sqrt(hd), "none": 1.0, "hd": 1 / hd}[scale]
        scores = raw * factor
        hidden = {
            "future": np.triu(np.ones((T, T), bool), k=1),
            "with_diagonal": np.triu(np.ones((T, T), bool), k=0),
            "none": np.zeros((T, T), bool),
        }[mask]
        with np.errstate(all="ignore"):
            if after is None:
                scores = np.where(hidden, fill, scores)
                if stable == "masked":
                    scores = scores - scores.max(axis=axis, keepdims=True)
                weights = np.exp(scores)
                weights = weights / weights.sum(axis=axis, keepdims=True)
            else:  # softmax of every score, the mask afterwards
                if stable == "masked":
                    scores = scores - scores.max(axis=-1, keepdims=True)
                weights = np.exp(scores)
                weights = weights / weights.sum(axis=-1, keepdims=True)
                weights = np.where(hidden, 0.0, weights)
                if after == "renormalised":
                    weights = weights / weights.sum(axis=-1, keepdims=True)
            return weights @ v if use_v else weights

    return attention


def max_over_whole_row(q, k, v):
    """Stable-looking: subtracts the max over every key (the future too), then masks."""
    T, hd = q.shape[-2:]
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(hd)
    with np.errstate(all="ignore"):
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = np.where(np.triu(np.ones((T, T), bool), k=1), 0.0, weights)
        return weights / weights.sum(axis=-1, keepdims=True) @ v


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (make_attention(mask="none"), "without the causal mask"),
        (make_attention(mask="with_diagonal"), "also hides the diagonal"),
        (make_attention(mask="with_diagonal", fill=-1e9), "also hides the diagonal"),
        (make_attention(fill=0.0), "set to 0 instead of -inf"),
        (make_attention(scale="none"), "divide q kᵀ by √hd"),
        (make_attention(scale="hd"), "divided the scores by hd"),
        (make_attention(axis=-2), "over the queries"),
        (make_attention(axis=1), "over the heads"),
        (make_attention(axis=0), "over the batch"),
        (make_attention(after="plain"), "after the softmax without renormalising"),
        (make_attention(after="renormalised"), "mask is applied after the softmax"),
        (max_over_whole_row, "taken over the future keys too"),
        (make_attention(swap=True), "k qᵀ, not q kᵀ"),
        (make_attention(use_v=False), "Multiply them by v"),
        (make_attention(stable="no"), "exp overflowed"),
    ],
)
def test_causal_attention_mistakes_are_named(wrong, names):
    assert names in rejected(check_causal_attention, wrong)


def test_weights_returned_where_t_equals_hd_are_named():
    """Where T == hd the weights have the output's shape: named by value."""
    reference = causal_attention_reference

    def weights_if_square(q, k, v):
        if q.shape[-2] != q.shape[-1]:
            return reference(q, k, v)
        return make_attention(use_v=False)(q, k, v)

    assert "you returned the attention weights" in rejected(
        check_causal_attention, weights_if_square
    )


def test_causal_attention_stub_non_callable_nan_and_in_place():
    def stub(q, k, v):
        raise NotImplementedError

    def scales_q_in_place(q, k, v):
        q /= math.sqrt(q.shape[-1])
        return causal_attention_reference(q * math.sqrt(q.shape[-1]), k, v)

    assert "not written yet" in rejected(check_causal_attention, stub)
    assert "expected your function" in rejected(check_causal_attention, None)
    assert "in place" in rejected(check_causal_attention, scales_q_in_place)
    nan = rejected(
        check_causal_attention, lambda q, k, v: causal_attention_reference(q, k, v) * np.nan
    )
    assert "NaN" in nan
    shape = rejected(check_causal_attention, lambda q, k, v: q[..., :1])
    assert "returned shape" in shape
    raised = rejected(check_causal_attention, lambda q, k, v: q @ k)
    assert "raised ValueError" in raised


def test_causal_attention_falls_back_to_the_library(capsys):
    assert passing_or_reference(attention_loops, "causal_attention") is attention_loops
    wrong = make_attention(mask="none")
    assert passing_or_reference(wrong, "causal_attention") is causal_attention_reference
    assert "using the library's causal_attention" in capsys.readouterr().out


def test_split_heads_falls_back_to_the_library(capsys):
    assert passing_or_reference(split_heads_loops, "split_heads") is split_heads_loops
    assert passing_or_reference(lambda x, nh: x, "split_heads") is split_heads_reference
    assert "using the library's split_heads" in capsys.readouterr().out


# ------------------------------------------------------------------ precision and more names
def attention_promoted_to_float64(q, k, v):
    """Correct: `/ np.sqrt(hd)` (a float64 scalar) promotes float32 scores to float64."""
    T, hd = q.shape[-2], q.shape[-1]
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(hd)
    scores = np.where(np.triu(np.ones((T, T), bool), k=1), -np.inf, scores)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True) @ v


def test_float32_inputs_promoted_to_float64_pass():
    check_causal_attention(attention_promoted_to_float64, quiet=True)


def _attention_with(q, k, v, hide, scale):
    T = q.shape[-2]
    scores = q @ k.swapaxes(-1, -2) / scale
    scores = np.where(hide(T), -np.inf, scores)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True) @ v


def test_a_mask_on_the_wrong_side_is_named():
    def past_masked(q, k, v):
        hide = lambda T: np.tril(np.ones((T, T), bool), k=-1)  # noqa: E731
        return _attention_with(q, k, v, hide, math.sqrt(q.shape[-1]))

    assert "wrong side" in rejected(check_causal_attention, past_masked)


def test_a_scale_of_sqrt_T_is_named():
    def over_sqrt_T(q, k, v):
        hide = lambda T: np.triu(np.ones((T, T), bool), k=1)  # noqa: E731
        return _attention_with(q, k, v, hide, math.sqrt(q.shape[-2]))

    assert "√T" in rejected(check_causal_attention, over_sqrt_T)
