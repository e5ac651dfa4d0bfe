"""check_value accepts independently written Value classes and names each classic mistake."""

from __future__ import annotations

import math

import pytest

from lora_np.checks import ExerciseError, check_value, passing_or_reference
from lora_np.checks import value as value_module
from lora_np.graph import topological_order

# The micrograd-style class a learner writes: closures that add with +=, a seed of 1, the
# closures run in topological order (root first).
CLOSURES = """
class Value:
    def __init__(self, data, parents=(), op=""):
        self.data = float(data)
        self.grad = 0.0
        self.parents = tuple(parents)
        self.op = op
        self._backward = lambda: None

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, n):
        out = Value(self.data**n, (self,), "**")

        def _backward():
            self.grad += n * self.data ** (n - 1) * out.grad

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def exp(self):
        e = math.exp(self.data)
        out = Value(e, (self,), "exp")

        def _backward():
            self.grad += e * out.grad

        out._backward = _backward
        return out

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
        self.grad = 1.0
        for node in topological_order(self):
            node._backward()
"""


def build(source: str, replace: tuple[str, str] | None = None) -> type:
    """The class ``Value`` defined by ``source`` (with one text replaced, to make a mistake)."""
    if replace is not None:
        assert replace[0] in source, replace[0]
        source = source.replace(replace[0], replace[1])
    namespace = {"math": math, "topological_order": topological_order}
    exec(compile(source, "<learner>", "exec"), namespace)
    return namespace["Value"]


class Tape:
    """Written differently: every op goes through one helper that stores the local slopes and
    makes the closure from them; backward walks its own iterative order (a stack, reversed)."""

    def __init__(self, data, parents=(), op=""):
        self.data, self.grad = float(data), 0
        self.parents = parents
        self._backward = lambda: None

    @staticmethod
    def lift(x):
        return x if isinstance(x, Tape) else Tape(x)

    def _result(self, data, parents, slopes):
        out = Tape(data, parents)

        def _backward():
            for parent, slope in zip(parents, slopes):
                parent.grad = parent.grad + slope * out.grad

        out._backward = _backward
        return out

    def __add__(self, other):
        other = Tape.lift(other)
        return self._result(self.data + other.data, (self, other), (1.0, 1.0))

    def __radd__(self, other):
        return Tape.lift(other) + self

    def __mul__(self, other):
        other = Tape.lift(other)
        return self._result(self.data * other.data, (self, other), (other.data, self.data))

    def __rmul__(self, other):
        return Tape.lift(other) * self

    def __neg__(self):
        return self._result(-self.data, (self,), (-1.0,))

    def __sub__(self, other):
        other = Tape.lift(other)
        return self._result(self.data - other.data, (self, other), (1.0, -1.0))

    def __rsub__(self, other):
        return Tape.lift(other) - self

    def __truediv__(self, other):
        other = Tape.lift(other)
        q = self.data / other.data
        return self._result(q, (self, other), (1 / other.data, -q / other.data))

    def __rtruediv__(self, other):
        return Tape.lift(other) / self

    def __pow__(self, n):
        return self._result(self.data**n, (self,), (n * self.data ** (n - 1),))

    def tanh(self):
        t = math.tanh(self.data)
        return self._result(t, (self,), (1 - t**2,))

    def exp(self):
        return self._result(math.exp(self.data), (self,), (math.exp(self.data),))

    def backward(self):
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node.parents)
        self.grad = 1
        for node in reversed(order):
            node._backward()


def rejected(cls) -> str:
    with pytest.raises(ExerciseError) as info:
        check_value(cls, quiet=True)
    return str(info.value)


@pytest.mark.parametrize("cls", [build(CLOSURES), Tape], ids=["closures", "tape"])
def test_correct_classes_pass(cls, capsys):
    check_value(cls)
    assert "✓ Value: all 27 checks passed" in capsys.readouterr().out


def test_the_library_value_matches_central_differences():
    Value = value_module.Value
    for expression, x in [
        (lambda v: v * v.exp() - (v**2).tanh() / 3.0 + 1.0, 0.45),
        (lambda v: (2.0 - v) ** 3 / (v + 4.0), 1.3),
        (lambda v: -(v**0.5) * 2.0 + v.tanh(), 2.2),
    ]:
        v = Value(x)
        out = expression(v)
        out.backward()
        h = 1e-6
        numeric = (expression(Value(x + h)).data - expression(Value(x - h)).data) / (2 * h)
        assert abs(v.grad - numeric) < 1e-7


def test_the_library_value_is_refused_as_an_answer():
    assert "library's Value" in rejected(value_module.Value)

    class Sub(value_module.Value):
        pass

    assert "library's Value" in rejected(Sub)


MISTAKES = {
    "= instead of += (a + a)": (
        (
            "            self.grad += out.grad\n            other.grad += out.grad",
            "            self.grad = out.grad\n            other.grad = out.grad",
        ),
        "where it must add",
    ),
    "no seed gradient": (("        self.grad = 1.0\n", "        pass\n"), "gradient to 1"),
    "tanh slope 1 - t": (("(1 - t * t) * out.grad", "(1 - t) * out.grad"), "1 - tanh(x)**2"),
    "power slope n x**n": (("n * self.data ** (n - 1)", "n * self.data**n"), "n * x**(n - 1)"),
    "forward order": (
        ("for node in topological_order(self):", "for node in reversed(topological_order(self)):"),
        "forward order",
    ),
    "recursive walk": (
        (
            "        for node in topological_order(self):\n            node._backward()",
            "        topo, seen = [], set()\n\n"
            "        def build(v):\n"
            "            if v not in seen:\n"
            "                seen.add(v)\n"
            "                for parent in v.parents:\n"
            "                    build(parent)\n"
            "                topo.append(v)\n\n"
            "        build(self)\n"
            "        for node in reversed(topo):\n"
            "            node._backward()",
        ),
        "recursion limit",
    ),
    "no order (a closure per path)": (
        (
            "        for node in topological_order(self):\n            node._backward()",
            "        self._walk()\n\n    def _walk(self):\n        self._backward()\n"
            "        for parent in self.parents:\n            parent._walk()",
        ),
        "once per path",
    ),
    "exp slope forgotten": (
        ("self.grad += e * out.grad", "self.grad += out.grad"),
        "wrong gradient",
    ),
    "radd missing": (("    __radd__ = __add__\n", ""), "TypeError"),
    "an op returns a float": (
        ("        return self * -1", "        return -self.data"),
        "returned the float",
    ),
    "data changed by backward": (
        (
            "            self.grad += other.data * out.grad\n",
            "            self.grad += other.data * out.grad\n            self.data = 0.0\n",
        ),
        "changed a leaf's .data",
    ),
    "no parents kept": (
        (
            'out = Value(self.data * other.data, (self, other), "*")',
            'out = Value(self.data * other.data, (), "*")',
        ),
        "expected the tuple (a, b)",
    ),
    "grad left as a string": (
        (
            "            node._backward()",
            "            node._backward()\n        for node in topological_order(self):\n"
            "            node.grad = str(node.grad)",
        ),
        "expected a finite number",
    ),
}


@pytest.mark.parametrize("case", MISTAKES, ids=list(MISTAKES))
def test_each_mistake_is_named(case):
    replace, phrase = MISTAKES[case]
    message = rejected(build(CLOSURES, replace))
    assert phrase in message, message


def test_a_function_or_an_instance_is_refused():
    assert "expected your class" in rejected(lambda x: x)
    assert "expected your class" in rejected(build(CLOSURES)(1.0))


def test_a_stub_is_reported_as_not_written_yet():
    stub = CLOSURES.replace(
        "        self.data = float(data)\n", "        raise NotImplementedError()\n"
    )
    assert "not written yet" in rejected(build(stub))


def test_passing_or_reference_gives_the_learners_class_or_the_library_s(capsys):
    mine = build(CLOSURES)
    assert passing_or_reference(mine, "Value") is mine
    wrong = build(CLOSURES, MISTAKES["no seed gradient"][0])
    assert passing_or_reference(wrong, "Value") is value_module.Value
    assert "using the library's Value" in capsys.readouterr().out
