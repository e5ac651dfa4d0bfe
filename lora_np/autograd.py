"""Reverse-mode automatic differentiation: the ``Tensor`` and its primitive ops.

A ``Tensor`` is a :class:`~lora_np.graph.Node` (an array, its gradient, its parents and the
backward walk) with arithmetic. Every op that produces a tensor from tensors that require a
gradient records *how to send a gradient back*: its ``parents`` and a small closure,
``backward(grad_out) -> tuple of input gradients``. ``Tensor.backward()`` visits the graph in
:func:`topological_order`, root first, so each node's gradient is complete (every use of it
has contributed) before it is passed on. That order is what makes ``b = a + a`` give ``a``
both contributions.

Two rules carry LoRA's savings:

* an op only records its parents when one of them requires a gradient, and only computes the
  gradients of such parents (a frozen weight costs no gradient computation at all);
* leaves (tensors made by the user, such as parameters) accumulate into ``.grad`` across
  ``backward()`` calls until an optimiser's ``zero_grad()`` resets them, as in PyTorch.

Where to read what: the primitive ops (``+ - * / ** @``, indexing, ``sum``/``mean``/``max``,
``exp``, ``reshape``, ...) live here beside the Tensor, as micrograd keeps them; the layer ops
(linear, softmax, attention, ...) are in :mod:`lora_np.functional`, which builds on this
module. ``Tensor.backward()`` itself, :func:`topological_order` and the bookkeeping a node
carries (``.grad``, ``.parents``, ``from_op``) are in :mod:`lora_np.graph`, in the class
``Node`` that ``Tensor`` extends: the walk needs only parents and closures, no arithmetic, so
it is written once below the ops (and runs as well on a learner's own nodes in the checkers).

Two ops here have a fast path, each marked in its source beside its plain formula: ``power``
with a small whole exponent and ``matmul`` of a batch by a matrix. ``lora_np.plain()`` turns
them off with every other fast path (:mod:`lora_np.fastpaths`).
"""

from __future__ import annotations

import math
import numbers

from . import backend, fastpaths
from .graph import Node, check_same_backend, is_grad_enabled, no_grad, topological_order
from .shapes import (
    broadcast_error,
    expand_reduced,
    is_basic_index,
    normalise_axes,
    shape_of,
    unbroadcast,
)

__all__ = [
    "Node",
    "Tensor",
    "check_same_backend",
    "is_grad_enabled",
    "no_grad",
    "topological_order",
    "unbroadcast",
]


class Tensor(Node):
    """An array that can remember how it was computed: a graph :class:`~lora_np.graph.Node`
    (construction, ``.grad``, ``backward()``) with arithmetic.

    ``backward()`` is inherited from ``Node``: read it in ``lora_np/graph.py``.

    Args:
        data: anything ``numpy.asarray`` turns into a numeric array. It is copied (a NumPy
            array keeps its dtype; on the CuPy backend the copy goes to the GPU).
        requires_grad: whether ``backward()`` should fill ``.grad`` for this tensor. Only
            floating-point tensors can require a gradient.
        dtype: optional dtype to convert the data to.

    Attributes:
        data: the array (``numpy.ndarray`` or ``cupy.ndarray``).
        grad: the accumulated gradient, an array of ``data``'s shape, or ``None``.
    """

    __slots__ = ()

    # ----------------------------------------------------------------------------- operators
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __pow__(self, other):
        return power(self, other)

    def __rpow__(self, other):
        return power(other, self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __neg__(self):
        return neg(self)

    def __getitem__(self, index):
        return getitem(self, index)

    # ----------------------------------------------------------------------------- methods
    def sum(self, axis=None, keepdims=False):
        return sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return max(self, axis, keepdims)

    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def tanh(self):
        return tanh(self)

    def sqrt(self):
        return sqrt(self)

    def relu(self):
        return relu(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    @property
    def T(self):
        return transpose(self, None)

    def astype(self, dtype):
        return astype(self, dtype)


def _matrix_product(a, b):
    """Where every ``Tensor @ Tensor`` product happens.

    :mod:`lora_np.functional` points this at its own ``_mm`` (:func:`set_matrix_product`), so
    replacing ``functional._mm`` sees every matrix product the engine makes: the notebooks
    count FLOPs that way.
    """
    return a @ b


def set_matrix_product(fn) -> None:
    """Compute the products of :func:`matmul` with ``fn(a, b)`` (arrays in, array out)."""
    global _matrix_product
    _matrix_product = fn


# ============================================================================ primitive ops
# A stand-in parent for Python-number operands: it never requires a gradient.
_CONSTANT = Tensor(0.0)


def _operand(x):
    """(value, parent) for a binary op: Python numbers stay numbers (NumPy keeps the array's
    dtype for them), arrays become constant tensors, tensors stay tensors."""
    if isinstance(x, Tensor):
        return x.data, x
    if isinstance(x, numbers.Number):
        # A NumPy scalar (np.float64(2), np.sqrt(2.0)) as a Python number: NumPy 2 would let
        # a float64 scalar upcast a float32 array; a Python number keeps the array's dtype.
        return (x.item() if hasattr(x, "item") else x), _CONSTANT
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        t = Tensor.from_op(x, (), None)
        return t.data, t
    t = Tensor(x)
    return t.data, t


def _binary_inputs(a, b):
    av, at = _operand(a)
    bv, bt = _operand(b)
    if hasattr(av, "shape") and hasattr(bv, "shape"):
        check_same_backend(av, bv)
    return av, at, bv, bt


# --------------------------------------------------------------------------- elementwise
def add(a, b) -> Tensor:
    """a + b with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av + bv
    except ValueError as err:
        raise broadcast_error("add", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g, shape_of(av)) if at.requires_grad else None,
            unbroadcast(g, shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor.from_op(out, (at, bt), backward)


def sub(a, b) -> Tensor:
    """a - b with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av - bv
    except ValueError as err:
        raise broadcast_error("sub", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g, shape_of(av)) if at.requires_grad else None,
            unbroadcast(-g, shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor.from_op(out, (at, bt), backward)


def mul(a, b) -> Tensor:
    """a * b elementwise, with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av * bv
    except ValueError as err:
        raise broadcast_error("mul", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g * bv, shape_of(av)) if at.requires_grad else None,
            unbroadcast(g * av, shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor.from_op(out, (at, bt), backward)


def div(a, b) -> Tensor:
    """a / b elementwise, with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av / bv
    except ValueError as err:
        raise broadcast_error("div", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g / bv, shape_of(av)) if at.requires_grad else None,
            unbroadcast(-g * out / bv, shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor.from_op(out, (at, bt), backward)


def power(a, b) -> Tensor:
    """a ** b: tensor ** number, number ** tensor, or tensor ** tensor."""
    av, at, bv, bt = _binary_inputs(a, b)
    # Fast path: small whole exponents as products (fastpaths.int_power; float32 ``x ** 3`` is
    # ~50x slower than x * x * x). Plain twin, and plain mode: ``av ** bv`` and its slope below.
    small_int = (
        not fastpaths.is_plain()
        and isinstance(bv, numbers.Real)
        and not isinstance(bv, bool)
        and bv in (1, 2, 3, 4)
    )
    try:
        out = fastpaths.int_power(av, int(bv)) if small_int else av**bv
    except ValueError as err:
        raise broadcast_error("power", av, bv, err) from None

    def backward(g):
        ga = gb = None
        if at.requires_grad:
            if small_int:
                ga = g * bv if bv == 1 else g * (bv * fastpaths.int_power(av, int(bv) - 1))
            else:
                ga = unbroadcast(g * bv * av ** (bv - 1), shape_of(av))
        if bt.requires_grad:
            # a Python-number base as an array of out's dtype: np.log(2) would be float64
            log_a = backend.xp.log(backend.xp.asarray(av, dtype=out.dtype))
            gb = unbroadcast(g * out * log_a, shape_of(bv))
        return ga, gb

    return Tensor.from_op(out, (at, bt), backward)


def neg(x: Tensor) -> Tensor:
    """-x."""
    return Tensor.from_op(-x.data, (x,), lambda g: (-g,))


def exp(x: Tensor) -> Tensor:
    """e ** x elementwise."""
    out = backend.xp.exp(x.data)
    return Tensor.from_op(out, (x,), lambda g: (g * out,))


def log(x: Tensor) -> Tensor:
    """Natural logarithm elementwise (x > 0)."""
    xd = x.data
    return Tensor.from_op(backend.xp.log(xd), (x,), lambda g: (g / xd,))


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent elementwise; d/dx = 1 - tanh(x)^2."""
    out = backend.xp.tanh(x.data)
    return Tensor.from_op(out, (x,), lambda g: (g * (1 - out * out),))


def sqrt(x: Tensor) -> Tensor:
    """Square root elementwise (x >= 0); d/dx = 1 / (2 sqrt(x))."""
    out = backend.xp.sqrt(x.data)
    return Tensor.from_op(out, (x,), lambda g: (g / (2 * out),))


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise; the gradient at exactly 0 is taken as 0."""
    positive = x.data > 0
    out = x.data * positive
    return Tensor.from_op(out, (x,), lambda g: (g * positive,))


def astype(x: Tensor, dtype) -> Tensor:
    """x converted to ``dtype``; the gradient is converted back."""
    source = x.data.dtype
    return Tensor.from_op(x.data.astype(dtype), (x,), lambda g: (g.astype(source),))


# --------------------------------------------------------------------------- reductions
def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 (torch's name)
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    axes = normalise_axes(axis, x.ndim)
    out = x.data.sum(axis=axes, keepdims=keepdims)
    shape = x.shape
    return Tensor.from_op(out, (x,), lambda g: (expand_reduced(g, shape, axes, keepdims),))


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (an int, a tuple, or None for all)."""
    axes = normalise_axes(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    out = x.data.mean(axis=axes, keepdims=keepdims)
    shape = x.shape
    return Tensor.from_op(out, (x,), lambda g: (expand_reduced(g / count, shape, axes, keepdims),))


def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 (torch's name)
    """Maximum over ``axis``. Tied maxima share the gradient equally."""
    axes = normalise_axes(axis, x.ndim)
    kept = x.data.max(axis=axes, keepdims=True)
    out = kept if keepdims else kept.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def backward(g):
        is_max = x.data == kept
        g = g if keepdims else g.reshape(kept.shape)
        ties = is_max.sum(axis=axes, keepdims=True, dtype=g.dtype)  # g's dtype: no float64 upcast
        return (is_max * (g / ties),)

    return Tensor.from_op(out, (x,), backward)


# --------------------------------------------------------------------------- shapes
def reshape(x: Tensor, shape) -> Tensor:
    """The same values in a new shape (one entry may be -1)."""
    try:
        out = x.data.reshape(shape)
    except ValueError as err:
        raise ValueError(
            f"cannot reshape a tensor of shape {x.shape} into {shape}: {err}"
        ) from None
    source = x.shape
    return Tensor.from_op(out, (x,), lambda g: (g.reshape(source),))


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute the axes (reverse them when ``axes`` is None)."""
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(axes)
    if sorted(a % x.ndim for a in axes) != list(range(x.ndim)) or len(axes) != x.ndim:
        raise ValueError(f"transpose axes {axes} are not a permutation of {x.ndim} dimensions")
    inverse = tuple(sorted(range(x.ndim), key=lambda i: axes[i] % x.ndim))
    return Tensor.from_op(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),))


def getitem(x: Tensor, index) -> Tensor:
    """``x[index]`` with NumPy's basic and advanced indexing."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    out = x.data[index]
    basic = is_basic_index(index)

    def backward(g):
        grad = backend.xp.zeros_like(x.data)
        if basic:
            grad[index] = g
        else:  # advanced indices may repeat: every copy sends its gradient back
            backend.scatter_add(grad, index, g)
        return (grad,)

    return Tensor.from_op(out, (x,), backward)


# --------------------------------------------------------------------------- matrices
def matmul(a, b) -> Tensor:
    """a @ b with NumPy's rules: 1-D operands, and batch axes that broadcast.

    A (..., n, k) input times a 2-D (k, m) weight runs as one 2-D product on (... * n, k) rows
    (a fast path: a batched product of small matrices is much slower), except in plain mode.
    """
    av, at, bv, bt = _binary_inputs(a, b)
    a_shape, b_shape = shape_of(av), shape_of(bv)
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"matmul needs at least 1-D operands; got shapes {a_shape} and {b_shape}")
    if a_shape[-1] != b_shape[-2 if len(b_shape) > 1 else 0]:
        raise ValueError(
            f"matmul: shapes {a_shape} and {b_shape} do not match: the last axis of the first "
            f"({a_shape[-1]}) must equal the {'second-to-last' if len(b_shape) > 1 else 'only'} "
            f"axis of the second ({b_shape[-2 if len(b_shape) > 1 else 0]})"
        )
    if len(a_shape) == 1:  # (k,) @ (..., k, m): treat as (1, k) and drop that axis again
        out_shape = b_shape[:-2] + b_shape[-1:] if len(b_shape) > 1 else ()  # (k,) @ (k,) -> ()
        return reshape(matmul(reshape(at, (1, a_shape[0])), bt), out_shape)
    if len(b_shape) == 1:  # (..., n, k) @ (k,): treat as (k, 1)
        return reshape(matmul(at, reshape(bt, (b_shape[0], 1))), a_shape[:-1])
    if len(b_shape) == 2 and len(a_shape) > 2 and not fastpaths.is_plain():
        # Fast path: a batch of matrices times one matrix as a single 2-D product on the rows.
        # Plain twin, and plain mode: the broadcast product below, whose backward sums the
        # weight's gradient over the batch axes (unbroadcast).
        rows = av.reshape(-1, a_shape[-1])  # (N, k) with N = prod(leading axes)
        out = _matrix_product(rows, bv).reshape(a_shape[:-1] + b_shape[-1:])  # (..., n, m)

        def backward(g):
            g_rows = g.reshape(-1, b_shape[-1])  # (N, m)
            ga = _matrix_product(g_rows, bv.T).reshape(a_shape) if at.requires_grad else None
            gb = _matrix_product(rows.T, g_rows) if bt.requires_grad else None  # (k, m)
            return ga, gb

        return Tensor.from_op(out, (at, bt), backward)
    try:
        out = _matrix_product(av, bv)
    except ValueError as err:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} do not match ({err})") from None

    def backward(g):
        ga = (
            unbroadcast(_matrix_product(g, bv.swapaxes(-1, -2)), a_shape)
            if at.requires_grad
            else None
        )
        gb = (
            unbroadcast(_matrix_product(av.swapaxes(-1, -2), g), b_shape)
            if bt.requires_grad
            else None
        )
        return ga, gb

    return Tensor.from_op(out, (at, bt), backward)
