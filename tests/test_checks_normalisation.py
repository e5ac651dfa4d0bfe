"""The notebook-06 layer-norm backward checker accepts correct answers written any way and names
each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_layer_norm_backward
from lora_np.checks._harness import ExerciseError
from lora_np.checks.normalisation import layer_norm_backward_reference

# ----------------------------------------------------------------------------- correct solutions


def backward_by_formula(x, weight, bias, grad_out, eps):
    """Correct: the compact formula, the means over the last axis."""
    mu = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    x_hat = (x - mu) * rstd
    g_hat = grad_out * weight
    dx = rstd * (
        g_hat
        - g_hat.mean(axis=-1, keepdims=True)
        - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True)
    )
    leading = tuple(range(x.ndim - 1))
    return dx, (grad_out * x_hat).sum(axis=leading), grad_out.sum(axis=leading)


def backward_by_chain_rule(x, weight, bias, grad_out, eps):
    """Correct, written step by step through μ and var (the computational graph), on rows."""
    C = x.shape[-1]
    rows, g = x.reshape(-1, C).astype(np.float64), grad_out.reshape(-1, C).astype(np.float64)
    mu = rows.sum(axis=1, keepdims=True) / C
    centred = rows - mu
    var = (centred**2).sum(axis=1, keepdims=True) / C
    inv = (var + eps) ** -0.5
    x_hat = centred * inv
    d_x_hat = g * weight
    d_inv = (d_x_hat * centred).sum(axis=1, keepdims=True)
    d_var = d_inv * -0.5 * (var + eps) ** -1.5
    d_centred = d_x_hat * inv + d_var * 2.0 * centred / C
    d_mu = -d_centred.sum(axis=1, keepdims=True)
    dx = d_centred + d_mu / C
    return dx.reshape(x.shape), (g * x_hat).sum(axis=0), g.sum(axis=0)


def backward_by_jacobian(x, weight, bias, grad_out, eps):
    """Correct, with the full (C, C) Jacobian of each row, looped, in float32 where given."""
    C = x.shape[-1]
    rows, g = x.reshape(-1, C), grad_out.reshape(-1, C)
    dx = np.empty_like(rows)
    dweight = np.zeros(C, dtype=x.dtype)
    for n in range(rows.shape[0]):
        centred = rows[n] - rows[n].mean()
        sigma = np.sqrt(np.mean(centred**2) + eps)
        x_hat = centred / sigma
        jacobian = (np.eye(C) - 1.0 / C - np.outer(x_hat, x_hat) / C) / sigma  # d x_hat / d x
        dx[n] = jacobian.T @ (g[n] * weight)
        dweight += g[n] * x_hat
    return dx.reshape(x.shape), dweight, g.sum(axis=0)


def test_reference_and_independent_solutions_pass(capsys):
    check_layer_norm_backward(layer_norm_backward_reference)
    assert "layer_norm_backward: all 7 checks passed" in capsys.readouterr().out
    for solution in (backward_by_formula, backward_by_chain_rule, backward_by_jacobian):
        check_layer_norm_backward(solution, quiet=True)


def test_the_reference_is_the_engines_backward_and_a_central_difference_agrees():
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    dx, dw, db = layer_norm_backward_reference(x, w, b, g, 1e-5)

    def loss(x_):
        return float(
            np.sum(
                g
                * ln.functional.layer_norm(ln.Tensor(x_), ln.Tensor(w), ln.Tensor(b), 1e-5).numpy()
            )
        )

    h = 1e-6
    numerical = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numerical[index] = (loss(up) - loss(down)) / (2 * h)
    assert np.allclose(dx, numerical, atol=1e-6)
    assert np.allclose(db, g.sum(axis=0)) and dw.shape == (5,)


# ----------------------------------------------------------------------------- named mistakes


def _stats(x, eps, axis=-1, ddof=0):
    mu = x.mean(axis=axis, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=axis, keepdims=True, ddof=ddof) + eps)
    return (x - mu) * rstd, rstd


def _sum_rows(a):
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def _with(dx=None, dweight=None, dbias=None):
    """A solution that is right except where one of its parts is replaced."""

    def solution(x, weight, bias, grad_out, eps):
        right = backward_by_formula(x, weight, bias, grad_out, eps)
        parts = (dx, dweight, dbias)
        return tuple(
            part(x, weight, grad_out, eps) if part else value for part, value in zip(parts, right)
        )

    return solution


def _no_means(x, w, g, eps):
    x_hat, rstd = _stats(x, eps)
    return rstd * g * w


def _no_mu_term(x, w, g, eps):
    x_hat, rstd = _stats(x, eps)
    gh = g * w
    return rstd * (gh - x_hat * (gh * x_hat).mean(axis=-1, keepdims=True))


def _no_var_term(x, w, g, eps):
    x_hat, rstd = _stats(x, eps)
    gh = g * w
    return rstd * (gh - gh.mean(axis=-1, keepdims=True))


def _unbiased(x, w, g, eps):
    x_hat, rstd = _stats(x, eps, ddof=1)  # np.std(ddof=1) in the forward recomputation
    gh = g * w
    return rstd * (
        gh - gh.mean(axis=-1, keepdims=True) - x_hat * (gh * x_hat).mean(axis=-1, keepdims=True)
    )


def _unbiased_var_term(x, w, g, eps):
    x_hat, rstd = _stats(x, eps)
    gh = g * w
    C = x.shape[-1]
    return rstd * (
        gh
        - gh.mean(axis=-1, keepdims=True)
        - x_hat * (gh * x_hat).sum(axis=-1, keepdims=True) / (C - 1)
    )


def _axis0(x, w, g, eps):
    x_hat, rstd = _stats(x, eps, axis=0)
    gh = g * w
    return rstd * (
        gh - gh.mean(axis=0, keepdims=True) - x_hat * (gh * x_hat).mean(axis=0, keepdims=True)
    )


def _no_eps(x, w, g, eps):
    return backward_by_formula(x, w, None, g, 0.0)[0]


def _no_weight(x, w, g, eps):
    return backward_by_formula(x, np.ones_like(w), None, g, eps)[0]


def _no_rstd(x, w, g, eps):
    x_hat, rstd = _stats(x, eps)
    return backward_by_formula(x, w, None, g, eps)[0] / rstd


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (_with(dx=_no_means), "mean terms dropped"),
        (_with(dx=_no_mu_term), "path through the mean"),
        (_with(dx=_no_var_term), "path through the variance"),
        (_with(dx=_unbiased), "UNBIASED"),
        (_with(dx=_unbiased_var_term), "divides by C - 1"),
        (_with(dx=_axis0), "wrong axis"),
        (_with(dx=_no_eps), "eps left out"),
        (_with(dx=_no_weight), "weight left out"),
        (_with(dx=_no_rstd), "final factor 1/σ"),
        (_with(dweight=lambda x, w, g, eps: _sum_rows(g * x)), "the input"),
        (_with(dweight=lambda x, w, g, eps: _sum_rows(g * _stats(x, eps, ddof=1)[0])), "UNBIASED"),
        (
            _with(dweight=lambda x, w, g, eps: _sum_rows(g * _stats(x, eps, axis=0)[0])),
            "wrong axis",
        ),
        (
            _with(
                dweight=lambda x, w, g, eps: (
                    _sum_rows(g * _stats(x, eps)[0]) / (g.size // g.shape[-1])
                )
            ),
            "AVERAGED",
        ),
        (_with(dbias=lambda x, w, g, eps: g.reshape(-1, g.shape[-1]).mean(axis=0)), "AVERAGED"),
        (_with(dbias=lambda x, w, g, eps: _sum_rows(g * w)), "grad_out · weight"),
    ],
    ids=[
        "no-means",
        "no-mu-term",
        "no-var-term",
        "unbiased",
        "unbiased-var-term",
        "axis-0",
        "no-eps",
        "no-weight",
        "no-rstd",
        "dweight-raw-x",
        "dweight-unbiased",
        "dweight-axis-0",
        "dweight-mean",
        "dbias-mean",
        "dbias-weighted",
    ],
)
def test_each_classic_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_layer_norm_backward(wrong)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "dweight, phrase",
    [
        (lambda x, w, g, eps: (g * _stats(x, eps)[0]).sum(axis=-1), "summed over the LAST axis"),
        (lambda x, w, g, eps: (g * _stats(x, eps)[0]).sum(axis=0), "axis 0 only"),
        (lambda x, w, g, eps: g * _stats(x, eps)[0], "every axis but the last"),
    ],
    ids=["last-axis", "axis-0-only", "not-summed"],
)
def test_dweight_summed_over_the_wrong_axes_is_named(dweight, phrase):
    with pytest.raises(ExerciseError) as info:
        check_layer_norm_backward(_with(dweight=dweight))
    assert phrase in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- soundness


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (None, "expected your function"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda *a: None, "forget `return`"),
        (lambda x, w, b, g, eps: backward_by_formula(x, w, b, g, eps)[:2], "expected 3 items"),
        (lambda x, w, b, g, eps: backward_by_formula(x, w, b, g, eps)[::-1], "in the order"),
        (lambda x, w, b, g, eps: [np.nan * x, w, b], "NaN"),
    ],
    ids=["not-callable", "stub", "none", "two-items", "reversed", "nan"],
)
def test_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_layer_norm_backward(bad)
    assert phrase in str(info.value), str(info.value)


def test_changing_an_input_is_refused():
    def in_place(x, weight, bias, grad_out, eps):
        result = backward_by_formula(x, weight, bias, grad_out, eps)
        grad_out *= weight  # g_hat computed in place
        return result

    with pytest.raises(ExerciseError, match="changed its input grad_out"):
        check_layer_norm_backward(in_place)


def test_the_learners_own_line_is_shown():
    def broken(x, weight, bias, grad_out, eps):
        return x @ weight.reshape(1, -1)  # a shape error on the learner's line

    with pytest.raises(ExerciseError) as info:
        check_layer_norm_backward(broken)
    assert "ValueError" in str(info.value) and "x @ weight" in str(info.value), str(info.value)


def test_cases_cover_the_edges():
    seen = []

    def spy(x, weight, bias, grad_out, eps):
        seen.append((x.shape, x.dtype, eps, float(np.abs(x.mean()))))
        return layer_norm_backward_reference(x, weight, bias, grad_out, eps)

    check_layer_norm_backward(spy, quiet=True)
    assert {len(shape) for shape, *_ in seen} >= {2, 3, 4}
    assert any(len(s) == 2 and s[0] == s[1] for s, *_ in seen)  # square: axis 0 runs
    assert any(dtype == np.float32 for _, dtype, *_ in seen)
    assert any(eps >= 0.1 for *_, eps, _ in seen) and any(m > 10 for *_, m in seen)


def test_passing_or_reference_falls_back_to_the_library(capsys):
    mine = ln.checks.passing_or_reference(backward_by_formula, "layer_norm_backward")
    assert mine is backward_by_formula
    fallback = ln.checks.passing_or_reference(_with(dx=_no_means), "layer_norm_backward")
    assert fallback is layer_norm_backward_reference
    assert "using the library's layer_norm_backward" in capsys.readouterr().out
