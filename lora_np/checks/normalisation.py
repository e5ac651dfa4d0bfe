"""Checker for notebook 06 (the tiny transformer): the backward of layer norm, derived by hand.

The reference is the engine's own backward through :func:`lora_np.functional.layer_norm`
(normalised over the last axis, the variance's mean taken over the C channels, ``eps`` inside the
square root). The cases have x of two, three and four dimensions, one square x (N = C, where
normalising over axis 0 runs and gives wrong numbers), rows far from zero mean, a large ``eps``
(so that leaving it out shows), and a float32 case.
"""

from __future__ import annotations

from .. import backend, functional
from ..autograd import Tensor
from ._harness import (
    ExerciseError,
    as_array,
    as_items,
    call,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = ["check_layer_norm_backward", "layer_norm_backward_reference"]


def layer_norm_backward_reference(x, weight, bias, grad_out, eps):
    """(dx, dweight, dbias) of ``F.layer_norm(x, weight, bias, eps)`` by the engine's backward.

    Args:
        x: (..., C); weight, bias: (C,); grad_out: (..., C) = dL/d(output); eps: a number.
    Returns:
        dx (..., C), dweight (C,), dbias (C,): NumPy arrays of the inputs' dtype.
    """
    x_t = Tensor(np.array(x), requires_grad=True)
    w_t = Tensor(np.array(weight), requires_grad=True)
    b_t = Tensor(np.array(bias), requires_grad=True)
    out = functional.layer_norm(x_t, w_t, b_t, float(eps))
    out.backward(Tensor(np.asarray(grad_out, dtype=out.numpy().dtype)))
    return tuple(backend.to_numpy(t.grad) for t in (x_t, w_t, b_t))


# (shape, eps, x's scale, x's offset, dtype, description)
_CASES = [
    ((6, 5), 1e-5, 1.0, 0.0, "float64", "x (6, 5), eps 1e-5"),
    ((2, 3, 8), 1e-5, 2.0, 0.0, "float64", "x (2, 3, 8): a batch of sequences, eps 1e-5"),
    ((5, 5), 1e-5, 1.0, 0.0, "float64", "a square x (5, 5), eps 1e-5"),
    ((4, 7), 0.5, 0.3, 0.0, "float64", "x (4, 7) with a small spread and a large eps 0.5"),
    ((3, 6), 1e-5, 0.5, 40.0, "float64", "x (3, 6) whose rows sit near 40, not 0"),
    ((2, 2, 3, 4), 1e-3, 1.0, 1.0, "float64", "x (2, 2, 3, 4), eps 1e-3"),
    ((3, 4, 6), 1e-5, 1.0, 0.0, "float32", "float32 x (3, 4, 6), eps 1e-5"),
]


def _inputs():
    """(x, weight, bias, grad_out, eps, description) per case; the same on every call."""
    rng = np.random.default_rng(20260606)
    for shape, eps, scale, offset, dtype, case in _CASES:
        C = shape[-1]
        x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        weight = (1.0 + 0.5 * rng.standard_normal(C)).astype(dtype)  # not all ones
        bias = rng.standard_normal(C).astype(dtype)
        grad_out = rng.standard_normal(shape).astype(dtype)
        yield x, weight, bias, grad_out, eps, case


def _normalised(x, eps, axis=-1, ddof=0):
    """(x_hat, rstd) with the statistics over ``axis``, the variance divided by n - ddof."""
    mu = x.mean(axis=axis, keepdims=True)
    var = ((x - mu) ** 2).sum(axis=axis, keepdims=True) / (x.shape[axis] - ddof)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mu) * rstd, rstd


def _dx(g_hat, x_hat, rstd, axis=-1, var_divisor=None):
    """rstd · (g_hat - mean(g_hat) - x_hat · mean(g_hat · x_hat)), the means over ``axis``."""
    n = g_hat.shape[axis] if var_divisor is None else var_divisor
    mean_g = g_hat.mean(axis=axis, keepdims=True)
    mean_gx = (g_hat * x_hat).sum(axis=axis, keepdims=True) / n
    return rstd * (g_hat - mean_g - x_hat * mean_gx)


def _rows(a):
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def _mistakes(x, w, g, eps):
    """([dx mistakes], [dweight mistakes], [dbias mistakes]): the classic wrong versions."""
    C = x.shape[-1]
    x_hat, rstd = _normalised(x, eps)
    g_hat = g * w
    unbiased_hat, unbiased_rstd = _normalised(x, eps, ddof=1)
    axis0_hat, axis0_rstd = _normalised(x, eps, axis=0)
    no_eps_hat, no_eps_rstd = _normalised(x, 0.0)
    means = (
        "x_hat depends on every entry of its row through the row's mean and variance, so dx "
        "carries two more terms: minus mean(g_hat) and minus x_hat · mean(g_hat · x_hat)."
    )
    mixed = (
        "the forward's variance is the BIASED one (divided by C, np.var's default), and every "
        "mean in the backward divides by C too; dividing by C - 1 (ddof=1, unbiased) anywhere "
        "mixes the two."
    )
    axis = (
        "you normalised over axis 0 (down the rows); layer norm normalises each row over its "
        "LAST axis, the C channels: take the means with axis=-1, keepdims=True."
    )
    dx = [
        (f"It matches dx = g_hat / σ with the mean terms dropped: {means}", rstd * g_hat),
        (
            "It matches dx without the term minus mean(g_hat), the path through the mean μ: "
            + means,
            rstd * (g_hat - x_hat * (g_hat * x_hat).mean(axis=-1, keepdims=True)),
        ),
        (
            "It matches dx without the term minus x_hat · mean(g_hat · x_hat), the path through "
            "the variance: " + means,
            rstd * (g_hat - g_hat.mean(axis=-1, keepdims=True)),
        ),
        (
            "It matches dx with σ from the UNBIASED variance (divided by C - 1): " + mixed,
            _dx(g_hat, unbiased_hat, unbiased_rstd),
        ),
        (
            "It matches dx whose variance term divides by C - 1: " + mixed,
            _dx(g_hat, x_hat, rstd, var_divisor=C - 1),
        ),
        (
            f"It matches dx with the statistics over the wrong axis: {axis}",
            _dx(g_hat, axis0_hat, axis0_rstd, axis=0),
        ),
        (
            "It matches dx with eps left out: the forward divides by sqrt(var + eps), and so "
            "does the backward.",
            _dx(g_hat, no_eps_hat, no_eps_rstd),
        ),
        (
            "It matches dx with the weight left out: the gradient reaching x_hat is "
            "g_hat = grad_out · weight.",
            _dx(g, x_hat, rstd),
        ),
        (
            "It matches dx without the final factor 1/σ = 1/sqrt(var + eps): x_hat = (x - μ)/σ, "
            "so every path into x passes through the division by σ.",
            _dx(g_hat, x_hat, np.ones_like(rstd)),
        ),
    ]
    dweight = [
        (
            "It matches dweight summed over grad_out · x, the input: the weight multiplies the "
            "NORMALISED x_hat, so dweight = Σ grad_out · x_hat.",
            _rows(g * x),
        ),
        (
            "It matches dweight with x_hat from the UNBIASED variance (divided by C - 1): " + mixed,
            _rows(g * unbiased_hat),
        ),
        (
            f"It matches dweight with x_hat normalised over the wrong axis: {axis}",
            _rows(g * axis0_hat),
        ),
        (
            "It matches dweight AVERAGED over the rows: every position's output used the same "
            "weight, so the gradients add up (sum, not mean).",
            _rows(g * x_hat) / _rows(np.ones_like(g)),
        ),
        (
            "It matches dweight with eps left out of x_hat.",
            _rows(g * no_eps_hat),
        ),
    ]
    dbias = [
        (
            "It matches dbias AVERAGED over the rows: every position's output used the same bias, "
            "so the gradients add up (sum, not mean).",
            _rows(g) / _rows(np.ones_like(g)),
        ),
        (
            "It matches dbias summed over grad_out · weight: the bias is added after the scaling, "
            "so dbias = Σ grad_out.",
            _rows(g * w),
        ),
    ]
    return dx, dweight, dbias


def _shape_hint(got, name: str, case: str, x_shape, what: str) -> None:
    """An error naming the likely mistake when ``got`` has the wrong shape."""
    want = x_shape if what == "dx" else x_shape[-1:]
    if got.shape == tuple(want):
        return
    if what != "dx" and got.shape == tuple(x_shape[:-1]):
        hint = (
            "you summed over the LAST axis (the channels); there is one weight and one bias per "
            "channel, so sum over every axis but the last"
        )
    elif what != "dx" and len(x_shape) > 2 and got.shape == tuple(x_shape[1:]):
        hint = (
            "you summed over axis 0 only; x has more than one leading axis (batch and time), "
            "so sum over all of them, e.g. g.reshape(-1, C).sum(axis=0)"
        )
    elif what != "dx" and got.shape == tuple(x_shape):
        hint = "sum the per-position gradients over every axis but the last"
    else:
        hint = f"{what} has the shape of {'x' if what == 'dx' else 'the weight: (C,)'}"
    raise ExerciseError(
        f"{name}: the {what} it returned has shape {got.shape} on {case}; expected "
        f"{tuple(want)}: {hint}"
    )


@exercise("layer_norm_backward", layer_norm_backward_reference)
def check_layer_norm_backward(fn, *, quiet: bool = False) -> None:
    """Check ``fn(x, weight, bias, grad_out, eps)`` -> (dx (..., C), dweight (C,), dbias (C,)),
    the gradients of ``F.layer_norm(x, weight, bias, eps)`` (normalised over the last axis)
    given grad_out = dL/d(output), for x of any leading shape.

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise.
    """
    name = "layer_norm_backward"
    labels = ("x", "weight", "bias", "grad_out")
    n_cases = 0
    for x, weight, bias, grad_out, eps, case in _inputs():
        arrays64 = [a.astype(np.float64) for a in (x, weight, bias, grad_out)]
        want = layer_norm_backward_reference(*arrays64, eps)  # first, from private copies
        x64, w64, _, g64 = arrays64
        mistakes = _mistakes(x64, w64, g64, eps)
        given = [a.copy() for a in (x, weight, bias, grad_out)]
        before = snapshot(*given)
        got = call(fn, name, case, *given, eps)
        unchanged(name, case, labels, before, given)
        items = as_items(
            got, 3, name, case, "(dx, dweight, dbias), e.g. `return dx, dweight, dbias`"
        )
        arrays = [as_array(item, name, f"{case} ({what})") for item, what in zip(items, _WHAT)]
        if arrays[0].shape == (x.shape[-1],) and arrays[2].shape == x.shape:
            raise ExerciseError(
                f"{name} returned (dbias, dweight, dx) on {case}: return them in the order "
                "(dx, dweight, dbias)"
            )
        precision = precision_of(x, weight, bias, grad_out)
        for got_one, want_one, wrong, what in zip(arrays, want, mistakes, _WHAT):
            _shape_hint(got_one, name, case, x.shape, what)
            compare(got_one, want_one, name, case, wrong, what, precision)
        n_cases += 1
    passed(name, n_cases, quiet)


_WHAT = ("dx", "dweight", "dbias")
