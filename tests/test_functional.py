"""Every op of ``lora_np.functional`` and every Tensor operator: values and gradients.

Gradients are checked against central differences in float64 (``ln.gradcheck``) over shapes
drawn by hypothesis, broadcasting included; forward values against plain NumPy formulas.
Values are drawn from a seeded generator (hypothesis draws the seed), kept away from kinks
(relu at 0, ties in max) and from the edges of an op's domain (log, sqrt, division by 0),
because a finite difference across a kink is not a derivative.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lora_np as ln
from lora_np import backend
from lora_np import functional as F

# Every test runs twice: with the fast paths and in plain mode (conftest.engine_mode).
pytestmark = pytest.mark.usefixtures("engine_mode")

SEEDS = st.integers(0, 2**32 - 1)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
NONEMPTY_SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
PAIRS = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


def uniform(seed, shape, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def away_from_zero(seed, shape, low=0.5, high=2.0):
    """Values with |x| in [low, high] and random signs."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def leaf(array) -> ln.Tensor:
    return ln.Tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


def close(tensor, expected, tol=1e-12):
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------------ binary operators
BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a**b, np.power),
}
FUNCTIONS = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div, "pow": F.power}


def _binary_values(op, seed, a_shape, b_shape):
    """Operands inside the op's domain: nonzero divisors, positive bases for pow."""
    a = uniform(seed, a_shape)
    b = uniform(seed + 1, b_shape)
    if op == "div":
        b = away_from_zero(seed + 1, b_shape)
    if op == "pow":
        a = uniform(seed, a_shape, 0.5, 2.0)
    return a, b


@pytest.mark.parametrize("op", list(BINARY))
@given(shapes=PAIRS, seed=SEEDS)
def test_binary_operator_gradients_with_broadcasting(op, shapes, seed):
    (a_shape, b_shape), out_shape = shapes.input_shapes, shapes.result_shape
    a, b = _binary_values(op, seed, a_shape, b_shape)
    fn, reference = BINARY[op]
    out = fn(leaf(a), leaf(b))
    assert out.shape == out_shape
    close(out, reference(a, b))
    assert ln.gradcheck(fn, leaf(a), leaf(b))
    # the F.* function is the same op as the operator
    close(FUNCTIONS[op](leaf(a), leaf(b)), reference(a, b))


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("scalar", [2, 3, -1.5, 0.5, 1, 4, 5])
@given(shape=SHAPES, seed=SEEDS)
def test_binary_operator_with_python_scalar_both_orders(op, scalar, shape, seed):
    fn, reference = BINARY[op]
    x = uniform(seed, shape, 0.5, 2.0)  # positive: a valid base and divisor for every op
    close(fn(leaf(x), scalar), reference(x, scalar))
    assert ln.gradcheck(lambda t: fn(t, scalar), leaf(x))
    if op == "pow" and scalar < 0:
        return  # a negative base to a real power is not real
    close(fn(scalar, leaf(x)), reference(scalar, x))
    assert ln.gradcheck(lambda t: fn(scalar, t), leaf(x))


@pytest.mark.parametrize("op", list(BINARY))
def test_binary_operator_with_numpy_array_both_orders(op):
    fn, reference = BINARY[op]
    x = uniform(0, (2, 3), 0.5, 2.0)
    arr = uniform(1, (3,), 0.5, 2.0)
    left, right = fn(leaf(x), arr), fn(arr, leaf(x))
    assert isinstance(left, ln.Tensor) and isinstance(right, ln.Tensor)  # not an object array
    close(left, reference(x, arr))
    close(right, reference(arr, x))
    assert ln.gradcheck(lambda t: fn(arr, t), leaf(x))


def test_pow_of_negative_base_with_integer_exponents():
    x = away_from_zero(3, (2, 3))
    for n in (1, 2, 3, 4, 5, -1, -2):
        close(leaf(x) ** n, x**n)
        assert ln.gradcheck(lambda t, n=n: t**n, leaf(x))


def test_pow_broadcast_tensor_exponent_gradient_to_both():
    base = uniform(0, (2, 1, 3), 0.5, 2.0)
    exponent = uniform(1, (4, 1), -2.0, 2.0)
    assert ln.gradcheck(lambda a, b: a**b, leaf(base), leaf(exponent))


@given(shape=SHAPES, seed=SEEDS)
def test_neg(shape, seed):
    x = uniform(seed, shape)
    close(-leaf(x), -x)
    close(F.neg(leaf(x)), -x)
    assert ln.gradcheck(lambda t: -t, leaf(x))


# ------------------------------------------------------------------------ unary ops
UNARY = {
    # name: (op, reference, values)
    "exp": (F.exp, np.exp, lambda s, shape: uniform(s, shape, -2, 2)),
    "log": (F.log, np.log, lambda s, shape: uniform(s, shape, 0.2, 3)),
    "tanh": (F.tanh, np.tanh, lambda s, shape: uniform(s, shape, -2, 2)),
    "sqrt": (F.sqrt, np.sqrt, lambda s, shape: uniform(s, shape, 0.2, 3)),
    "relu": (F.relu, lambda x: np.maximum(x, 0), lambda s, shape: away_from_zero(s, shape, 0.1, 2)),
    "gelu": (
        F.gelu,
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        lambda s, shape: uniform(s, shape, -4, 4),
    ),
}
METHODS = {"exp": "exp", "log": "log", "tanh": "tanh", "sqrt": "sqrt", "relu": "relu"}


@pytest.mark.parametrize("name", list(UNARY))
@given(shape=SHAPES, seed=SEEDS)
def test_unary_op(name, shape, seed):
    op, reference, values = UNARY[name]
    x = values(seed, shape)
    close(op(leaf(x)), reference(x))
    assert ln.gradcheck(op, leaf(x))
    if name in METHODS:
        close(getattr(leaf(x), METHODS[name])(), reference(x))


def test_gelu_matches_known_values():
    # tanh-form GELU at a few points (values from the formula evaluated in high precision)
    x = leaf([-3.0, -1.0, 0.0, 1.0, 3.0])
    close(F.gelu(x), [-0.0036373920817, -0.1588080094, 0.0, 0.8411919906, 2.9963626079], 1e-9)


def test_relu_gradient_at_zero_is_zero():
    x = leaf([-1.0, 0.0, 2.0])
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])


def test_astype_casts_the_gradient_back():
    x = ln.Tensor(np.arange(4, dtype=np.float32), requires_grad=True)
    y = x.astype(np.float64)
    assert y.dtype == np.float64
    assert y._backward(np.ones(4))[0].dtype == np.float32  # not only at the leaf
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, 2 * np.arange(4))
    assert ln.gradcheck(lambda t: F.astype(t, np.float64) * 3.0, leaf([1.0, 2.0]))


# ------------------------------------------------------------------------ reductions
@st.composite
def shape_and_axis(draw, min_dims=0):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=3))
    ndim = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none" or ndim == 0:
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-ndim, ndim - 1))  # negative axes included
    else:
        axis = draw(hnp.valid_tuple_axes(ndim, min_size=1))  # may hold negative axes
    return shape, axis, draw(st.booleans())


def distinct(seed, shape):
    """Values with no ties closer than 0.1 (so a finite difference never crosses a max)."""
    size = math.prod(shape)
    return np.random.default_rng(seed).permutation(size).reshape(shape) * 0.1 - 0.3


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@given(case=shape_and_axis(), seed=SEEDS)
def test_reduction(name, case, seed):
    shape, axis, keepdims = case
    x = distinct(seed, shape)
    expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
    out = getattr(leaf(x), name)(axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    close(out, expected)
    close(getattr(F, name)(leaf(x), axis, keepdims), expected)
    assert ln.gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), leaf(x))


def test_max_ties_share_the_gradient():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    x = leaf([[1.0, 3.0], [3.0, 0.0]])
    x.max().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5], [0.5, 0]])


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize(("axis", "message"), [(2, "axis 2"), (-3, "axis -3"), ((0, 2), "axis 2")])
def test_reduction_rejects_a_bad_axis(name, axis, message):
    x = leaf(np.ones((2, 3)))
    with pytest.raises(ValueError, match=message):
        getattr(x, name)(axis=axis)
    with pytest.raises(ValueError, match="duplicate"):
        getattr(x, name)(axis=(0, 0))


# ------------------------------------------------------------------------ shapes
@given(shape=NONEMPTY_SHAPES, seed=SEEDS, data=st.data())
def test_reshape(shape, seed, data):
    x = uniform(seed, shape)
    target = data.draw(
        st.sampled_from([(-1,), (x.size, 1), (1, -1), tuple(reversed(shape)), (1,) + shape])
    )
    close(leaf(x).reshape(target), x.reshape(target))
    close(leaf(x).reshape(*target), x.reshape(target))
    assert ln.gradcheck(lambda t: F.reshape(t, target) * np.arange(x.size).reshape(target), leaf(x))


def test_reshape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        leaf(np.ones((2, 3))).reshape(4, 2)


@given(shape=NONEMPTY_SHAPES, seed=SEEDS, data=st.data())
def test_transpose(shape, seed, data):
    x = uniform(seed, shape)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    negative = tuple(a - len(shape) for a in perm)  # the same permutation, negative axes
    weights = np.arange(x.size).reshape(x.transpose(perm).shape)
    for axes in (perm, negative):
        close(leaf(x).transpose(*axes), x.transpose(perm))
        close(leaf(x).transpose(axes), x.transpose(perm))
        assert ln.gradcheck(lambda t, axes=axes: F.transpose(t, axes) * weights, leaf(x))
    close(leaf(x).T, x.T)
    close(leaf(x).transpose(), x.T)
    assert ln.gradcheck(lambda t: t.T * np.arange(x.size).reshape(x.T.shape), leaf(x))


def test_transpose_rejects_a_non_permutation():
    with pytest.raises(ValueError, match=r"\(0, 0\)"):
        leaf(np.ones((2, 3))).transpose(0, 0)


INDICES = [
    ((4, 3), 1),
    ((4, 3), -1),
    ((4, 3), slice(1, None)),
    ((4, 3), (slice(None, None, -2), 0)),
    ((2, 3, 4), (Ellipsis, 1)),
    ((2, 3, 4), (None, 0, slice(1, 3))),
    ((4, 3), [0, 0, 2, 0]),  # repeated advanced index: every copy sends its gradient back
    ((4, 3), ([1, 1, 3], [2, 2, 0])),  # repeated pairs
    ((4, 3), (slice(None), [2, 2, 1])),  # advanced on the second axis
    ((2, 3, 4), ([1, 1], slice(None), [0, 0])),
    ((4, 3), np.array([[0, 1], [1, 1]])),  # 2-D index array
    ((4, 3), np.array([True, False, True, True])),  # boolean mask
]


@pytest.mark.parametrize(("shape", "index"), INDICES, ids=[str(i[1]) for i in INDICES])
def test_getitem(shape, index):
    x = uniform(7, shape)
    expected = x[index]
    close(leaf(x)[index], expected)
    weights = np.random.default_rng(1).standard_normal(np.shape(expected))
    assert ln.gradcheck(lambda t: t[index] * weights, leaf(x))


def test_getitem_with_a_tensor_index_and_repeats_accumulates():
    x = leaf(np.arange(4.0))
    x[ln.Tensor([3, 3, 3, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [1, 0, 0, 3])


@given(seed=SEEDS, ids=st.lists(st.integers(-4, 3), min_size=1, max_size=8))
def test_getitem_with_random_repeated_indices(seed, ids):
    x = uniform(seed, (4, 2))
    close(leaf(x)[ids], x[ids])
    assert ln.gradcheck(lambda t: t[ids], leaf(x))


# ------------------------------------------------------------------------ matmul and linear
@st.composite
def matmul_shapes(draw):
    """Operand shapes for a @ b: 1-D operands, 2-D, and batch axes that broadcast."""
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    batch_a, batch_b = draw(
        hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3)
    ).input_shapes
    a = (k,) if draw(st.booleans()) and draw(st.booleans()) else batch_a + (n, k)
    b = (k,) if draw(st.booleans()) and draw(st.booleans()) else batch_b + (k, m)
    return a, b


@given(shapes=matmul_shapes(), seed=SEEDS)
def test_matmul(shapes, seed):
    a_shape, b_shape = shapes
    a, b = uniform(seed, a_shape), uniform(seed + 1, b_shape)
    expected = a @ b
    out = leaf(a) @ leaf(b)
    assert out.shape == expected.shape
    close(out, expected)
    close(F.matmul(leaf(a), leaf(b)), expected)
    assert ln.gradcheck(lambda x, y: x @ y, leaf(a), leaf(b))
    # only one side trainable, and a plain array on the other side (both orders)
    assert ln.gradcheck(lambda x: x @ b, leaf(a))
    assert ln.gradcheck(lambda y: a @ y, leaf(b))


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((4, 2, 3), (3,)), ((3,), (4, 3, 2))],
)
def test_matmul_with_1d_operands(a_shape, b_shape):
    a, b = uniform(0, a_shape), uniform(1, b_shape)
    out = leaf(a) @ leaf(b)
    assert out.shape == (a @ b).shape
    close(out, a @ b)
    assert ln.gradcheck(lambda x, y: x @ y, leaf(a), leaf(b))


def test_batched_matmul_with_broadcast_batch_axes():
    a, b = uniform(0, (2, 1, 3, 4)), uniform(1, (5, 4, 2))
    close(leaf(a) @ leaf(b), a @ b)
    assert ln.gradcheck(lambda x, y: x @ y, leaf(a), leaf(b))


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [
        ((2, 3), (4, 5)),
        ((2, 3), (4,)),
        ((3,), (2, 4)),
        ((2, 2, 3), (3, 4, 5)),
        ((2, 3, 4), (3, 4, 5)),
    ],
)
def test_matmul_error_names_both_shapes(a_shape, b_shape):
    with pytest.raises(ValueError) as info:
        leaf(np.ones(a_shape)) @ leaf(np.ones(b_shape))
    assert str(a_shape) in str(info.value) and str(b_shape) in str(info.value)


def test_matmul_rejects_scalars():
    with pytest.raises(ValueError, match="1-D"):
        F.matmul(leaf(np.ones(3)), 2.0)


@given(
    batch=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
    sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    bias=st.booleans(),
    seed=SEEDS,
)
def test_linear(batch, sizes, bias, seed):
    n_in, n_out = sizes
    x, w, b = (
        uniform(seed, batch + (n_in,)),
        uniform(seed + 1, (n_out, n_in)),
        uniform(seed + 2, (n_out,)),
    )
    expected = x @ w.T + (b if bias else 0)
    inputs = (leaf(x), leaf(w)) + ((leaf(b),) if bias else ())
    close(F.linear(*inputs), expected)
    assert ln.gradcheck(F.linear, *inputs)


def test_linear_error_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(leaf(np.ones((2, 3))), leaf(np.ones((4, 5))))


# ------------------------------------------------------------------------ embedding
@given(
    ids_shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
    vocab=st.integers(1, 4),
    channels=st.integers(1, 3),
    seed=SEEDS,
)
def test_embedding_one_hot_path_with_repeated_ids(ids_shape, vocab, channels, seed):
    """Small inputs take the one-hot matrix product, never the scatter (in plain mode: the
    scatter, the formula it equals)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, ids_shape)  # few ids, small vocabulary: repeats are common
    w = uniform(seed, (vocab, channels))
    out = F.embedding(ids, leaf(w))
    assert out.shape == ids_shape + (channels,)
    close(out, w[ids])
    close(F.embedding(ln.Tensor(ids), leaf(w)), w[ids])
    close(F.embedding(ids.tolist(), leaf(w)), w[ids])
    real_scatter_add, calls = backend.scatter_add, []

    def scatter_add(*args):
        calls.append(1)
        return real_scatter_add(*args)

    backend.scatter_add = scatter_add
    try:
        assert ln.gradcheck(lambda t: F.embedding(ids, t), leaf(w))
    finally:
        backend.scatter_add = real_scatter_add
    assert bool(calls) == ln.is_plain()  # the one-hot path needs no scatter; plain mode is one


def test_embedding_repeated_ids_accumulate():
    w = leaf(np.zeros((3, 2)))
    F.embedding(np.array([[2, 2], [2, 0]]), w).sum().backward()
    np.testing.assert_array_equal(w.grad, [[1, 1], [0, 0], [3, 3]])


def test_embedding_scatter_path_for_large_inputs(monkeypatch):
    """ids.size * vocab > 2**24 takes the scatter path (a one-hot matrix would be too big)."""
    vocab, n_ids = 4097, 4097  # 4097**2 > 2**24
    assert vocab * n_ids > 2**24
    calls = []
    real_scatter_add = backend.scatter_add

    def spy(*args):
        calls.append(args[1].shape)
        return real_scatter_add(*args)

    monkeypatch.setattr(backend, "scatter_add", spy)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, n_ids)  # many repeats
    ids[:3] = vocab - 1
    w = leaf(uniform(0, (vocab, 1)))
    g = rng.standard_normal((n_ids, 1))
    F.embedding(ids, w).backward(g)
    assert calls, "the scatter path was not taken"
    expected = np.bincount(ids, weights=g[:, 0], minlength=vocab)[:, None]
    np.testing.assert_allclose(w.grad, expected, rtol=1e-12, atol=1e-12)
    assert ln.gradcheck(lambda t: F.embedding(ids, t), leaf(uniform(1, (vocab, 1))))


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_embedding_id_out_of_range_names_the_id(bad):
    w = leaf(np.ones((5, 2)))
    with pytest.raises(IndexError, match=rf"{bad}.*\[0, 5\)"):
        F.embedding(np.array([0, bad, 1]), w)


def test_embedding_rejects_float_ids():
    with pytest.raises(TypeError, match="float64"):
        F.embedding(np.array([0.0, 1.0]), leaf(np.ones((5, 2))))


# ------------------------------------------------------------------------ softmax family
def np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(shape=NONEMPTY_SHAPES, seed=SEEDS, data=st.data())
def test_softmax_family_on_any_axis(name, shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = uniform(seed, shape, -3, 3)
    expected = np_log_softmax(x, axis)
    expected = np.exp(expected) if name == "softmax" else expected
    op = getattr(F, name)
    close(op(leaf(x), axis=axis), expected)
    assert ln.gradcheck(lambda t: op(t, axis=axis), leaf(x))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family_is_stable_for_large_logits(name):
    x = leaf([[1000.0, 1001.0, 1002.0], [-1000.0, -1000.0, -1000.0]])
    out = getattr(F, name)(x).numpy()
    assert np.isfinite(out).all()
    expected = np_log_softmax(np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]), -1)
    np.testing.assert_allclose(out, np.exp(expected) if name == "softmax" else expected)


def np_cross_entropy(logits, targets, ignore_index):
    rows, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    logp = np_log_softmax(rows, -1)
    keep = t != ignore_index
    return -np.mean([logp[i, t[i]] for i in np.flatnonzero(keep)])


@given(
    lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),  # (N,) or (B, T)
    classes=st.integers(2, 4),
    ignore_index=st.sampled_from([-100, 0, 1]),
    seed=SEEDS,
)
def test_cross_entropy(lead, classes, ignore_index, seed):
    rng = np.random.default_rng(seed)
    logits = uniform(seed, lead + (classes,), -3, 3)
    targets = rng.integers(0, classes, lead)
    if ignore_index == -100:
        targets[rng.random(lead) < 0.3] = -100  # some positions ignored
    targets.reshape(-1)[0] = (ignore_index + 1) % classes  # at least one position counts
    loss = F.cross_entropy(leaf(logits), targets, ignore_index=ignore_index)
    assert loss.shape == ()
    close(loss, np_cross_entropy(logits, targets, ignore_index))
    close(
        F.cross_entropy(leaf(logits), ln.Tensor(targets), ignore_index=ignore_index), loss.numpy()
    )
    assert ln.gradcheck(
        lambda t: F.cross_entropy(t, targets, ignore_index=ignore_index), leaf(logits)
    )


def test_cross_entropy_ignored_positions_get_no_gradient():
    logits = leaf(uniform(0, (2, 3, 4)))
    targets = np.array([[1, -100, 3], [-100, -100, 0]])
    F.cross_entropy(logits, targets).backward()
    assert np.all(logits.grad[0, 1] == 0) and np.all(logits.grad[1, :2] == 0)
    assert np.any(logits.grad[0, 0] != 0)


def test_cross_entropy_all_ignored_is_nan_as_in_pytorch():
    logits = leaf(uniform(0, (2, 3)))
    loss = F.cross_entropy(logits, np.array([-100, -100]))
    assert np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(logits.grad, 0)


def test_cross_entropy_is_stable_for_large_logits():
    logits = leaf([[1000.0, 0.0], [0.0, -1000.0]])
    loss = F.cross_entropy(logits, np.array([1, 1]))
    np.testing.assert_allclose(loss.item(), 1000.0 / 2 + 1000.0 / 2)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_cross_entropy_target_out_of_range_names_it(bad):
    with pytest.raises(IndexError, match=rf"{bad}.*\[0, 3\)"):
        F.cross_entropy(leaf(np.ones((2, 3))), np.array([0, bad]))


def test_cross_entropy_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4\)"):
        F.cross_entropy(leaf(np.ones((2, 4))), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="float"):
        F.cross_entropy(leaf(np.ones((2, 4))), np.array([0.0, 1.0]))


@given(shape=SHAPES, seed=SEEDS)
def test_mse_loss(shape, seed):
    pred, target = uniform(seed, shape), uniform(seed + 1, shape)
    close(F.mse_loss(leaf(pred), target), np.mean((pred - target) ** 2))
    close(F.mse_loss(leaf(pred), ln.Tensor(target)), np.mean((pred - target) ** 2))
    assert ln.gradcheck(lambda t: F.mse_loss(t, target), leaf(pred))


def test_mse_loss_shape_error():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        F.mse_loss(leaf(np.ones((2, 3))), np.ones(3))


# ------------------------------------------------------------------------ layer norm
@given(
    lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3),
    channels=st.integers(2, 4),
    affine=st.sampled_from(["both", "weight", "bias", "none"]),
    seed=SEEDS,
)
def test_layer_norm(lead, channels, affine, seed):
    x = uniform(seed, lead + (channels,), -2, 2)
    w = uniform(seed + 1, (channels,), 0.5, 1.5) if affine in ("both", "weight") else None
    b = uniform(seed + 2, (channels,)) if affine in ("both", "bias") else None
    mu = x.mean(-1, keepdims=True)
    expected = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    expected = expected * (1 if w is None else w) + (0 if b is None else b)
    args = [leaf(x), None if w is None else leaf(w), None if b is None else leaf(b)]
    close(F.layer_norm(*args), expected, 1e-10)
    trainable = [a for a in args if a is not None]

    def fn(*ts):
        it = iter(ts)
        return F.layer_norm(*(next(it) if a is not None else None for a in args))

    assert ln.gradcheck(fn, *trainable)


def test_layer_norm_weight_shape_error():
    with pytest.raises(ValueError, match=r"weight.*\(3,\).*\(2, 4\)"):
        F.layer_norm(leaf(np.ones((2, 4))), leaf(np.ones(3)))


# ------------------------------------------------------------------------ dropout
def test_dropout_gradient_is_the_forward_mask():
    p = 0.3
    x = ln.Tensor(np.ones((50, 40)), requires_grad=True)
    ln.manual_seed(0)
    out = F.dropout(x, p, training=True)
    mask = out.numpy() != 0
    assert 0.6 < mask.mean() < 0.8  # about 1 - p kept
    np.testing.assert_allclose(out.numpy(), mask / (1 - p))
    out.sum().backward()
    np.testing.assert_allclose(x.grad, mask / (1 - p))  # the same mask, not a fresh draw
    ln.manual_seed(0)
    np.testing.assert_array_equal(F.dropout(x, p, training=True).numpy(), out.numpy())
    assert not np.array_equal(F.dropout(x, p, training=True).numpy(), out.numpy())


def test_dropout_gradcheck_with_a_fixed_mask():
    x = uniform(0, (3, 4))

    def fn(t):
        ln.manual_seed(5)  # the same mask on every evaluation
        return F.dropout(t, 0.5, training=True)

    assert ln.gradcheck(fn, leaf(x))


def test_dropout_eval_and_zero_p_are_the_identity():
    x = leaf(uniform(0, (3, 4)))
    for out in (F.dropout(x, 0.5, training=False), F.dropout(x, 0.0, training=True)):
        np.testing.assert_array_equal(out.numpy(), x.numpy())
    F.dropout(x, 0.5, training=False).sum().backward()
    np.testing.assert_array_equal(x.grad, 1)


def test_dropout_p_one_zeroes_everything_and_bad_p_is_rejected():
    x = leaf(np.ones((2, 3)))
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), 0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=str(bad)):
            F.dropout(x, bad)


# ------------------------------------------------------------------------ attention
def np_attention(q, k, v, is_causal, scale):
    t_len, s_len = q.shape[-2], k.shape[-2]
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if is_causal:
        for i in range(t_len):
            for j in range(s_len):
                if j > i:
                    scores[..., i, j] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ v


@given(
    lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=2),  # (), (B,) or (B, nh)
    t_len=st.integers(1, 4),
    s_len=st.integers(1, 4),
    hs=st.integers(1, 3),
    is_causal=st.booleans(),
    scale=st.sampled_from([None, 0.7]),
    seed=SEEDS,
)
def test_scaled_dot_product_attention(lead, t_len, s_len, hs, is_causal, scale, seed):
    q = uniform(seed, lead + (t_len, hs), -2, 2)
    k = uniform(seed + 1, lead + (s_len, hs), -2, 2)
    v = uniform(seed + 2, lead + (s_len, hs), -2, 2)
    expected = np_attention(q, k, v, is_causal, 1 / math.sqrt(hs) if scale is None else scale)

    def fn(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, is_causal=is_causal, scale=scale)

    close(fn(leaf(q), leaf(k), leaf(v)), expected, 1e-10)
    assert ln.gradcheck(fn, leaf(q), leaf(k), leaf(v))


def test_causal_attention_first_position_sees_only_itself():
    q, k = leaf(uniform(0, (1, 1, 3, 2))), leaf(uniform(1, (1, 1, 3, 2)))
    v = leaf(np.arange(6.0).reshape(1, 1, 3, 2))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out.numpy()[0, 0, 0], [0.0, 1.0])


def test_attention_shape_error_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 2, 3\).*\(1, 2, 4\)"):
        F.scaled_dot_product_attention(
            leaf(np.ones((1, 2, 3))), leaf(np.ones((1, 2, 4))), leaf(np.ones((1, 2, 4)))
        )


# ------------------------------------------------------------------------ broadcasting errors
@pytest.mark.parametrize("op", list(BINARY))
def test_broadcast_error_names_both_shapes(op):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        BINARY[op][0](leaf(np.ones((2, 3))), leaf(np.ones(4)))


# ------------------------------------------------------------------------ frozen means frozen
@pytest.fixture
def count_mm(monkeypatch):
    """A list that grows by one entry per matrix product (F._mm) while the test runs."""
    calls = []
    real_mm = F._mm

    def counting_mm(a, b):
        calls.append((a.shape, b.shape))
        return real_mm(a, b)

    monkeypatch.setattr(F, "_mm", counting_mm)
    return calls


@pytest.mark.parametrize("x_shape", [(4, 3), (2, 4, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_backward_with_a_frozen_weight_does_no_weight_gemm(count_mm, x_shape, bias):
    x = leaf(uniform(0, x_shape))
    w = ln.Tensor(uniform(1, (5, 3)))  # frozen
    b = ln.Tensor(uniform(2, (5,))) if bias else None
    out = F.linear(x, w, b)
    count_mm.clear()
    out.sum().backward()
    assert count_mm == [((math.prod(x_shape[:-1]), 5), (5, 3))]  # d/dx only
    assert w.grad is None and (b is None or b.grad is None)

    w.requires_grad_(True)
    x.grad = None
    out = F.linear(x, w, b)
    count_mm.clear()
    out.sum().backward()
    assert len(count_mm) == 2  # d/dx and d/dW
    assert w.grad is not None


def test_linear_backward_with_frozen_input_and_weight_does_no_gemm(count_mm):
    x, w, b = ln.Tensor(uniform(0, (4, 3))), ln.Tensor(uniform(1, (5, 3))), leaf(np.zeros(5))
    out = F.linear(x, w, b)
    count_mm.clear()
    out.sum().backward()
    assert count_mm == []
    np.testing.assert_array_equal(b.grad, 4)


@pytest.mark.parametrize(
    ("a_shape", "b_shape"), [((4, 3), (3, 2)), ((2, 4, 3), (3, 2)), ((2, 4, 3), (2, 3, 2))]
)
def test_matmul_backward_computes_only_the_needed_side(count_mm, a_shape, b_shape):
    for a_trains, b_trains, expected in ((True, False, 1), (False, True, 1), (True, True, 2)):
        a = ln.Tensor(uniform(0, a_shape), requires_grad=a_trains)
        b = ln.Tensor(uniform(1, b_shape), requires_grad=b_trains)
        out = a @ b
        count_mm.clear()
        out.sum().backward()
        assert len(count_mm) == expected, (a_trains, b_trains)
        assert (a.grad is None) != a_trains and (b.grad is None) != b_trains


def test_attention_backward_with_frozen_inputs(count_mm):
    q, k, v = (ln.Tensor(uniform(i, (1, 2, 3, 2))) for i in range(3))
    v.requires_grad_(True)
    out = F.scaled_dot_product_attention(q, k, v)
    count_mm.clear()
    out.sum().backward()
    assert len(count_mm) == 1  # only d/dv = att^T g
    assert q.grad is None and k.grad is None


def _patch_from_op(monkeypatch, replacement):
    """Route every op's output through ``replacement`` (Tensor.from_op)."""
    monkeypatch.setattr(ln.Tensor, "from_op", classmethod(replacement))


def _spy_parents(monkeypatch):
    """Make every op's backward closure report which parents it returned a gradient for."""
    seen = []
    real = ln.Tensor.from_op.__func__

    def from_op(cls, data, parents, backward_fn):
        if backward_fn is not None:

            def wrapped(g, parents=parents, backward_fn=backward_fn):
                grads = backward_fn(g)
                for p, gp in zip(parents, grads, strict=True):
                    seen.append((p.requires_grad, gp is not None))
                return grads

            return real(cls, data, parents, wrapped)
        return real(cls, data, parents, backward_fn)

    _patch_from_op(monkeypatch, from_op)
    return seen


MIXED_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: b - a,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: b / (a * a + 1),
    "pow": lambda a, b: (b * b + 1) ** a,
    "pow_base": lambda a, b: (a * a + 1) ** b,
    "matmul": lambda a, b: a @ b.T,
    "matmul_batched": lambda a, b: a.reshape(2, 1, 3) @ b.reshape(1, 3, 2),
    "linear": lambda a, b: F.linear(a, b, b.sum(axis=1)),
    "layer_norm": lambda a, b: F.layer_norm(a, b[0], b[1]),
    "attention": lambda a, b: F.scaled_dot_product_attention(
        a.reshape(1, 2, 3), b.reshape(1, 2, 3), b.reshape(1, 2, 3)
    ),
}


@pytest.mark.parametrize("name", list(MIXED_OPS))
@pytest.mark.parametrize("trainable", ["a", "b"])
def test_ops_never_return_gradients_for_parents_that_need_none(monkeypatch, name, trainable):
    seen = _spy_parents(monkeypatch)
    a = ln.Tensor(uniform(0, (2, 3)), requires_grad=trainable == "a")
    b = ln.Tensor(uniform(1, (2, 3)), requires_grad=trainable == "b")
    MIXED_OPS[name](a, b).sum().backward()
    assert seen, "no backward ran"
    assert all(computed == needed for needed, computed in seen), seen
    assert (a.grad is None) == (trainable == "b") and (b.grad is None) == (trainable == "a")


# ------------------------------------------------------------------------ dtype
FLOAT32_OPS = {
    "add": lambda x: x + 1.5,
    "rsub": lambda x: 1.5 - x,
    "mul": lambda x: x * x,
    "div": lambda x: 2.0 / (x + 3),
    "pow": lambda x: x**2 + (x + 3) ** 0.5,
    "rpow": lambda x: 2.0**x,
    # NumPy scalars count as Python numbers: np.float64 must not upcast float32 (NumPy 2 would)
    "numpy_scalars": lambda x: (
        (x * np.float64(2.0) + np.sqrt(2.0) - np.float64(3) / (x + 3) + np.float64(1.5) ** x)
        + (x + 3) ** np.float64(0.5)
    ),
    "tpow": lambda x: (x + 3) ** x,
    "exp_log": lambda x: (x.exp() + 1).log(),
    "tanh_sqrt": lambda x: x.tanh() + (x * x + 1).sqrt(),
    "relu": lambda x: x.relu(),
    "reductions": lambda x: x.sum(axis=0) + x.mean(axis=0) + x.max(axis=0),
    "shapes": lambda x: x.reshape(3, 2).T[1:, [0, 0]],
    "matmul": lambda x: x @ x.T,
    "linear": lambda x: F.linear(x, x, x[0, :2]),
    "embedding": lambda x: F.embedding([0, 1, 1], x),
    "softmax": lambda x: F.softmax(x) + F.log_softmax(x, axis=0),
    "cross_entropy": lambda x: F.cross_entropy(x, [0, 2]),
    "mse": lambda x: F.mse_loss(x, np.zeros((2, 3), np.float32)),
    "layer_norm": lambda x: F.layer_norm(x, x[0], x[1]),
    "gelu": lambda x: F.gelu(x),
    "dropout": lambda x: F.dropout(x, 0.5),
    "attention": lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True),
}


@pytest.mark.parametrize("name", list(FLOAT32_OPS))
def test_float32_stays_float32_in_values_and_in_every_backward(monkeypatch, name):
    """No op upcasts: a float64 intermediate would double memory and time silently."""
    dtypes = []
    real = ln.Tensor.from_op.__func__

    def from_op(cls, data, parents, backward_fn):
        out = real(cls, data, parents, backward_fn)
        dtypes.append(("forward", out.dtype))
        if backward_fn is not None:

            def wrapped(g, backward_fn=backward_fn):
                grads = backward_fn(g)
                dtypes.extend(("backward", gp.dtype) for gp in grads if gp is not None)
                return grads

            out._backward = wrapped
        return out

    _patch_from_op(monkeypatch, from_op)
    x = ln.Tensor(uniform(0, (2, 3)).astype(np.float32), requires_grad=True)
    out = FLOAT32_OPS[name](x)
    out.sum().backward()
    assert out.dtype == np.float32 and x.grad.dtype == np.float32
    assert all(dtype == np.float32 for _, dtype in dtypes), dtypes


# ------------------------------------------------------------------------ every backend
BACKEND_CASES = {
    "arith": (lambda a, b: ((a * b - a / (b * b + 1)) ** 2 + 2.0**a).sum(), 2),
    "matmul": (lambda a, b: (a.reshape(2, 3, 1) @ b.reshape(1, 6)).tanh().sum(), 2),
    "reductions": (lambda a, b: a.max(axis=0).sum() + (a * b).mean(axis=(0, 1)), 2),
    "indexing": (lambda a, b: (a[[0, 0, 1], 1:] * b[:, ::-1][[1, 1, 0], 1:]).sum(), 2),
    "linear": (lambda a, b: F.gelu(F.linear(a, b, b[:, 0])).sum(), 2),
    "embedding": (lambda a, b: (F.embedding([[0, 1], [1, 1]], a) * b[0]).sum(), 2),
    "softmax": (lambda a, b: (F.softmax(a, axis=0) * F.log_softmax(b)).sum(), 2),
    "cross_entropy": (lambda a, b: F.cross_entropy(a * b, [2, -100]), 2),
    "layer_norm": (lambda a, b: (F.layer_norm(a, b[0], b[1]) ** 2).sum(), 2),
    "attention": (
        lambda a, b: (
            F.scaled_dot_product_attention(
                a.reshape(1, 2, 3), b.reshape(1, 2, 3), a.reshape(1, 2, 3)
            )
            * b.reshape(1, 2, 3)
        ).sum(),
        2,
    ),
    "mse": (lambda a, b: F.mse_loss(a.exp() * b, a.data), 2),
}


def _run_case(name, dtype):
    fn, _ = BACKEND_CASES[name]
    a = ln.Tensor(uniform(0, (2, 3)).astype(dtype), requires_grad=True)
    b = ln.Tensor(uniform(1, (2, 3)).astype(dtype), requires_grad=True)
    loss = fn(a, b)
    loss.backward()
    return loss.numpy(), a.grad, b.grad


@pytest.mark.parametrize("name", list(BACKEND_CASES))
def test_ops_agree_across_backends(backend_name, name):
    """Forward and backward on the active backend equal NumPy's (float64 and float32)."""
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        loss, ga, gb = _run_case(name, dtype)
        assert backend.array_module(ga) == backend_name and ga.dtype == dtype
        backend.set_backend("numpy")
        try:
            ref_loss, ref_ga, ref_gb = _run_case(name, dtype)
        finally:
            backend.set_backend(backend_name)
        np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
        np.testing.assert_allclose(backend.to_numpy(ga), ref_ga, rtol=tol, atol=tol)
        np.testing.assert_allclose(backend.to_numpy(gb), ref_gb, rtol=tol, atol=tol)


def test_gradcheck_on_the_active_backend(backend_name):
    x = ln.Tensor(uniform(0, (2, 3)), requires_grad=True)
    w = ln.Tensor(uniform(1, (4, 3)), requires_grad=True)
    assert ln.gradcheck(lambda a, b: F.log_softmax(F.linear(a, b), axis=-1), x, w)
    assert ln.gradcheck(lambda a: F.embedding([0, 1, 1], a), x)


def test_lora_linear_gradients_and_frozen_base_costs_no_weight_gemm(monkeypatch):
    rng = np.random.default_rng(3)

    def leaf(*shape, grad=True):
        return ln.Tensor(rng.standard_normal(shape), requires_grad=grad)

    x, w0, b, a, bb = leaf(2, 3, 5), leaf(4, 5), leaf(4), leaf(2, 5), leaf(4, 2)
    assert ln.gradcheck(
        lambda x, w0, b, a, bb: F.lora_linear(x, w0, b, a, bb, 1.7), x, w0, b, a, bb
    )
    composed = F.linear(x, w0, b) + F.linear(F.linear(x, a) * 1.7, bb)
    np.testing.assert_allclose(F.lora_linear(x, w0, b, a, bb, 1.7).data, composed.data, atol=1e-12)

    frozen = leaf(4, 5, grad=False)
    calls = []
    real_mm = F._mm
    monkeypatch.setattr(F, "_mm", lambda p, q: calls.append((p.shape, q.shape)) or real_mm(p, q))
    out = F.lora_linear(leaf(6, 5, grad=False), frozen, None, a, bb, 2.0)
    assert len(calls) == 3  # W0 x, A x, B (A x)
    calls.clear()
    out.sum().backward()
    assert frozen.grad is None
    assert len(calls) == 3  # dB, G B, dA: no (d, k) product for W0, none for x
    assert (4, 5) not in [(p[0], q[1]) for p, q in calls]
