"""Checker for notebook 00's gradient check: ``numerical_gradient(f, x, eps)``.

The learner's function returns the central difference (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)
for every entry i of an array x of any shape, and leaves x as it was given. The checker passes
its own eps and functions curved enough that the classic mistakes show: a forward difference,
a step other than the eps given (far too large, or one of the learner's own), 2 eps written as
eps, x left changed (an entry not put back, or put back by arithmetic, which rounding breaks),
and the two perturbed arrays being x itself (no copy, so both evaluations see one array).
"""

from __future__ import annotations

import math
from typing import Any

from ._guard import describe
from ._harness import ExerciseError, as_array, call, compare, exercise, np, passed

__all__ = ["check_numerical_gradient", "numerical_gradient_reference"]


def numerical_gradient_reference(f, x, eps):
    """Central differences of the scalar function ``f`` at ``x``, entry by entry.

    Args:
        f: takes an array of x's shape, returns a number.
        x: float array of any shape (not changed).
        eps: the step.
    Returns:
        grad: float64 array of x's shape, grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).
    """
    x = np.array(x, dtype=np.float64)  # a private copy: the caller's x is never touched
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        f_plus = float(f(x))
        x[i] = old - eps
        f_minus = float(f(x))
        x[i] = old  # the saved value: old + eps - eps need not round back to old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _difference(f, x, step: float, kind: str = "central"):
    """The wrong versions' answers: ``kind`` is "central", "forward", "half" (2 eps written
    as eps gives twice the answer; "half" divides by 4 eps) or "aliased" (x_plus and x_minus
    are x itself: f sees x + eps, then x again)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    f_x = float(f(x))
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + step
        f_plus = float(f(x))
        x[i] = old - step
        f_minus = float(f(x))
        x[i] = old
        grad[i] = {
            "central": (f_plus - f_minus) / (2 * step),
            "forward": (f_plus - f_x) / step,
            "double": (f_plus - f_minus) / step,
            "aliased": (f_plus - f_x) / (2 * step),
        }[kind]
    return grad


def _mistakes(f, x, eps) -> list:
    found = [
        (
            "That is the forward difference (f(x + eps) - f(x)) / eps: its error shrinks only "
            "like eps. Use the central difference (f(x + eps) - f(x - eps)) / (2 eps)",
            _difference(f, x, eps, "forward"),
        ),
        (
            "Off by a factor of 2: the two points x + eps and x - eps are 2 eps apart, so "
            "divide by 2 * eps",
            _difference(f, x, eps, "double"),
        ),
        (
            "Half of the forward difference: x_plus and x_minus are x itself (`x_minus = x` "
            "makes no copy), so f saw x + eps and then x again. Work on x.copy()",
            _difference(f, x, eps, "aliased"),
        ),
        (
            "Every entry is 0: x_plus and x_minus are x itself (`x_plus = x` makes no copy), "
            "so by the time f ran, both were the same array. Work on x.copy()",
            np.zeros(np.shape(x)),
        ),
    ]
    for step in (1.0, 0.5, 0.1, 1e-2):
        if step > 5 * eps:
            found.append(
                (
                    f"Your step looks like {step:g}, far larger than the eps = {eps:g} the "
                    "checker passed: use eps (a large step leaves an error of order step**2)",
                    _difference(f, x, step),
                )
            )
    for step in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        if not math.isclose(step, eps):
            found.append(
                (
                    f"Your step looks like {step:g}, not the eps = {eps:g} the checker passed: "
                    "use the eps argument",
                    _difference(f, x, step),
                )
            )
    return found


class _Curved:
    """A scalar function of an array of one shape, curved enough that a wrong step shows:
    sum(w * sin(3 x)) + (sum(x * v))**3 / 10, with fixed weights w and v."""

    def __init__(self, shape: tuple, rng):
        self.shape = shape
        self.w = rng.uniform(0.5, 1.5, size=shape)
        self.v = rng.standard_normal(shape)

    def __call__(self, x):
        # (0-d arithmetic gives a NumPy scalar, which is fine for shape ())
        if not isinstance(x, np.ndarray | np.floating) or np.shape(x) != self.shape:
            raise TypeError(
                f"f expects an array of shape {self.shape}, got {describe(x)}: pass f an array "
                "like x (x itself or a copy, moved by eps in one entry)"
            )
        return float(np.sum(self.w * np.sin(3 * x)) + np.sum(x * self.v) ** 3 / 10)


_CASES = [  # (shape, eps, what)
    ((4,), 1e-3, "a vector x of shape (4,)"),
    ((2, 3), 1e-3, "a matrix x of shape (2, 3): every entry, not only a row"),
    ((2, 2, 3), 1e-4, "x of shape (2, 2, 3)"),
    ((3, 1), 1e-2, "x of shape (3, 1) with eps = 1e-2"),
    ((), 1e-3, "a 0-d array x (shape ()): one entry"),
    ((25,), 1e-5, "x of shape (25,), entries with many digits (a restore by arithmetic shows)"),
]


def _left_changed(name: str, case: str, before, after, eps: float) -> None:
    if np.array_equal(before, after):
        return
    moved = np.abs(after - before)
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(moved)), moved.shape))
    largest = float(moved.max())
    if largest < 1e-3 * eps:
        why = (
            "changed by rounding: putting an entry back with `x[i] += eps` after `x[i] -= 2 * "
            "eps` (or similar) does not give back the same float. Save the entry first and "
            "assign it back (`x[i] = old`), or perturb a copy"
        )
    else:
        why = (
            f"moved by {largest:.3g} at index {where}: an entry was not put back after its two "
            "evaluations. Perturb a copy of x (x.copy()), or save the entry and restore it"
        )
    raise ExerciseError(
        f"{name} changed its input x on {case}: x came back {why}; the caller still needs x"
    )


@exercise("numerical_gradient", numerical_gradient_reference)
def check_numerical_gradient(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(f, x, eps)``: the central difference for every entry of x, x unchanged.

    Cases: shapes (4,), (2, 3), (2, 2, 3), (3, 1) and () with the eps the checker passes
    (1e-2 to 1e-5), on a function whose third derivative makes a wrong step visible.
    """
    name = "numerical_gradient"
    rng = np.random.default_rng(2026)
    for shape, eps, what in _CASES:
        case = f"{what}, eps = {eps:g}"
        f = _Curved(shape, rng)
        x = rng.uniform(-1.0, 1.0, size=shape)
        want = numerical_gradient_reference(f, x.copy(), eps)  # the answer first
        mistakes = _mistakes(f, x.copy(), eps)
        given = x.copy()
        got = call(fn, name, case, f, given, eps)
        _left_changed(name, case, x, given, eps)
        got = as_array(got, name, case, shape)
        compare(got, want, name, case, mistakes, "gradient", np.float64)
    passed(name, len(_CASES), quiet)
