"""check_numerical_gradient accepts independent central differences and names each mistake."""

from __future__ import annotations

import numpy as np
import pytest

from lora_np.checks import ExerciseError, check_numerical_gradient, passing_or_reference
from lora_np.checks.numerical import numerical_gradient_reference


def on_copies(f, x, eps):
    """Written differently: a fresh copy of x for each of the two points, flat indices."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.empty(x.size)
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = eps
        step = step.reshape(x.shape)
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad.reshape(x.shape)


def in_place_restored(f, x, eps):
    """Written differently: moves x itself and puts each entry back from a saved value."""
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        saved = x[index]
        x[index] = saved + eps
        above = f(x)
        x[index] = saved - eps
        below = f(x)
        x[index] = saved
        grad[index] = (above - below) / (2 * eps)
    return grad


def forward(f, x, eps):
    x = x.copy()
    grad = np.zeros_like(x)
    base = f(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        grad[i] = (f(x) - base) / eps
        x[i] = old
    return grad


def not_restored(f, x, eps):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += eps
        above = f(x)
        x[i] -= 2 * eps
        below = f(x)
        grad[i] = (above - below) / (2 * eps)  # x[i] is left at old - eps
    return grad


def restored_by_arithmetic(f, x, eps):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x[i] += eps
        above = f(x)
        x[i] -= 2 * eps
        below = f(x)
        x[i] += eps  # old + eps - 2 eps + eps: not always old, in floating point
        grad[i] = (above - below) / (2 * eps)
    return grad


def aliased(f, x, eps):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x_plus = x  # no copy: the same array as x
        x_plus[i] += eps
        above = f(x_plus)
        x_minus = x  # the same array again, still moved up by eps
        x_minus[i] -= eps
        below = f(x_minus)  # f(x): the step down only undid the step up
        grad[i] = (above - below) / (2 * eps)
    return grad


def aliased_late(f, x, eps):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x_plus, x_minus = x, x  # no copies
        x_plus[i] += eps
        x_minus[i] -= eps
        grad[i] = (f(x_plus) - f(x_minus)) / (2 * eps)  # f sees one array twice
    return grad


def big_step(f, x, eps):
    return numerical_gradient_reference(f, x, 0.1)  # eps ignored, a step far too large


def own_step(f, x, eps):
    return numerical_gradient_reference(f, x, 1e-6)  # eps ignored, the learner's favourite


def over_eps(f, x, eps):
    return 2 * numerical_gradient_reference(f, x, eps)  # divided by eps, not 2 eps


def rejected(fn) -> str:
    with pytest.raises(ExerciseError) as info:
        check_numerical_gradient(fn, quiet=True)
    return str(info.value)


@pytest.mark.parametrize("fn", [numerical_gradient_reference, on_copies, in_place_restored])
def test_correct_versions_pass(fn, capsys):
    check_numerical_gradient(fn)
    assert "✓ numerical_gradient: all 6 checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, phrase",
    [
        (forward, "forward difference"),
        (not_restored, "was not put back"),
        (restored_by_arithmetic, "changed by rounding"),
        (aliased, "x_plus and x_minus are x itself"),
        (aliased_late, "Every entry is 0"),
        (big_step, "far larger than the eps"),
        (own_step, "use the eps argument"),
        (over_eps, "divide by 2 * eps"),
    ],
    ids=[
        "forward",
        "not restored",
        "restored by arithmetic",
        "aliased",
        "aliased late",
        "big step",
        "own step",
        "2 eps",
    ],
)
def test_each_mistake_is_named(fn, phrase):
    message = rejected(fn)
    assert phrase in message, message


def test_bad_returns_are_refused_clearly():
    assert "did you forget `return`" in rejected(lambda f, x, eps: None)
    assert "returned shape" in rejected(lambda f, x, eps: np.zeros(3))
    assert "expected numbers" in rejected(lambda f, x, eps: [0.0] * x.size)


def test_f_explains_a_wrong_argument():
    assert "f expects an array of shape" in rejected(lambda f, x, eps: f(list(x.flat)))


def test_passing_or_reference_falls_back_to_the_library(capsys):
    assert passing_or_reference(on_copies, "numerical_gradient") is on_copies
    assert passing_or_reference(forward, "numerical_gradient") is numerical_gradient_reference
    assert "using the library's numerical_gradient" in capsys.readouterr().out
