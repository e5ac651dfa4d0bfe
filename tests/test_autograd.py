"""The Tensor and the backward walk: construction, the classic autodiff traps, bad input.

The traps are the ones micrograd's tracker collected: a value used twice, a diamond, calling
backward twice, a graph deeper than Python's recursion limit; plus the ones that matter for
LoRA: a frozen input costs nothing, and no_grad/detach build nothing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import lora_np as ln
from lora_np import autograd, backend, graph
from lora_np import functional as F

# Every test runs twice: with the fast paths and in plain mode (conftest.engine_mode).
pytestmark = pytest.mark.usefixtures("engine_mode")


def leaf(values, dtype=np.float64) -> ln.Tensor:
    return ln.Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ------------------------------------------------------------------------ construction
def test_tensor_keeps_the_dtype_and_exposes_array_attributes():
    t = ln.Tensor(np.zeros((2, 3), dtype=np.float32))
    assert (t.shape, t.ndim, t.size, t.dtype, len(t)) == ((2, 3), 2, 6, np.float32, 2)
    assert ln.Tensor([1.0, 2.0]).dtype == np.float64
    assert ln.Tensor([1, 2]).dtype.kind == "i"
    assert ln.Tensor([True]).dtype == bool
    assert ln.Tensor([1, 2], dtype="float32").dtype == np.float32
    assert ln.Tensor(3.5).shape == () and ln.Tensor(3.5).item() == 3.5
    assert not t.requires_grad and t.grad is None and t.is_leaf


def test_numpy_item_and_repr():
    t = ln.Tensor([[1.5, 2.0]], requires_grad=True)
    assert isinstance(t.numpy(), np.ndarray)
    np.testing.assert_array_equal(t.numpy(), [[1.5, 2.0]])
    assert "requires_grad=True" in repr(t) and "1.5" in repr(t)
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        t.item()


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ("abc", "'abc'"),
        (["1.0", "2.0"], "'1.0'"),
        ([[1.0, 2.0], [3.0]], "[[1.0, 2.0], [3.0]]"),
        ([1.0, [2.0, 3.0]], "[1.0, [2.0, 3.0]]"),
        (None, "None"),
        ({"a": 1}, "{'a': 1}"),
        (object(), "object"),
        ([1 + 2j], "(1+2j)"),
    ],
)
def test_tensor_from_non_numbers_is_a_type_error_naming_the_value(bad, shown):
    with pytest.raises(TypeError) as info:
        ln.Tensor(bad)
    assert shown in str(info.value)


def test_a_long_bad_value_is_shortened_in_the_message():
    with pytest.raises(TypeError) as info:
        ln.Tensor(["x"] * 1000)
    assert "'x'" in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("data", [[1, 2], [True, False], np.arange(3)])
def test_only_float_tensors_can_require_grad(data):
    with pytest.raises(TypeError, match="float"):
        ln.Tensor(data, requires_grad=True)
    t = ln.Tensor(data)
    with pytest.raises(TypeError, match=str(t.dtype)):
        t.requires_grad_(True)
    assert not t.requires_grad  # unchanged


def test_requires_grad_can_only_change_on_a_leaf():
    a = leaf([1.0])
    b = a * 2
    with pytest.raises(RuntimeError, match="leaf"):
        b.requires_grad_(False)
    assert b.requires_grad
    assert a.requires_grad_(False) is a and not a.requires_grad


# ------------------------------------------------------------------------ the traps
def test_a_value_used_twice_gets_both_contributions():
    a = leaf([3.0])
    b = a + a
    b.backward()
    np.testing.assert_array_equal(a.grad, [2.0])
    a.grad = None
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, [6.0])


def test_diamond_graph():
    # a -> b, a -> c, (b, c) -> d: d = (2a) * (a + 1), dd/da = 4a + 2
    a = leaf([1.5, -2.0])
    b = a * 2
    c = a + 1
    d = (b * c).sum()
    d.backward()
    np.testing.assert_allclose(a.grad, 4 * a.numpy() + 2)


def test_deep_diamond_lattice_counts_every_path():
    # x_{i+1} = x_i + x_i doubles the gradient at each of 30 levels: 2**30 paths
    a = leaf([1.0])
    x = a
    for _ in range(30):
        x = x + x
    x.backward()
    np.testing.assert_array_equal(a.grad, [2.0**30])


def test_gradients_accumulate_across_backward_calls_until_zero_grad():
    a = leaf([1.0, 2.0])
    (a * 3).sum().backward()
    (a * 3).sum().backward()
    np.testing.assert_array_equal(a.grad, [6.0, 6.0])
    a.zero_grad()
    assert a.grad is None
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0, 4.0])


def test_backward_twice_on_the_same_graph_accumulates():
    a = leaf([2.0])
    y = (a * a).sum()
    y.backward()
    y.backward()
    np.testing.assert_array_equal(a.grad, [8.0])


def test_a_chain_of_20000_ops_backpropagates():
    assert sys.getrecursionlimit() < 20_000
    a = leaf([1.0])
    x = a
    for _ in range(20_000):
        x = x * 1.0001
    x.backward()
    np.testing.assert_allclose(a.grad, [1.0001**20_000])


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((2, 3), (3,)), ((2, 3), (1, 3)), ((2, 1), (1, 3)), ((4, 2, 3), (2, 1)), ((), (2, 2))],
)
def test_broadcast_gradients_are_summed_to_the_input_shape(a_shape, b_shape):
    a, b = leaf(np.ones(a_shape)), leaf(np.ones(b_shape))
    (a * b).sum().backward()
    out_size = np.broadcast_shapes(a_shape, b_shape)
    assert a.grad.shape == a_shape and b.grad.shape == b_shape
    np.testing.assert_array_equal(a.grad, np.prod(out_size) / max(np.prod(a_shape), 1))
    np.testing.assert_array_equal(b.grad, np.prod(out_size) / max(np.prod(b_shape), 1))


def test_no_grad_builds_nothing_and_restores_the_mode():
    a = leaf([1.0, 2.0])
    assert ln.is_grad_enabled()
    with ln.no_grad():
        assert not ln.is_grad_enabled()
        b = (a * 2).sum()
    assert ln.is_grad_enabled()
    assert not b.requires_grad and b.is_leaf and b._parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        b.backward()
    assert a.grad is None
    with pytest.raises(ZeroDivisionError), ln.no_grad():
        raise ZeroDivisionError
    assert ln.is_grad_enabled()
    with ln.no_grad(), ln.no_grad():
        pass
    assert ln.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_the_data():
    a = leaf([1.0, 2.0])
    d = (a * 3).detach()
    assert not d.requires_grad and d.is_leaf
    y = (d * a).sum()
    y.backward()
    np.testing.assert_array_equal(a.grad, [3.0, 6.0])  # only through the second factor
    a2 = leaf([1.0])
    assert a2.detach().data is a2.data


def test_leaf_grad_is_a_private_copy():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    c = (a + b).sum()  # add hands the same gradient array to both inputs
    c.backward()
    a.grad *= 100
    a.grad += 1
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])
    g = np.ones(2)
    d = a + 0.0
    d.backward(g)
    g[:] = 7
    np.testing.assert_array_equal(a.grad, [102.0, 102.0])  # not aliased to the caller's g


def test_grad_from_a_broadcast_view_is_writable():
    a = leaf(np.ones((2, 3)))
    a.sum().backward()  # sum's gradient is a read-only broadcast view
    a.grad += 1
    np.testing.assert_array_equal(a.grad, 2)


def test_retain_grad_keeps_an_intermediate_gradient():
    a = leaf([1.0, 2.0])
    b = a * 3
    assert b.retain_grad() is b
    c = a * 5
    (b * b + c).sum().backward()
    np.testing.assert_array_equal(b.grad, 2 * b.numpy())
    assert c.grad is None  # not retained
    np.testing.assert_array_equal(a.grad, 2 * 3 * b.numpy() + 5)


def test_backward_with_an_explicit_gradient():
    a = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = a * a
    y.backward(np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_array_equal(a.grad, [[2.0, 0.0], [0.0, 16.0]])
    y.backward(ln.Tensor(np.ones((2, 2))))
    np.testing.assert_array_equal(a.grad, [[4.0, 4.0], [6.0, 24.0]])


def test_backward_on_a_leaf():
    a = leaf([2.0])
    a.backward()
    np.testing.assert_array_equal(a.grad, [1.0])


def test_unreached_leaves_get_no_gradient():
    a, b = leaf([1.0]), leaf([2.0])
    _ = b * 2
    (a * 2).sum().backward()
    assert b.grad is None


# ------------------------------------------------------------------------ frozen means frozen
def test_a_frozen_leaf_keeps_grad_none_and_its_branch_is_never_walked(monkeypatch):
    frozen = ln.Tensor([1.0, 2.0])
    trained = leaf([3.0, 4.0])
    walked = []
    real = graph.topological_order

    def spy(root):
        order = real(root)
        walked.extend(order)
        return order

    monkeypatch.setattr(graph, "topological_order", spy)
    branch = (frozen * 2).exp()  # needs no gradient: records nothing
    assert not branch.requires_grad and branch._backward is None and branch.parents == ()
    (branch * trained).sum().backward()
    assert frozen.grad is None and branch.grad is None
    # the walk reaches `branch` (an input of the product) but nothing behind it
    assert all(node is not frozen for node in walked)
    assert all(node.requires_grad or node.parents == () for node in walked)
    np.testing.assert_allclose(trained.grad, np.exp([2.0, 4.0]))


def test_freezing_after_the_forward_pass_still_leaves_grad_none():
    w, x = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    y = (w * x).sum()
    w.requires_grad_(False)
    y.backward()
    assert w.grad is None
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


# ------------------------------------------------------------------------ dtype
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_through_values_and_gradients(dtype):
    a = leaf([[0.5, -1.0, 2.0]], dtype)
    w = leaf(np.full((4, 3), 0.1), dtype)
    h = F.gelu(F.linear(a, w) * 2.0 + 1.0) / 3.0 - 0.5
    h = F.layer_norm(h**2, None, None)
    h.retain_grad()
    loss = F.cross_entropy(h, np.array([1])) + (a.exp().sum() * 0.5) ** 2
    assert h.dtype == dtype and loss.dtype == dtype
    loss.backward()
    assert a.grad.dtype == dtype and w.grad.dtype == dtype and h.grad.dtype == dtype


# ------------------------------------------------------------------------ backward errors
def test_backward_on_a_non_scalar_without_a_gradient_names_the_shape():
    a = leaf(np.ones((2, 3)))
    y = a * 2
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        y.backward()
    assert a.grad is None  # nothing changed


def test_backward_on_a_tensor_that_needs_no_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (ln.Tensor([1.0]) * 2).sum().backward()


def test_backward_with_a_gradient_of_the_wrong_shape():
    a = leaf(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        (a * 2).backward(np.ones((3, 2)))
    assert a.grad is None


def test_backward_with_a_non_numeric_gradient():
    a = leaf([1.0])
    with pytest.raises(TypeError, match="'x'"):
        (a * 2).backward(["x"])
    assert a.grad is None


# ------------------------------------------------------------------------ two backends
class FakeCupyArray(np.ndarray):
    """A NumPy array that claims to come from CuPy: stands in for a GPU array without a GPU."""

    def get(self):
        return np.asarray(self)


FakeCupyArray.__module__ = "cupy._core.core"


def _fake_gpu_tensor(values, requires_grad=False):
    t = ln.Tensor.from_op(np.asarray(values, dtype=np.float64).view(FakeCupyArray), (), None)
    t.requires_grad = requires_grad
    return t


def test_fake_gpu_array_is_recognised():
    assert backend.array_module(np.zeros(2).view(FakeCupyArray)) == "cupy"
    assert backend.array_module(np.zeros(2)) == "numpy"


MIXING_OPS = {
    "add": lambda cpu, gpu: cpu + gpu,
    "radd": lambda cpu, gpu: gpu + cpu,
    "sub": lambda cpu, gpu: cpu - gpu,
    "mul": lambda cpu, gpu: gpu * cpu,
    "div": lambda cpu, gpu: cpu / gpu,
    "pow": lambda cpu, gpu: cpu**gpu,
    "matmul": lambda cpu, gpu: cpu @ gpu.T,
    "matmul_array": lambda cpu, gpu: cpu @ gpu.data.T,
    "linear": lambda cpu, gpu: F.linear(cpu, gpu),
    "embedding": lambda cpu, gpu: F.embedding(np.array([0, 1]), gpu),
    "attention": lambda cpu, gpu: F.scaled_dot_product_attention(cpu, gpu, gpu),
}


@pytest.mark.parametrize("name", list(MIXING_OPS))
def test_arrays_of_two_backends_in_one_op_are_refused(name):
    cpu = leaf(np.ones((2, 2)))
    gpu = _fake_gpu_tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(TypeError, match="NumPy and CuPy"):
        MIXING_OPS[name](cpu, gpu)
    assert cpu.grad is None and gpu.grad is None


def test_ids_and_targets_in_a_tensor_on_another_backend_are_refused():
    # (a bare array of ids goes through xp.asarray, an explicit conversion, as in Tensor())
    ids = ln.Tensor.from_op(np.array([0, 1]).view(FakeCupyArray), (), None)
    with pytest.raises(TypeError, match="NumPy and CuPy"):
        F.cross_entropy(leaf(np.ones((2, 3))), ids)
    with pytest.raises(TypeError, match="NumPy and CuPy"):
        F.embedding(ids, leaf(np.ones((2, 3))))


def test_explicit_construction_moves_gpu_data_to_the_host():
    t = ln.Tensor(np.arange(3.0).view(FakeCupyArray))
    assert type(t.data) is np.ndarray
    np.testing.assert_array_equal(t.numpy(), [0.0, 1.0, 2.0])


# ------------------------------------------------------------------------ on every backend
def test_the_traps_hold_on_every_backend(backend_name):
    a = ln.Tensor([1.5, -2.0], requires_grad=True)
    assert backend.array_module(a.data) == backend_name
    ((a + a) * (a * 2 + 1)).sum().backward()  # d/da (2a (2a + 1)) = 8a + 2
    np.testing.assert_allclose(backend.to_numpy(a.grad), 8 * a.numpy() + 2)
    ((a + a) * (a * 2 + 1)).sum().backward()
    np.testing.assert_allclose(backend.to_numpy(a.grad), 2 * (8 * a.numpy() + 2))
    x = a
    for _ in range(5000):
        x = x * 1.0
    a.grad = None
    x.sum().backward()
    np.testing.assert_allclose(backend.to_numpy(a.grad), [1.0, 1.0])
    with ln.no_grad():
        assert not (a * 2).requires_grad


def test_nbytes_counts_the_data():
    t = ln.Tensor(np.zeros((3, 4), dtype=np.float32), requires_grad=True)
    assert t.nbytes == 48
    assert ln.nn.Parameter(np.zeros(5)).nbytes == 40


# ------------------------------------------------------------------------ parents and order
def test_parents_is_a_read_only_tuple_of_the_inputs():
    a, b = leaf([1.0]), leaf([2.0])
    c = a * b
    assert c.parents == (a, b) and a.parents == ()
    with pytest.raises(AttributeError):
        c.parents = ()


def test_topological_order_lists_each_node_once_root_first_before_its_parents():
    a = leaf([1.0, 2.0])
    b = a * 2
    c = a + b
    d = (c * b).sum()
    order = autograd.topological_order(d)
    assert order[0] is d
    assert len(order) == len({id(n) for n in order})
    position = {id(n): i for i, n in enumerate(order)}
    for node in order:
        for parent in node.parents:
            assert position[id(node)] < position[id(parent)]
    assert {id(a), id(b), id(c)} <= set(position)


def test_topological_order_is_iterative_on_a_5000_deep_chain():
    x = leaf([1.0])
    y = x
    for _ in range(5000):
        y = y * 1.0
    order = autograd.topological_order(y)
    assert order[0] is y and order[-1] is not y and x in order


def test_topological_order_works_on_any_node_with_parents():
    class N:
        def __init__(self, *parents):
            self.parents = parents

    a = N()
    b = N(a)
    c = N(a, b)
    assert autograd.topological_order(c) == [c, b, a]


def test_no_grad_is_per_thread():
    import threading

    inside, release = threading.Event(), threading.Event()

    def worker():
        with ln.no_grad():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    try:
        assert ln.is_grad_enabled()  # the other thread's no_grad does not reach this one
        x = leaf([1.0])
        assert (x * 2).requires_grad
    finally:
        release.set()
        thread.join()


# ------------------------------------------------------------------------ in-place changes
def test_changing_data_after_the_forward_pass_is_caught_at_backward():
    w, x = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    y = (w * x).sum()
    w.data += 1.0  # the product's backward would use the new w: a silently wrong x.grad
    with pytest.raises(RuntimeError, match="changed in place"):
        y.backward()


def test_assigning_data_after_the_forward_pass_is_caught_too():
    w = leaf([[1.0, 2.0]])
    y = (w @ ln.Tensor([[1.0], [1.0]])).sum()
    w.data = np.array([[5.0, 6.0]])
    with pytest.raises(RuntimeError, match="version"):
        y.backward()


def test_changing_data_before_the_forward_pass_is_fine():
    w, x = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    w.data += 1.0
    (w * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])
