"""Checker for notebook 00's scalar engine: the learner's ``Value`` class.

``check_value(Value)`` builds expressions with the learner's class (``+``, ``*``, ``**`` with a
number exponent, ``tanh``, ``exp``, subtraction, division, negation, a plain number on either
side), calls ``backward()`` and compares every value and every leaf's ``.grad`` with
:class:`_Sim`, a tiny engine of the checker's own whose switches reproduce the classic
mistakes, so that a wrong gradient is named: ``=`` instead of ``+=`` in a closure, no seed
gradient of 1, tanh's slope 1 − t, the power rule's slope n·xⁿ, closures run in forward
order, and a recursive walk on a deep chain. ``Value`` here is the library's answer, the class
the notebook uses until the learner's passes.
"""

from __future__ import annotations

import math
from typing import Any

from ..graph import topological_order
from ._harness import ExerciseError, call, describe, exercise, np, passed

__all__ = ["Value", "check_value"]


# ----------------------------------------------------------------------------- reference
class Value:
    """A scalar that remembers how it was computed (the library's answer to the exercise).

    ``data`` is the number, ``grad`` is d(output)/d(self) once ``backward()`` ran on an
    output, ``parents`` the Values it was computed from, ``_backward`` the closure that adds
    ``grad`` times the local derivative into the parents' ``grad``.
    """

    def __init__(self, data, parents=(), op=""):
        self.data = float(data)
        self.grad = 0.0
        self.parents = tuple(parents)
        self.op = op
        self._backward = lambda: None  # a leaf passes nothing on

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():  # both slopes are 1; += because a + a is one node used twice
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():  # d(ab)/da = b, d(ab)/db = a
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, exponent):
        if not isinstance(exponent, int | float):
            raise TypeError(f"the exponent must be a number, got {type(exponent).__name__}")
        out = Value(self.data**exponent, (self,), f"**{exponent}")

        def _backward():  # d(x^n)/dx = n x^(n-1)
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():  # d tanh(x)/dx = 1 - tanh(x)^2
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def exp(self):
        e = math.exp(self.data)
        out = Value(e, (self,), "exp")

        def _backward():  # d e^x/dx = e^x, the output itself
            self.grad += e * out.grad

        out._backward = _backward
        return out

    # The rest are built from the ops above, so they need no closure of their own.
    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):  # other - self
        return (-self) + other

    def __truediv__(self, other):
        return self * other**-1

    def __rtruediv__(self, other):  # other / self
        return self**-1 * other

    __radd__ = __add__  # 2 + v: addition commutes
    __rmul__ = __mul__

    def backward(self):
        """Fill ``.grad`` of every node this one depends on (add into them: call it once)."""
        self.grad = 1.0  # d(self)/d(self)
        for node in topological_order(self):  # each node after every node that uses it
            node._backward()


# -------------------------------------------------------------- the checker's own engine
class _Sim:
    """The checker's scalar engine. Each node holds its parents and the local slopes; the
    class switches reproduce a wrong engine (one mistake at a time) so its answer can be
    compared with the learner's."""

    assign = False  # `=` instead of `+=` in the closures
    seed = 1.0  # the gradient backward starts from
    tanh_wrong = False  # 1 - t instead of 1 - t^2
    power_wrong = False  # n x^n instead of n x^(n-1)
    forward_order = False  # closures run leaves first
    naive = False  # no order: a node's closure runs each time a walk from the root reaches it

    def __init__(self, data, parents=(), slopes=()):
        self.data, self.parents, self.slopes, self.grad = float(data), parents, slopes, 0.0

    def _lift(self, other):
        return other if isinstance(other, _Sim) else type(self)(other)

    def __add__(self, other):
        other = self._lift(other)
        return type(self)(self.data + other.data, (self, other), (1.0, 1.0))

    def __mul__(self, other):
        other = self._lift(other)
        return type(self)(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, n):
        x = self.data
        slope = n * x**n if self.power_wrong else n * x ** (n - 1)
        return type(self)(x**n, (self,), (slope,))

    def tanh(self):
        t = math.tanh(self.data)
        return type(self)(t, (self,), (1 - t if self.tanh_wrong else 1 - t * t,))

    def exp(self):
        e = math.exp(self.data)
        return type(self)(e, (self,), (e,))

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __truediv__(self, other):
        return self * other**-1

    def __rtruediv__(self, other):
        return self**-1 * other

    __radd__ = __add__
    __rmul__ = __mul__

    def backward(self):
        self.grad = self.seed
        order = _every_path(self) if self.naive else topological_order(self)
        for node in reversed(order) if self.forward_order else order:
            for parent, slope in zip(node.parents, node.slopes, strict=True):
                if self.assign:
                    parent.grad = slope * node.grad
                else:
                    parent.grad += slope * node.grad


def _every_path(root) -> list:
    """The nodes in the order a naive recursive walk meets them (once per path), preorder."""
    order, stack = [], [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(node.parents))
    return order


def _variant(**switches) -> type:
    return type("_Wrong", (_Sim,), switches)


_MISTAKES = [  # (explanation, engine): checked in this order, the first match is named
    (
        "Your backward starts from .grad = 0: set the output's own gradient to 1 first "
        "(d out / d out = 1), then run the closures",
        _variant(seed=0.0),
    ),
    (
        "A closure assigns (`self.grad = ...`) where it must add (`self.grad += ...`): in "
        "`a + a` the node a is both inputs, and each use must add its share",
        _variant(assign=True),
    ),
    (
        "tanh's slope is 1 - t there: the derivative of tanh is 1 - tanh(x)**2, so use 1 - t*t",
        _variant(tanh_wrong=True),
    ),
    (
        "the power's slope is n * x**n there: the power rule gives n * x**(n - 1)",
        _variant(power_wrong=True),
    ),
    (
        "backward ran the closures in forward order (leaves first): a node passed on its "
        "gradient before the nodes that use it had added theirs. Run them in "
        "topological_order(self), root first",
        _variant(forward_order=True),
    ),
    (
        "A node ran its closure once per path to it (a walk without a topological order): "
        "in b = a + a, a passed on its gradient twice. Run each closure once, in "
        "topological_order(self)",
        _variant(naive=True),
    ),
]


# ------------------------------------------------------------------------------- cases
# (expression, leaf values, what to call it): each builds with any Value-like class.
_OPS = [
    ("a * b", (1.5, -2.0), lambda a, b: a * b),
    ("a + b", (0.5, -1.25), lambda a, b: a + b),
    ("a + a", (0.7,), lambda a: a + a),
    ("a * a", (-1.3,), lambda a: a * a),
    ("a ** 3", (1.7,), lambda a: a**3),
    ("a ** -1", (1.6,), lambda a: a**-1),
    ("a ** 0.5", (2.5,), lambda a: a**0.5),
    ("a.tanh()", (0.6,), lambda a: a.tanh()),
    ("a.exp()", (0.8,), lambda a: a.exp()),
    ("a + 2.0", (0.3,), lambda a: a + 2.0),
    ("2.0 + a", (0.3,), lambda a: 2.0 + a),
    ("a * 3.0", (-0.4,), lambda a: a * 3.0),
    ("3.0 * a", (-0.4,), lambda a: 3.0 * a),
    ("-a", (1.1,), lambda a: -a),
    ("a - b", (1.0, 2.5), lambda a, b: a - b),
    ("a - 1.5", (0.2,), lambda a: a - 1.5),
    ("1.5 - a", (0.2,), lambda a: 1.5 - a),
    ("a / b", (1.2, -0.8), lambda a, b: a / b),
    ("a / 4.0", (1.2,), lambda a: a / 4.0),
    ("4.0 / a", (1.2,), lambda a: 4.0 / a),
]


def _twice(x):
    a = x * x
    return a + a


def _two_depths(x):
    a = x.tanh()
    return (a**2).exp() + a


_GRAPHS = [
    ("(a * b).tanh() + a", (0.9, -0.7), lambda a, b: (a * b).tanh() + a),
    (
        "the neuron (w1 * x1 + w2 * x2 + b).tanh()",
        (2.0, -1.0, -0.5, 1.5, 0.8),
        lambda x1, x2, w1, w2, b: (w1 * x1 + w2 * x2 + b).tanh(),
    ),
    ("b = a + a with a = x * x", (2.0,), _twice),
    (
        "x * x.exp() - (x ** 2).tanh() / 3.0 + 1.0",
        (0.45,),
        lambda x: x * x.exp() - (x**2).tanh() / 3.0 + 1.0,
    ),
    (
        "m + a with m = (a ** 2).exp(), a = x.tanh(): a used at two depths",
        (0.3,),
        _two_depths,
    ),
]
_CHAIN = 3000  # ops: deeper than Python's recursion limit of 1000


def _number(value: Any, what: str, case: str) -> float:
    """A learner's ``.data`` or ``.grad`` as a float, or an error that says what it was."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype != bool:
        value = value[()]  # a 0-d array holds one number: read it
    if type(value) in (int, float) or isinstance(value, np.floating | np.integer):
        number = float(value)
        if math.isfinite(number):
            return number
    raise ExerciseError(f"Value: on {case}, {what} is {describe(value)}; expected a finite number")


def _build(cls, values, expression):
    leaves = [cls(v) for v in values]
    return leaves, expression(*leaves)


def _run_case(cls, case: str, values, expression, expected_data) -> tuple[list, list]:
    """Build ``expression`` with the learner's class, run backward; (leaf grads, leaf data)."""
    leaves, out = call(_build, "Value", case, cls, values, expression)
    if not isinstance(out, cls):
        raise ExerciseError(
            f"Value: `{case}` returned {describe(out)}; expected a Value: every op returns a new "
            "Value (wrap a plain number with Value(number), never return the float)"
        )
    _check_links(out, leaves, case)
    data = _number(getattr(out, "data", None), f"the result's .data of `{case}`", case)
    if not math.isclose(data, expected_data, rel_tol=1e-9, abs_tol=1e-12):
        raise ExerciseError(
            f"Value: `{case}` gives .data {data:.6g} at {_at(values, expression)}; "
            f"expected {expected_data:.6g}"
        )
    backward = getattr(out, "backward", None)
    try:
        call(backward, "Value", case)
    except ExerciseError as err:
        if "RecursionError" in str(err):
            raise ExerciseError(
                f"Value.backward hit Python's recursion limit on {case}: a recursive walk needs "
                "one nested call per op. Walk the graph with your topological_order from "
                "Exercise 00.1 (iterative), not with a function that calls itself"
            ) from None
        raise
    grads = [_number(getattr(leaf, "grad", None), "a leaf's .grad", case) for leaf in leaves]
    after = [_number(getattr(leaf, "data", None), "a leaf's .data", case) for leaf in leaves]
    return grads, after


def _check_links(out, leaves: list, case: str) -> None:
    """The result must hold its inputs in ``.parents`` and its closure in ``._backward``: the
    notebook's later cells walk ``.parents`` and call ``._backward`` themselves."""
    parents = getattr(out, "parents", None)
    if not isinstance(parents, tuple | list) or not callable(getattr(out, "_backward", None)):
        raise ExerciseError(
            f"Value: the result of `{case}` needs `.parents` (a tuple of the Values it was "
            "computed from) and `._backward` (its closure, a function of no arguments); got "
            f".parents = {describe(parents)}"
        )
    if case == _OPS[0][0] and [id(p) for p in parents] != [id(leaf) for leaf in leaves]:
        raise ExerciseError(
            f"Value: the result of `{case}` has .parents {describe(parents)}; expected the "
            "tuple (a, b) of the two Values it was computed from"
        )


def _at(values, expression) -> str:
    """'a = 1.5, b = -2' with the expression's own argument names."""
    names = expression.__code__.co_varnames[: expression.__code__.co_argcount]
    return ", ".join(f"{n} = {v:.6g}" for n, v in zip(names, values, strict=True))


def _grads(engine: type, values, expression) -> tuple[list, float]:
    leaves = [engine(v) for v in values]
    out = expression(*leaves)
    out.backward()
    return [leaf.grad for leaf in leaves], out.data


def _close(a: list, b: list) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-7, abs_tol=1e-10) for x, y in zip(a, b, strict=True))


def _compare(got: list, values, expression, case: str) -> None:
    want, _ = _grads(_Sim, values, expression)
    if _close(got, want):
        return
    for explanation, engine in _MISTAKES:
        wrong, _ = _grads(engine, values, expression)
        if not _close(wrong, want) and _close(got, wrong):
            raise ExerciseError(
                f"Value: wrong gradient on `{case}` at {_at(values, expression)}. {explanation}"
            )
    yours = ", ".join(f"{g:.6g}" for g in got)
    expected = ", ".join(f"{g:.6g}" for g in want)
    raise ExerciseError(
        f"Value: wrong gradient on `{case}` at {_at(values, expression)}: the leaves' .grad "
        f"are [{yours}], expected [{expected}]"
    )


def _chain(x):
    c = 1 + 1 / _CHAIN
    for _ in range(_CHAIN):
        x = x * c
    return x


@exercise("Value", Value)
def check_value(cls: Any, *, quiet: bool = False) -> None:
    """Check the class ``cls``: values and gradients of every op, plain numbers on either side,
    graphs where a node is used twice, and a chain of 3,000 ops (an iterative backward).

    Cases: each op alone (``a * b`` first, where a missing seed shows), ``a + a`` and
    ``a * a`` (``=`` instead of ``+=``), powers 3, -1 and 0.5, tanh, exp, ``2.0 + a`` and the
    other reflected forms, then whole graphs (forward order shows there).
    """
    if not isinstance(cls, type):
        raise ExerciseError(
            f"Value: expected your class, got {describe(cls)}; pass the class itself, e.g. "
            "check_value(Value)"
        )
    if issubclass(cls, Value | _Sim):
        raise ExerciseError(
            "Value: that is the library's Value (or a class built on it); write your own class"
        )
    rng = np.random.default_rng(7)  # a neuron at random inputs (the grader draws its own)
    neuron = tuple(float(v) for v in rng.uniform(-1.5, 1.5, size=5))
    cases = [*_OPS, *_GRAPHS, ("the neuron at random inputs", neuron, _GRAPHS[1][2])]
    for what, values, expression in cases:
        _, want_data = _grads(_Sim, values, expression)  # the answer first
        grads, after = _run_case(cls, what, values, expression, want_data)
        if after != [float(v) for v in values]:
            raise ExerciseError(
                f"Value: backward changed a leaf's .data on `{what}`: it must only fill .grad"
            )
        _compare(grads, values, expression, what)
    deep = f"a chain of {_CHAIN:,} multiplications by 1 + 1/{_CHAIN}"
    _, want_data = _grads(_Sim, (1.0,), _chain)
    grads, _ = _run_case(cls, deep, (1.0,), _chain, want_data)
    _compare(grads, (1.0,), _chain, deep)
    passed("Value", len(cases) + 1, quiet)
