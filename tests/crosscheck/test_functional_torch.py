"""Every op of lora_np.functional against PyTorch autograd, float64, values and gradients to 1e-10.

Each case builds the same computation twice from the same NumPy inputs, sends the same random
upstream gradient back through both, and compares the output and every input's gradient.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lora_np as ln
from lora_np import functional as F

pytestmark = pytest.mark.crosscheck

TOL = 1e-10


def compare(torch, ours, theirs, *arrays, trainable=None):
    """Run ``ours`` on lora_np tensors and ``theirs`` on torch tensors; compare values and grads."""
    trainable = range(len(arrays)) if trainable is None else trainable
    ln_inputs = [ln.Tensor(a, requires_grad=i in trainable) for i, a in enumerate(arrays)]
    th_inputs = [
        torch.tensor(a, dtype=torch.float64, requires_grad=i in trainable)
        for i, a in enumerate(arrays)
    ]
    out, expected = ours(*ln_inputs), theirs(*th_inputs)
    assert out.shape == tuple(expected.shape)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=TOL, atol=TOL)
    upstream = np.random.default_rng(99).standard_normal(out.shape)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))
    for i in trainable:
        np.testing.assert_allclose(
            ln_inputs[i].grad, th_inputs[i].grad.numpy(), rtol=TOL, atol=TOL, err_msg=f"input {i}"
        )


def rand(seed, shape, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
SEEDS = st.integers(0, 2**32 - 1)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
@given(shapes=PAIRS, seed=SEEDS)
def test_binary_ops(torch, op, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    a, b = rand(seed, a_shape, 0.5, 2.0), rand(seed + 1, b_shape, 0.5, 2.0)
    fn = {
        "add": lambda x, y: x + y,
        "sub": lambda x, y: x - y,
        "mul": lambda x, y: x * y,
        "div": lambda x, y: x / y,
        "pow": lambda x, y: x**y,
    }[op]
    compare(torch, fn, fn, a, b)
    for scalar in (2, -1.5, 0.5, 3):
        compare(torch, lambda x, s=scalar: fn(x, s), lambda x, s=scalar: fn(x, s), a)
        base = abs(scalar)  # a negative base to a real power is not real
        compare(torch, lambda x, s=base: fn(s, x), lambda x, s=base: fn(s, x), a)


UNARY = {
    "neg": (lambda x: -x, lambda x: -x, (-2, 2)),
    "exp": (F.exp, lambda x: x.exp(), (-2, 2)),
    "log": (F.log, lambda x: x.log(), (0.1, 3)),
    "tanh": (F.tanh, lambda x: x.tanh(), (-2, 2)),
    "sqrt": (F.sqrt, lambda x: x.sqrt(), (0.1, 3)),
    "relu": (F.relu, lambda x: x.relu(), (-2, 2)),
    "gelu": (F.gelu, None, (-5, 5)),
}


@pytest.mark.parametrize("name", list(UNARY))
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)])
def test_unary_ops(torch, name, shape):
    ours, theirs, (low, high) = UNARY[name]
    if name == "gelu":
        theirs = lambda x: torch.nn.functional.gelu(x, approximate="tanh")  # noqa: E731
    compare(torch, ours, theirs, rand(3, shape, low, high))


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (-1, 0), (1,)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(torch, name, axis, keepdims):
    x = np.random.default_rng(0).permutation(24).reshape(2, 3, 4) * 0.1  # no ties
    th_axis = tuple(range(3)) if axis is None else axis

    def theirs(t):
        if name == "max":
            return t.amax(dim=th_axis, keepdim=keepdims)
        return getattr(t, name)(dim=th_axis, keepdim=keepdims)

    compare(torch, lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), theirs, x)


def test_max_with_ties_matches_amax(torch):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    compare(torch, lambda t: t.max(axis=1), lambda t: t.amax(dim=1), x)


def test_reshape_transpose_and_indexing(torch):
    x = rand(0, (2, 3, 4))
    compare(torch, lambda t: t.reshape(4, 6).T, lambda t: t.reshape(4, 6).T, x)
    compare(torch, lambda t: t.transpose(2, 0, 1), lambda t: t.permute(2, 0, 1), x)
    compare(torch, lambda t: t.transpose(-1, 0, -2), lambda t: t.permute(-1, 0, -2), x)
    compare(torch, lambda t: t[1, ::2, 1:], lambda t: t[1, ::2, 1:], x)
    compare(torch, lambda t: t[None, ..., 2], lambda t: t[None, ..., 2], x)
    ids = [1, 1, 0, 1]
    compare(torch, lambda t: t[ids], lambda t: t[torch.tensor(ids)], x)
    rows, cols = [0, 0, 1, 0], [2, 2, 2, 1]
    compare(
        torch,
        lambda t: t[rows, :, cols],
        lambda t: t[torch.tensor(rows), :, torch.tensor(cols)],
        x,
    )


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((3,), (3,)),
        ((3,), (3, 2)),
        ((4, 3), (3,)),
        ((4, 3), (3, 2)),
        ((2, 4, 3), (3, 2)),
        ((4, 3), (2, 3, 2)),
        ((2, 1, 4, 3), (5, 3, 2)),
        ((3,), (2, 3, 2)),
        ((2, 2, 4, 3), (3,)),
    ],
)
def test_matmul(torch, a_shape, b_shape):
    fn = lambda a, b: a @ b  # noqa: E731
    compare(torch, fn, fn, rand(0, a_shape), rand(1, b_shape))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("x_shape", [(3,), (5, 3), (2, 4, 3)])
def test_linear(torch, bias, x_shape):
    arrays = [rand(0, x_shape), rand(1, (4, 3))] + ([rand(2, (4,))] if bias else [])
    compare(torch, F.linear, torch.nn.functional.linear, *arrays)


@pytest.mark.parametrize("ids_shape", [(), (7,), (3, 5)])
def test_embedding(torch, ids_shape):
    ids = np.random.default_rng(0).integers(0, 4, ids_shape)  # repeats
    compare(
        torch,
        lambda w: F.embedding(ids, w),
        lambda w: torch.nn.functional.embedding(torch.tensor(ids), w),
        rand(1, (4, 3)),
    )


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family(torch, name, axis):
    theirs = getattr(torch.nn.functional, name)
    compare(
        torch,
        lambda t: getattr(F, name)(t, axis=axis),
        lambda t: theirs(t, dim=axis),
        rand(0, (2, 3, 4), -3, 3),
    )


@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("lead", [(6,), (2, 5)])
def test_cross_entropy(torch, ignore_index, lead):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, lead)
    targets.reshape(-1)[:2] = ignore_index  # some ignored positions
    targets.reshape(-1)[2] = 1  # at least one counted
    classes = 4

    def theirs(t):
        return torch.nn.functional.cross_entropy(
            t.reshape(-1, classes), torch.tensor(targets.reshape(-1)), ignore_index=ignore_index
        )

    compare(
        torch,
        lambda t: F.cross_entropy(t, targets, ignore_index=ignore_index),
        theirs,
        rand(1, lead + (classes,), -3, 3),
    )


def test_mse_loss(torch):
    target = rand(5, (3, 4))
    compare(
        torch,
        lambda t: F.mse_loss(t, target),
        lambda t: torch.nn.functional.mse_loss(t, torch.tensor(target)),
        rand(4, (3, 4)),
    )


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)])
def test_layer_norm(torch, affine, shape):
    def theirs(x, *wb):
        return torch.nn.functional.layer_norm(x, (shape[-1],), *wb, eps=1e-5)

    arrays = [rand(0, shape, -2, 2)] + ([rand(1, (5,)), rand(2, (5,))] if affine else [])
    compare(torch, lambda x, *wb: F.layer_norm(x, *wb), theirs, *arrays)


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize(("t_len", "s_len"), [(4, 4), (3, 5), (5, 3), (1, 1)])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_scaled_dot_product_attention(torch, is_causal, t_len, s_len, scale):
    q, k, v = rand(0, (2, 3, t_len, 4)), rand(1, (2, 3, s_len, 4)), rand(2, (2, 3, s_len, 4))

    def ours(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, is_causal=is_causal, scale=scale)

    def theirs(a, b, c):
        return torch.nn.functional.scaled_dot_product_attention(
            a, b, c, is_causal=is_causal, scale=scale
        )

    compare(torch, ours, theirs, q, k, v)


def test_a_composite_expression(torch):
    """The micrograd check: one expression mixing many ops, both ways."""

    def build(a, b, lib_tanh, lib_relu):
        c = a @ b.T + 2.0
        d = c * c / (1.0 + c**2) - 3 * a.sum() + lib_relu(c - 1)
        e = lib_tanh(d) ** 2 + (d * 0.5).exp().sqrt()
        return (e * e).mean() + 1.0 / (e.sum() + 10)

    compare(
        torch,
        lambda a, b: build(a, b, F.tanh, F.relu),
        lambda a, b: build(a, b, torch.tanh, torch.relu),
        rand(0, (3, 4)),
        rand(1, (2, 4)),
    )
