"""The notebook-02 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_lora_forward, check_lora_grads, check_merge
from lora_np.checks._harness import ExerciseError
from lora_np.checks.layer import lora_forward_reference, lora_grads_reference, merge_reference

# ----------------------------------------------------------------------------- lora_forward


def forward(x, W0, b, A, B, scaling):
    h = x @ W0.T + scaling * (x @ A.T) @ B.T
    return h if b is None else h + b


def forward_by_loops(x, W0, b, A, B, scaling):
    """Correct, written differently: one token at a time, the update formed as B A, float32."""
    n, d = x.shape[0], W0.shape[0]
    delta = (B.astype(np.float32) @ A.astype(np.float32)) * np.float32(scaling)  # (d, k)
    h = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        h[i] = (W0.astype(np.float32) + delta) @ x[i].astype(np.float32)
        if b is not None:
            h[i] += b
    return h


def test_forward_reference_and_independent_solutions_pass(capsys):
    check_lora_forward(lora_forward_reference)
    assert "lora_forward: all 5 checks passed" in capsys.readouterr().out
    check_lora_forward(forward, quiet=True)
    check_lora_forward(forward_by_loops, quiet=True)
    check_lora_forward(lambda *a: ln.Tensor(forward(*a)), quiet=True)  # a Tensor is read too


def _bias(b):
    return 0.0 if b is None else b


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda x, W0, b, A, B, s: forward(x, W0, b, A, B, 1.0), "factor `scaling`"),
        (lambda x, W0, b, A, B, s: forward(x, W0, b, A, B, s * s), "scaling applied twice"),
        (lambda x, W0, b, A, B, s: s * forward(x, W0, b, A, B, 1.0), "whole output"),
        (lambda x, W0, b, A, B, s: forward(x, W0, None, A, B, s), "bias b is missing"),
        (lambda x, W0, b, A, B, s: forward(x, W0, b, A, B, s) + _bias(b), "added twice"),
        (lambda x, W0, b, A, B, s: x @ W0 + _bias(b) + s * (x @ A.T) @ B.T, "x @ W0"),
        (lambda x, W0, b, A, B, s: x @ W0.T + _bias(b) + s * x @ B @ A, "x @ B @ A"),
    ],
    ids=["no-scaling", "scaling-twice", "scaled-all", "no-bias", "bias-twice", "W0", "BA"],
)
def test_each_forward_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_lora_forward(wrong)
    assert phrase in str(info.value), str(info.value)


def test_forward_transposes_fail_loudly_on_non_square_shapes():
    def w0_not_transposed(x, W0, b, A, B, s):  # passes the square case only by luck of shape
        if W0.shape[0] == W0.shape[1]:
            return forward(x, W0, b, A, B, s)
        return x @ W0 + s * (x @ A.T) @ B.T

    with pytest.raises(ExerciseError) as info:
        check_lora_forward(w0_not_transposed)
    assert "raised ValueError" in str(info.value) and "transpose" in str(info.value)


def test_forward_without_a_none_check_on_b_is_explained():
    with pytest.raises(ExerciseError) as info:
        check_lora_forward(lambda x, W0, b, A, B, s: x @ W0.T + b + s * (x @ A.T) @ B.T)
    assert "b can be None" in str(info.value)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        ("not a function", "expected your function"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda *a: forward(*a).T, "transposed"),
        (lambda *a: forward(*a)[:, :-1], "returned shape"),
        (lambda *a: forward(*a) * np.nan, "NaN"),
        (lambda *a: None, "forget `return`"),
    ],
    ids=["not-callable", "stub", "transposed", "shape", "nan", "none"],
)
def test_forward_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_lora_forward(bad)
    assert phrase in str(info.value), str(info.value)


def test_forward_reference_keeps_the_dtype_and_matches_the_formula():
    rng = np.random.default_rng(0)
    x, W0, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    A, B = rng.standard_normal((2, 5)), rng.standard_normal((4, 2))
    h = lora_forward_reference(x, W0, b, A, B, 1.5)
    assert h.dtype == np.float64 and np.abs(h - forward(x, W0, b, A, B, 1.5)).max() < 1e-12
    args32 = [a.astype(np.float32) for a in (x, W0, b, A, B)]
    assert lora_forward_reference(*args32, 1.5).dtype == np.float32


# ----------------------------------------------------------------------------- lora_grads


def grads(x, A, B, scaling, grad_h):
    return scaling * (grad_h @ B).T @ x, scaling * grad_h.T @ (x @ A.T)


def grads_by_outer_products(x, A, B, scaling, grad_h):
    """Correct, written differently: a sum of one outer product per token, as a list, float32."""
    x, A, B, g = (np.asarray(a, dtype=np.float32) for a in (x, A, B, grad_h))
    grad_A, grad_B = np.zeros_like(A), np.zeros_like(B)
    for x_n, g_n in zip(x, g):
        grad_B += scaling * np.outer(g_n, A @ x_n)
        grad_A += scaling * np.outer(B.T @ g_n, x_n)
    return [grad_A, grad_B]


def test_grads_reference_and_independent_solutions_pass(capsys):
    check_lora_grads(lora_grads_reference)
    assert "lora_grads: all 4 checks passed" in capsys.readouterr().out
    check_lora_grads(grads, quiet=True)
    check_lora_grads(grads_by_outer_products, quiet=True)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda x, A, B, s, g: grads(x, A, B, s, g / x.shape[0]), "AVERAGED"),
        (lambda x, A, B, s, g: grads(x, A, B, 1.0, g), "factor `scaling`"),
        (lambda x, A, B, s, g: (grads(x, A, B, s, g)[0], grads(x, A, B, 1.0, g)[1]), "grad_B"),
        (lambda x, A, B, s, g: grads(x, A, B, s * s, g), "scaling applied twice"),
        (lambda x, A, B, s, g: grads(x, A, B, s, g)[::-1], "(grad_B, grad_A)"),
        (lambda x, A, B, s, g: (grads(x, A, B, s, g)[0].T, grads(x, A, B, s, g)[1]), "transposed"),
        (lambda x, A, B, s, g: (grads(x, A, B, s, g)[0], grads(x, A, B, s, g)[1].T), "transposed"),
        (lambda x, A, B, s, g: (s * x.T @ (g @ B), grads(x, A, B, s, g)[1]), "transposed"),
        (lambda x, A, B, s, g: grads(x, A, B, s, g)[0], "expected a pair"),
    ],
    ids=["averaged", "no-scaling", "B-unscaled", "twice", "swapped", "A.T", "B.T", "xT", "one"],
)
def test_each_grads_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_lora_grads(wrong)
    assert phrase in str(info.value), str(info.value)


def test_grads_bad_answers_give_clear_messages():
    with pytest.raises(ExerciseError, match="not written yet"):
        check_lora_grads(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="NaN"):
        check_lora_grads(lambda *a: (grads(*a)[0] * np.nan, grads(*a)[1]))
    with pytest.raises(ExerciseError, match="forget `return`"):
        check_lora_grads(lambda *a: None)


def test_grads_reference_agrees_with_the_formula():
    rng = np.random.default_rng(1)
    x, A, B = rng.standard_normal((4, 5)), rng.standard_normal((2, 5)), rng.standard_normal((3, 2))
    g = rng.standard_normal((4, 3))
    for got, want in zip(lora_grads_reference(x, A, B, 0.7, g), grads(x, A, B, 0.7, g)):
        assert np.abs(got - want).max() < 1e-12


# ----------------------------------------------------------------------------- merge


def merge(W0, A, B, scaling):
    return W0 + scaling * (B @ A)


def merge_by_copy(W0, A, B, scaling):
    """Correct, written differently: copy, then add one rank-one layer at a time."""
    W = np.array(W0, dtype=np.float64, copy=True)
    for i in range(A.shape[0]):
        W += scaling * np.outer(B[:, i], A[i])
    return W


def test_merge_reference_and_independent_solutions_pass(capsys):
    check_merge(merge_reference)
    assert "merge: all 4 checks passed" in capsys.readouterr().out
    check_merge(merge, quiet=True)
    check_merge(merge_by_copy, quiet=True)


def _in_place(W0, A, B, s):
    W0 += s * (B @ A)
    return W0


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (_in_place, "changed W0 in place"),
        (lambda W0, A, B, s: W0 + B @ A, "factor `scaling`"),
        (lambda W0, A, B, s: s * (B @ A), "update scaling · B A alone"),
        (lambda W0, A, B, s: W0 + s * (A.T @ B.T), "in that order"),
        (lambda W0, A, B, s: W0 + s * (A @ B), "order of the factors"),
        (lambda W0, A, B, s: W0 - s * (B @ A), "adds the update"),
        (lambda W0, A, B, s: W0 + s * s * (B @ A), "scaling applied twice"),
        (lambda W0, A, B, s: W0, "returned W0 itself"),
        (lambda W0, A, B, s: (W0 + s * (B @ A)).T, "transposed"),
    ],
    ids=["in-place", "no-scaling", "delta", "AtBt", "AB", "minus", "twice", "W0", "T"],
)
def test_each_merge_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_merge(wrong)
    assert phrase in str(info.value), str(info.value)


def test_merge_reference_leaves_inputs_and_the_random_stream_alone():
    rng = np.random.default_rng(2)
    W0, A, B = rng.standard_normal((5, 7)), rng.standard_normal((2, 7)), rng.standard_normal((5, 2))
    W0_before = W0.copy()
    ln.manual_seed(3)
    first = ln.backend.rng().random()
    ln.manual_seed(3)
    merged = merge_reference(W0, A, B, -0.25)  # any finite scaling, negative too
    assert ln.backend.rng().random() == first  # the library's stream did not move
    assert np.array_equal(W0, W0_before)
    assert np.abs(merged - merge(W0, A, B, -0.25)).max() < 1e-12
    assert merge_reference(W0.astype(np.float32), A, B, 2.0).dtype == np.float32


def test_passing_or_reference_for_the_layer_exercises(capsys):
    assert ln.checks.passing_or_reference(forward, "lora_forward") is forward
    assert ln.checks.passing_or_reference(grads, "lora_grads") is grads
    fallback = ln.checks.passing_or_reference(lambda *a: None, "merge")
    assert fallback is merge_reference
    assert "using the library's merge" in capsys.readouterr().out


# ----------------------------------------------------------------------------- soundness


def test_a_forward_that_merges_into_W0_is_refused():
    def merges_into_W0(x, W0, b, A, B, s):
        W0 += s * B @ A  # the classic: the frozen weight changed, a later cell breaks
        return x @ W0.T + _bias(b)

    with pytest.raises(ExerciseError, match="changed its input W0"):
        check_lora_forward(merges_into_W0)


def test_grads_that_scale_grad_h_in_place_are_refused():
    def scales_grad_h(x, A, B, s, g):
        g *= s
        return (g @ B).T @ x, g.T @ (x @ A.T)

    with pytest.raises(ExerciseError, match="changed its input grad_h"):
        check_lora_grads(scales_grad_h)


def test_ragged_grads_are_named():
    with pytest.raises(ExerciseError, match="3 items"):
        check_lora_grads(lambda x, A, B, s, g: (A, B, x))


def test_scaling_divided_by_r_again_is_named_in_merge_and_forward():
    with pytest.raises(ExerciseError, match="do not divide by r again"):
        check_merge(lambda W0, A, B, s: W0 + (s / A.shape[0]) * B @ A)
    with pytest.raises(ExerciseError, match="do not divide by r again"):
        check_lora_forward(lambda x, W0, b, A, B, s: forward(x, W0, b, A, B, s / A.shape[0]))
