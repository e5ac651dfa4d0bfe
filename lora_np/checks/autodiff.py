"""Checkers for notebook 00 (autodiff): ``unbroadcast`` and ``topological_order``.

``check_unbroadcast(fn)`` feeds gradients of broadcast results (new leading axes, stretched
length-1 axes, both, none, a scalar) and compares with :func:`lora_np.autograd.unbroadcast`.
``check_topological_order(fn)`` builds small graphs of its own nodes (anything with a
``.parents`` tuple works) and accepts any order that lists every reachable node once, root
first, each node before all of its parents; several orders are valid and all are accepted.
"""

from __future__ import annotations

import math
from typing import Any

from .. import autograd
from . import _guard
from ._harness import (
    ExerciseError,
    as_array,
    call,
    compare,
    describe,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = ["check_topological_order", "check_unbroadcast"]


# ---------------------------------------------------------------------------- unbroadcast
# (grad shape, input shape, what the case is): every way broadcasting can copy an input.
_UNBROADCAST_CASES = [
    ((4, 3), (3,), "a (3,) bias broadcast over a batch of 4: one new leading axis"),
    ((4, 3), (4, 1), "a (4, 1) column stretched along axis 1"),
    ((2, 4, 3), (4, 1), "a (4, 1) input in a (2, 4, 3) result: a new axis and a stretched one"),
    ((2, 4, 3), (1, 3), "a (1, 3) input in a (2, 4, 3) result: a new axis and a stretched one"),
    ((5, 2, 3), (5, 1, 3), "keepdims-style (5, 1, 3): a stretched middle axis"),
    ((2, 3, 5), (1, 3, 1), "keepdims-style (1, 3, 1): two stretched axes, the middle one kept"),
    ((3, 3), (3, 1), "a square (3, 3) result of a (3, 1) input"),
    ((4, 3), (4, 3), "no broadcasting at all: the gradient comes back unchanged"),
    ((4, 3), (), "a scalar (shape ()) added to a (4, 3) array"),
    ((2, 3, 4), (1, 1, 1), "a (1, 1, 1) input: every axis stretched"),
    ((1, 3), (1, 1), "a (1, 1) input in a (1, 3) result"),
    ((6,), (1,), "a (1,) input in a (6,) result"),
]


def _unbroadcast_shape_mistake(grad_shape: tuple, shape: tuple, got_shape: tuple) -> str | None:
    """The classic wrong version whose output has ``got_shape``, explained; or None."""
    extra = len(grad_shape) - len(shape)
    stretched = [i for i, n in enumerate(shape) if n == 1 and grad_shape[extra + i] != 1]
    if stretched and got_shape == tuple(grad_shape[extra:]):
        return (
            "you did not sum over the stretched axes: an axis of length 1 in `shape` was "
            "copied by broadcasting too, so sum over it as well (with keepdims=True)"
        )
    if extra and got_shape == tuple(grad_shape[:extra]) + tuple(shape):
        return (
            f"you did not sum over the new leading axes: broadcasting added {extra} "
            f"ax{'is' if extra == 1 else 'es'} in front of `shape`, and the input was copied "
            "along those too"
        )
    kept = tuple(n for i, n in enumerate(shape) if i not in stretched)
    if got_shape == kept and stretched:
        return (
            "the axes of length 1 disappeared: sum over them with keepdims=True, since a "
            "gradient always has exactly the shape of its input"
        )
    return None


@exercise("unbroadcast", autograd.unbroadcast)
def check_unbroadcast(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(grad, shape)``: ``grad`` summed back to ``shape`` over the broadcast axes.

    Cases: new leading axes, stretched length-1 axes, both, no broadcasting, a scalar shape
    ``()``, keepdims-style shapes, and a float32 gradient (judged at float32 precision).
    """
    name = "unbroadcast"
    rng = np.random.default_rng(0)
    cases = [(g, s, what, np.float64) for g, s, what in _UNBROADCAST_CASES]
    cases.append(((6, 4), (4,), "a float32 gradient, (6, 4) summed to (4,)", np.float32))
    for grad_shape, shape, what, dtype in cases:
        case = f"grad {grad_shape} to shape {shape} ({what})"
        grad = rng.standard_normal(grad_shape).astype(dtype)
        # the answer first, in float64, so a float32 gradient summed in float64 is judged fairly
        want = autograd.unbroadcast(grad.astype(np.float64), shape)
        given = grad.copy()
        before = snapshot(given, shape)
        got = call(fn, name, case, given, shape)
        if not np.array_equal(given, grad):
            raise ExerciseError(
                f"{name} changed its input `grad` in place on {case}: sum into a new array "
                "(the same gradient array may be handed to several inputs)"
            )
        unchanged(name, case, ("grad", "shape"), before, [given, shape])
        got = as_array(got, name, case)
        got_shape = tuple(got.shape)
        if got_shape != tuple(shape):
            mistake = _unbroadcast_shape_mistake(grad_shape, shape, got_shape)
            if mistake is not None:
                raise ExerciseError(
                    f"{name}: returned shape {got_shape} on {case}, expected {tuple(shape)}: "
                    f"{mistake}"
                )
        copies = math.prod(grad_shape) // max(1, math.prod(shape))
        mistakes = [
            (
                f"Your answer is the mean of the {copies} copies' gradients, not their sum: "
                "each copy contributes its whole gradient, so add them up",
                want / copies,
            ),
        ]
        compare(got, want, name, case, mistakes, "gradient", precision_of(grad))
    passed(name, len(cases), quiet)


# ---------------------------------------------------------------------- topological_order
class _Node:
    """A graph node for the checker: a name (for messages) and the nodes it was computed from."""

    __slots__ = ("name", "parents")

    def __init__(self, name: str, *parents: _Node):
        self.name = name
        self.parents = tuple(parents)

    def __repr__(self) -> str:
        return self.name


def _reachable(root: _Node) -> list:
    """The nodes reachable from ``root``, found independently of any order (set semantics)."""
    seen, stack = {id(root): root}, [root]
    while stack:
        for parent in stack.pop().parents:
            if id(parent) not in seen:
                seen[id(parent)] = parent
                stack.append(parent)
    return list(seen.values())


def _graphs() -> list:
    """(what, root, extra nodes outside the graph) for every case the checker runs."""
    graphs = []
    x = _Node("x")
    graphs.append(("a single leaf `x`", x, []))

    x = _Node("x")
    a = _Node("a", x, x)  # a = x * x
    b = _Node("b", a, a)  # b = a + a
    graphs.append(("the diamond b = a + a with a = x * x", b, []))

    # a is used by two consumers at different depths: by loss directly and through k and m
    x = _Node("x")
    a = _Node("a", x)
    k = _Node("k", a)
    m = _Node("m", k)
    loss = _Node("loss", m, a)
    graphs.append(("loss = m + a with m = g(k), k = g(a): `a` used at two depths", loss, []))

    # the neuron of the notebook, with a leaf (z) that is not connected to the output
    x1, x2, w1, w2, bias, z = (_Node(n) for n in ("x1", "x2", "w1", "w2", "bias", "z"))
    s = _Node("s", _Node("w1*x1", w1, x1), _Node("w2*x2", w2, x2))
    y = _Node("y", _Node("s+bias", s, bias))
    unused = _Node("unused", z, w1)  # a consumer of w1 that y does not depend on
    graphs.append(
        ("the neuron y = tanh(w1 x1 + w2 x2 + bias), with nodes y never uses", y, [z, unused])
    )

    # random DAGs: each node computed from up to three earlier ones
    rng = np.random.default_rng(1)
    for n_nodes in (12, 40):
        nodes = [_Node(f"n{i}") for i in range(4)]
        for i in range(4, n_nodes):
            picks = rng.choice(i, size=int(rng.integers(1, 4)), replace=True)
            nodes.append(_Node(f"n{i}", *(nodes[int(j)] for j in picks)))
        graphs.append((f"a random graph of {n_nodes} nodes", nodes[-1], []))

    # 40 stacked diamonds (each level: two nodes computed from the one below, joined above):
    # 121 nodes but 2**40 paths, so a walk that follows every path never finishes. A chain of
    # 5,000 ops on top also defeats a recursive walk (deeper than Python's recursion limit).
    bottom = _Node("d0")
    for level in range(1, _DIAMONDS + 1):
        left = _Node(f"l{level}", bottom)
        right = _Node(f"r{level}", bottom)
        bottom = _Node(f"d{level}", left, right)
    chain = _Node("c0", bottom)
    for i in range(1, 5000):
        chain = _Node(f"c{i}", chain)
    graphs.append((_DEEP_CASE, chain, []))
    return graphs


_DIAMONDS = 40
_DEEP_CASE = (
    f"a chain of 5,000 ops on top of {_DIAMONDS} stacked diamonds (deeper than Python's "
    f"recursion limit, and 2**{_DIAMONDS} paths from the root to the bottom leaf)"
)


def _call_order(fn: Any, name: str, case: str, root: _Node) -> Any:
    try:
        return call(fn, name, case, root)
    except ExerciseError as err:
        if "RecursionError" in str(err):
            raise ExerciseError(
                f"{name} hit Python's recursion limit on {case}: a recursive walk needs one "
                "nested call per level of the graph. Make it iterative: keep the nodes still "
                "to visit on an explicit stack (a list you append to and pop from)"
            ) from None
        if "did not return within" in str(err) and case == _DEEP_CASE:
            raise ExerciseError(
                f"{err} On this graph a walk that follows every path reaches the bottom of the "
                f"diamonds 2**{_DIAMONDS} times: mark each node as visited the first time you "
                "reach it and never walk it again, so every node is handled once"
            ) from None
        raise


def _check_order(got: Any, name: str, case: str, root: _Node, outside: list) -> None:
    """Raise an ExerciseError unless ``got`` is a valid root-first order of root's graph."""
    if got is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    if isinstance(got, list | tuple):
        order = list(list.__iter__(got) if isinstance(got, list) else tuple.__iter__(got))
    else:  # another iterable (a reversed list, a generator): read it within the time limit
        outcome = _guard.run_limited(list, (got,))
        if outcome.timed_out or outcome.error is not None:
            raise ExerciseError(
                f"{name} returned {describe(got)} on {case}, which could not be read as a "
                "sequence of nodes; expected a list of nodes"
            )
        order = outcome.value
    nodes = _reachable(root)
    ids = {id(n) for n in nodes}
    outside_ids = {id(n) for n in outside}
    for item in order:
        if id(item) in outside_ids:
            raise ExerciseError(
                f"{name}: on {case}, your list contains {item!r}, which the root does not "
                "depend on: list only the nodes reachable from root through .parents"
            )
        if id(item) not in ids:
            raise ExerciseError(
                f"{name}: on {case}, your list contains {describe(item)}, which is not a node "
                "of the graph: return the node objects themselves"
            )
    counts: dict[int, int] = {}
    for item in order:
        counts[id(item)] = counts.get(id(item), 0) + 1
    repeated = [item for item in order if counts[id(item)] > 1]
    if repeated:
        raise ExerciseError(
            f"{name}: on {case}, node {repeated[0]!r} appears {counts[id(repeated[0])]} times: "
            "a walk without a visited set reaches a node once per path to it. Keep a set of "
            "the nodes already visited and skip them"
        )
    missing = [n for n in nodes if id(n) not in counts]
    if missing:
        raise ExerciseError(
            f"{name}: on {case}, your list has {len(order)} of the {len(nodes)} reachable nodes; "
            f"missing e.g. {missing[0]!r}: every node reachable through .parents (leaves too) "
            "belongs in the order"
        )
    position = {id(item): i for i, item in enumerate(order)}
    if order[0] is not root:
        if order[-1] is root:
            raise ExerciseError(
                f"{name}: on {case}, the root comes last: the order is reversed. A depth-first "
                "walk appends a node after its parents; reverse that list so the root is first"
            )
        raise ExerciseError(
            f"{name}: on {case}, the first node is {order[0]!r}, not the root {root!r}"
        )
    for node in order:
        for parent in node.parents:
            if position[id(parent)] < position[id(node)]:
                raise ExerciseError(
                    f"{name}: on {case}, {parent!r} comes before {node!r}, which uses it: its "
                    f"gradient would be passed on before {node!r} has added its share. A "
                    "breadth-first or pre-order walk places a node after its first user; it must "
                    "come after all of them (append each node after its parents, then reverse)"
                )


@exercise("topological_order", autograd.topological_order)
def check_topological_order(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(root)``: every node reachable through ``.parents`` once, each before its parents.

    Any valid order passes. Cases: a leaf, ``b = a + a``, a node used at two depths, leaves
    not connected to the root, random graphs, and a 5,000-deep chain (a recursive walk fails).
    """
    name = "topological_order"
    graphs = _graphs()
    for what, root, outside in graphs:
        case = what
        graph = [(node, node.name, node.parents) for node in _reachable(root) + outside]
        got = _call_order(fn, name, case, root)
        for node, label, parents in graph:
            if node.name != label or node.parents is not parents:
                raise ExerciseError(
                    f"{name} changed the graph on {case}: node {label}'s .name or .parents was "
                    "reassigned. Only read the nodes; the engine needs the graph as it was"
                )
        _check_order(got, name, case, root, outside)
    passed(name, len(graphs), quiet)
