"""The notebook-00 checkers accept every correct solution and name each classic mistake."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from lora_np import autograd
from lora_np.checks import (
    ExerciseError,
    _guard,
    check_topological_order,
    check_unbroadcast,
    passing_or_reference,
)
from lora_np.checks.autodiff import _check_order, _graphs


def rejected(checker, fn) -> str:
    """The checker's message for ``fn``; fails the test if ``fn`` passes."""
    with pytest.raises(ExerciseError) as info:
        checker(fn, quiet=True)
    return str(info.value)


# ------------------------------------------------------------------------------ unbroadcast
def unbroadcast_loops(grad, shape):
    """Written differently: one axis at a time, in a loop."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def unbroadcast_float64(grad, shape):
    """Correct, but always answers in float64 (a float32 gradient summed in float64)."""
    grad = np.asarray(grad, dtype=np.float64)
    padded = (1,) * (grad.ndim - len(shape)) + tuple(shape)
    axes = tuple(i for i, n in enumerate(padded) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def unbroadcast_float32(grad, shape):
    """Correct, but answers in float32 (judged at float32 precision)."""
    return unbroadcast_loops(np.asarray(grad, dtype=np.float32), shape)


@pytest.mark.parametrize("fn", [autograd.unbroadcast, unbroadcast_loops, unbroadcast_float64])
def test_unbroadcast_correct_versions_pass(fn, capsys):
    check_unbroadcast(fn)
    assert "✓ unbroadcast: all" in capsys.readouterr().out


def test_unbroadcast_float32_answers_pass():
    check_unbroadcast(unbroadcast_float32, quiet=True)


def only_leading_axes(grad, shape):
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    return grad


def only_stretched_axes(grad, shape):
    extra = grad.ndim - len(shape)
    axes = tuple(extra + i for i, n in enumerate(shape) if n == 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def drops_keepdims(grad, shape):
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes) if axes else grad


def mean_instead_of_sum(grad, shape):
    out = autograd.unbroadcast(grad, shape)
    return out * (np.size(out) / grad.size)


def returns_grad(grad, shape):
    return grad


def sums_in_place(grad, shape):
    out = autograd.unbroadcast(grad.copy(), shape)
    grad *= 0  # a learner reusing the input array as scratch space
    return out


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (only_leading_axes, "stretched"),
        (only_stretched_axes, "new leading axes"),
        (drops_keepdims, "keepdims=True"),
        (mean_instead_of_sum, "the mean of the"),
        (returns_grad, "new leading axes"),
        (sums_in_place, "in place"),
        (lambda g, s: autograd.unbroadcast(g, s) * np.nan, "NaN"),
        (lambda g, s: np.full(s, "x"), "expected numbers"),
        (lambda g, s: None, "forget `return`"),
        (lambda g, s: autograd.unbroadcast(g, s).T.copy() if len(s) == 2 else g.sum(), "shape"),
    ],
)
def test_unbroadcast_mistakes_are_named(wrong, names):
    assert names in rejected(check_unbroadcast, wrong)


def test_unbroadcast_stub_and_non_callable():
    def stub(grad, shape):
        raise NotImplementedError

    assert "not written yet" in rejected(check_unbroadcast, stub)
    assert "expected your function" in rejected(check_unbroadcast, 3.0)
    assert "raised ValueError" in rejected(check_unbroadcast, lambda g, s: g.reshape(s))


def test_unbroadcast_falls_back_to_the_library(capsys):
    assert passing_or_reference(unbroadcast_loops, "unbroadcast") is unbroadcast_loops
    assert passing_or_reference(drops_keepdims, "unbroadcast") is autograd.unbroadcast
    assert "using the library's unbroadcast" in capsys.readouterr().out


# ------------------------------------------------------------------------ topological_order
def kahn_order(root):
    """Written differently: Kahn's algorithm on consumer counts, breadth-first, no DFS."""
    consumers, stack, seen = {}, [root], {id(root)}
    while stack:  # count each node's uses within the graph
        node = stack.pop()
        for parent in node.parents:
            consumers[id(parent)] = consumers.get(id(parent), 0) + 1
            if id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    order, ready = [], deque([root])
    while ready:  # a node is ready once every one of its uses has been placed
        node = ready.popleft()
        order.append(node)
        for parent in node.parents:
            consumers[id(parent)] -= 1
            if consumers[id(parent)] == 0:
                ready.append(parent)
    return order


def recursive_order(root):
    """Correct, but recursive: fine on small graphs, fails on a deep chain."""
    finished, seen = [], set()

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            for parent in node.parents:
                visit(parent)
            finished.append(node)

    visit(root)
    return finished[::-1]


@pytest.mark.parametrize("fn", [autograd.topological_order, kahn_order])
def test_topological_order_correct_versions_pass(fn, capsys):
    check_topological_order(fn)
    assert "✓ topological_order: all" in capsys.readouterr().out


def test_kahn_gives_another_valid_order_than_the_reference():
    """The checker must accept orders other than the reference's: Kahn's differs on a case."""
    differs = [
        what
        for what, root, _ in _graphs()
        if [id(n) for n in kahn_order(root)] != [id(n) for n in autograd.topological_order(root)]
    ]
    assert differs


def test_recursive_order_passes_small_graphs_and_fails_the_deep_chain():
    small = [(what, root, outside) for what, root, outside in _graphs() if "5,000" not in what]
    for what, root, outside in small:
        _check_order(recursive_order(root), "topological_order", what, root, outside)
    message = rejected(check_topological_order, recursive_order)
    assert "recursion limit" in message and "5,000" in message
    assert "Make it iterative" in message


def dfs_without_visited_set(root):
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.parents)
    return order


def breadth_first(root):
    order, seen, queue = [], {id(root)}, deque([root])
    while queue:
        node = queue.popleft()
        order.append(node)
        for parent in node.parents:
            if id(parent) not in seen:
                seen.add(id(parent))
                queue.append(parent)
    return order


def pre_order_with_visited_set(root):
    """The "run each node the first time it is reached" walk: a visited set but no sort."""
    order, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            order.append(node)
            stack.extend(node.parents)
    return order


def parents_first(root):
    return autograd.topological_order(root)[::-1]


def without_leaves(root):
    return [n for n in autograd.topological_order(root) if n.parents] or [root]


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (dfs_without_visited_set, "visited set"),
        (breadth_first, "breadth-first"),
        (pre_order_with_visited_set, "comes before"),
        (parents_first, "reversed"),
        (without_leaves, "missing"),
        (lambda root: [n.name for n in autograd.topological_order(root)], "not a node"),
        (lambda root: None, "forget `return`"),
        (lambda root: 42, "expected a list of nodes"),
    ],
)
def test_topological_order_mistakes_are_named(wrong, names):
    assert names in rejected(check_topological_order, wrong)


def test_topological_order_stub_and_non_callable():
    def stub(root):
        raise NotImplementedError

    assert "not written yet" in rejected(check_topological_order, stub)
    assert "expected your function" in rejected(check_topological_order, "order")
    message = rejected(check_topological_order, lambda root: root._prev)
    assert "raised AttributeError" in message


def test_reference_topological_order_on_a_deep_chain():
    class Node:
        def __init__(self, *parents):
            self.parents = parents

    chain = Node()
    for _ in range(20_000):
        chain = Node(chain)
    order = autograd.topological_order(chain)
    assert len(order) == 20_001 and order[0] is chain and not order[-1].parents


# ----------------------------------------------------------------------------- soundness
def unbroadcast_float32_sum_as_float64(grad, shape):
    """Correct: the float32 sum, handed back in float64 (judged at the input's precision)."""
    return autograd.unbroadcast(grad, shape).astype(np.float64)


def test_a_float32_sum_returned_as_float64_passes():
    check_unbroadcast(unbroadcast_float32_sum_as_float64, quiet=True)


def every_path_last_kept(root):
    """Iterative, but follows every path (2**depth of them), keeping each node's last visit."""
    order = {}
    stack = [root]
    while stack:
        node = stack.pop()
        order.pop(node, None)
        order[node] = True
        stack.extend(node.parents)
    return list(order)


def test_an_exponential_walk_is_given_up_on_and_named(monkeypatch):
    monkeypatch.setattr(_guard, "TIME_LIMIT_S", 1.0)
    message = rejected(check_topological_order, every_path_last_kept)
    assert "did not return within" in message and "visited" in message


def test_a_walk_that_rewires_the_graph_is_refused():
    def cuts_parents(root):
        order = autograd.topological_order(root)
        root.parents = ()
        return order

    assert "changed the graph" in rejected(check_topological_order, cuts_parents)
