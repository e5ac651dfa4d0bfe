"""``ln.gradcheck`` itself: it passes right gradients and catches wrong ones.

A checker that never fails proves nothing, so most tests here feed it a deliberately wrong
backward and expect a GradcheckError naming the input and the entry.
"""

from __future__ import annotations

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend

# Every test runs twice: with the fast paths and in plain mode (conftest.engine_mode).
pytestmark = pytest.mark.usefixtures("engine_mode")


def leaf(values) -> ln.Tensor:
    return ln.Tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def op_with_backward(forward, backward):
    """A one-input op with a hand-written (possibly wrong) backward."""

    def fn(x):
        return ln.Tensor.from_op(forward(x.data), (x,), lambda g: (backward(x.data, g),))

    return fn


def test_passes_a_correct_gradient():
    cube = op_with_backward(lambda x: x**3, lambda x, g: g * 3 * x**2)
    assert ln.gradcheck(cube, leaf([[0.5, -1.0], [2.0, 0.1]])) is True


def test_catches_a_wrong_gradient_and_names_the_worst_entry():
    # wrong only at entry (1, 0): the message must point there
    def backward(x, g):
        grad = g * 3 * x**2
        grad[1, 0] += 0.5
        return grad

    cube = op_with_backward(lambda x: x**3, backward)
    with pytest.raises(ln.GradcheckError, match=r"input 0.*\(1, 0\)"):
        ln.gradcheck(cube, leaf([[0.5, -1.0], [2.0, 0.1]]))


def test_catches_a_small_relative_error():
    cube = op_with_backward(lambda x: x**3, lambda x, g: g * 3 * x**2 * (1 + 1e-3))
    with pytest.raises(ln.GradcheckError):
        ln.gradcheck(cube, leaf([1.0, 2.0]))


def test_catches_a_missing_gradient():
    fn = op_with_backward(lambda x: 2 * x, lambda x, g: None)
    with pytest.raises(ln.GradcheckError):
        ln.gradcheck(fn, leaf([1.0]))


def test_catches_a_transposed_gradient():
    # sum(W * W^T-like weights): a classic slip is returning g.T where g was meant
    fn = op_with_backward(
        lambda x: x * np.arange(4.0).reshape(2, 2),
        lambda x, g: (g * np.arange(4.0).reshape(2, 2)).T,
    )
    with pytest.raises(ln.GradcheckError):
        ln.gradcheck(fn, leaf(np.ones((2, 2))))


def test_catches_nan():
    fn = op_with_backward(lambda x: x * 1.0, lambda x, g: g * np.nan)
    with pytest.raises(ln.GradcheckError, match="nan"):
        ln.gradcheck(fn, leaf([1.0]))


def test_checks_every_trainable_input_and_names_the_wrong_one():
    def mul(a, b):
        # right gradient for a, wrong (forgets a factor) for b
        return ln.Tensor.from_op(a.data * b.data, (a, b), lambda g: (g * b.data, g))

    with pytest.raises(ln.GradcheckError, match="input 1"):
        ln.gradcheck(mul, leaf([1.0, 2.0]), leaf([3.0, 4.0]))
    # with b frozen only a is checked, and a is right
    assert ln.gradcheck(mul, leaf([1.0, 2.0]), ln.Tensor([3.0, 4.0]))


def test_non_scalar_outputs_test_every_entry():
    # wrong only in the second output entry: a plain .sum() would also see it, but only
    # random weights see a swap of two output entries' gradients
    def swapped(x):
        return ln.Tensor.from_op(
            x.data * np.array([1.0, 2.0]), (x,), lambda g: (g[::-1] * np.array([1.0, 2.0]),)
        )

    with pytest.raises(ln.GradcheckError):
        ln.gradcheck(swapped, leaf([1.0, 1.0]))


def test_leaves_the_inputs_unchanged_and_clears_their_old_gradient():
    x = leaf([[0.3, -0.7], [1.1, 2.0]])
    before = x.numpy().copy()
    x.grad = np.full((2, 2), 99.0)  # a stale gradient must not leak into the check
    assert ln.gradcheck(lambda t: t * t, x)
    np.testing.assert_array_equal(x.numpy(), before)


def test_rejects_float32_inputs():
    x = ln.Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float32"):
        ln.gradcheck(lambda t: t * t, x)


def test_rejects_inputs_that_need_no_gradient():
    with pytest.raises(ValueError, match="requires_grad"):
        ln.gradcheck(lambda t: t * t, ln.Tensor([1.0]))


def test_runs_on_every_backend(backend_name):
    x = leaf([[0.5, -1.0], [2.0, 0.1]])
    assert backend.array_module(x.data) == backend_name
    assert ln.gradcheck(lambda t: (t * t).exp().sum(axis=0), x)
    wrong = op_with_backward(lambda v: v * v, lambda v, g: g * v)
    with pytest.raises(ln.GradcheckError):
        ln.gradcheck(wrong, x)
