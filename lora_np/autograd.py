"""Reverse-mode automatic differentiation: the ``Tensor`` and the backward walk.

A ``Tensor`` wraps an array (``.data``). Every op that produces a tensor from tensors that
require a gradient also records *how to send a gradient back*: its parents and a small
closure, ``_backward(grad_out) -> tuple of input gradients``. ``backward()`` visits the graph
in reverse topological order, so each node's gradient is complete (every use of it has
contributed) before it is passed on. That order is what makes ``b = a + a`` give ``a`` both
contributions.

Two rules carry LoRA's savings:

* an op only records a parent that requires a gradient, and only computes the gradients of
  such parents (a frozen weight costs no gradient computation at all);
* leaves (tensors made by the user, such as parameters) accumulate into ``.grad`` across
  ``backward()`` calls until an optimiser's ``zero_grad()`` resets them, as in PyTorch.

The differentiable ops themselves live in :mod:`lora_np.functional`; the operator methods here
(``+``, ``@``, ``.sum()``, ...) call them.
"""

from __future__ import annotations

import contextlib

from . import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record no graph: outputs never require a gradient.

    Use it for evaluation and for in-place parameter updates.
    """
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad`."""
    return _grad_enabled


def _to_array(data, dtype=None):
    """``data`` as an array of the current backend, with a clear error for non-numbers."""
    xp = backend.xp
    if isinstance(data, Tensor):
        data = data.data
    if backend.name == "numpy" and backend.array_module(data) != "numpy":
        data = data.get()  # an explicit construction may move data from the GPU to the host
    try:
        # A copy, as torch.tensor() makes: training a Parameter must not change the caller's
        # array (a learner keeps W0 around to compare with).
        array = xp.array(data, dtype=dtype)
    except (ValueError, TypeError) as err:
        raise TypeError(
            f"Tensor needs a rectangular array of numbers; got {_short(data)} ({err})"
        ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor needs numbers (bool, int or float), got dtype {array.dtype} from {_short(data)}"
        )
    return array


def _short(value, limit=60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tensor:
    """An array that can remember how it was computed.

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

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_retain", "name")
    # Make ``ndarray + Tensor`` call Tensor.__radd__ instead of NumPy broadcasting over objects.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _to_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require a gradient; got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._parents = ()
        self._backward = None
        self._retain = False
        self.name = None

    @classmethod
    def from_op(cls, data, parents, backward_fn) -> Tensor:
        """An op's output: how every op in :mod:`lora_np.functional` is made, and how to add one.

        Records the graph only when grad mode is on and some parent requires a gradient.

        Args:
            data: the output array.
            parents: the input Tensors.
            backward_fn: ``backward_fn(grad_out) -> tuple`` with one gradient (an array of
                that parent's shape) or ``None`` per parent; it should skip the work for
                parents with ``requires_grad=False``.
        """
        out = cls.__new__(cls)
        xp = backend.xp
        if type(data) is not xp.ndarray and backend.array_module(data) == backend.name:
            data = xp.asarray(data)  # reductions return NumPy scalars; keep .data an array
        out.data = data
        out.grad = None
        out._retain = False
        out.name = None
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward_fn
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        return out

    # ----------------------------------------------------------------------------- basics
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        """Bytes the data takes (not counting ``.grad``)."""
        return self.data.nbytes

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded op (parameters, inputs)."""
        return self._backward is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = repr(backend.to_numpy(self.data)).replace("array(", "").rstrip(")")
        return f"Tensor({body}{grad})"

    def numpy(self):
        """The data as a host NumPy array (copied from the GPU on the CuPy backend)."""
        return backend.to_numpy(self.data)

    _from_op = from_op  # the library's internal spelling

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self) -> Tensor:
        """The same data (no copy) cut from the graph: needs no gradient."""
        return Tensor._from_op(self.data, (), None)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Set ``requires_grad`` in place (on leaves only) and return ``self``."""
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only be changed on a leaf tensor")
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require a gradient; got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> Tensor:
        """Keep this intermediate tensor's gradient in ``.grad`` after ``backward()``."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    # ----------------------------------------------------------------------------- backward
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires a gradient.

        Args:
            grad: d(loss)/d(self), an array or Tensor of ``self``'s shape. Optional for a
                one-element tensor (then 1).
        """
        xp = backend.xp
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad: no input of the "
                "computation has requires_grad=True (or it was built inside no_grad())"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a one-element (scalar) tensor; this one "
                    f"has shape {self.shape}. Pass grad= of that shape, or reduce first (.sum())"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = _to_array(grad, dtype=self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(
                    f"backward() got a gradient of shape {grad.shape} for a tensor of shape "
                    f"{self.shape}; they must match"
                )

        order = _topological_order(self)
        grads = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:  # no path from the output reached this node
                continue
            if node._backward is None or node._retain:
                _accumulate_leaf(node, g)
            if node._backward is None:
                continue
            for parent, parent_grad in zip(node._parents, node._backward(g), strict=True):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                # Out of place on purpose: the same array may be handed to several parents.
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad

    # ----------------------------------------------------------------------------- operators
    def __add__(self, other):
        return _F.add(self, other)

    def __radd__(self, other):
        return _F.add(other, self)

    def __sub__(self, other):
        return _F.sub(self, other)

    def __rsub__(self, other):
        return _F.sub(other, self)

    def __mul__(self, other):
        return _F.mul(self, other)

    def __rmul__(self, other):
        return _F.mul(other, self)

    def __truediv__(self, other):
        return _F.div(self, other)

    def __rtruediv__(self, other):
        return _F.div(other, self)

    def __pow__(self, other):
        return _F.power(self, other)

    def __rpow__(self, other):
        return _F.power(other, self)

    def __matmul__(self, other):
        return _F.matmul(self, other)

    def __rmatmul__(self, other):
        return _F.matmul(other, self)

    def __neg__(self):
        return _F.neg(self)

    def __getitem__(self, index):
        return _F.getitem(self, index)

    # ----------------------------------------------------------------------------- methods
    def sum(self, axis=None, keepdims=False):
        return _F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _F.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _F.max(self, axis, keepdims)

    def exp(self):
        return _F.exp(self)

    def log(self):
        return _F.log(self)

    def tanh(self):
        return _F.tanh(self)

    def sqrt(self):
        return _F.sqrt(self)

    def relu(self):
        return _F.relu(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return _F.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return _F.transpose(self, axes or None)

    @property
    def T(self):
        return _F.transpose(self, None)

    def astype(self, dtype):
        return _F.astype(self, dtype)


def _topological_order(root: Tensor) -> list:
    """Nodes that need a gradient, each after all of its parents (iterative depth-first).

    An explicit stack instead of recursion: a chain of 20,000 ops would overflow Python's
    recursion limit.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _accumulate_leaf(node: Tensor, grad) -> None:
    """Add ``grad`` into ``node.grad``; the first time, store a private copy.

    The copy matters: an op may pass one array to several inputs (``a + b`` gives both the
    same gradient), and ``node.grad`` must stay safe to update in place.
    """
    if grad.shape != node.data.shape:  # a backward closure must unbroadcast; fail loudly if not
        raise RuntimeError(f"internal error: gradient shape {grad.shape} != data {node.shape}")
    if node.grad is None:
        node.grad = grad.astype(node.data.dtype, copy=True)
    else:
        node.grad += grad


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` back to ``shape``: the gradient of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of length 1, so its
    gradient sums over exactly those axes.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def check_same_backend(*arrays) -> None:
    """Raise a TypeError when NumPy and CuPy arrays meet in one op (no silent copies)."""
    first = type(arrays[0])
    if all(type(a) is first for a in arrays[1:]):
        return
    kinds = {backend.array_module(a) for a in arrays}
    if len(kinds) > 1:
        raise TypeError(
            "an op got arrays of two backends (NumPy and CuPy). Make every tensor after "
            "set_backend(), or move data explicitly with Tensor(backend.to_numpy(x))"
        )


from . import functional as _F  # noqa: E402  (functional imports Tensor from this module)


def topological_order(root) -> list:
    """Every node reachable from ``root`` through ``node.parents``, once each, root first.

    Each node comes before all of its parents (the nodes it was computed from), so running the
    nodes' backward steps in this order completes a node's gradient, from every use of it,
    before the node passes it on. Works on any objects with a ``parents`` sequence (the course's
    scalar ``Value``, the exercise checker's nodes). Iterative (an explicit stack), so a chain of
    20,000 ops does not hit Python's recursion limit.

    Args:
        root: the output node; ``root.parents`` are the nodes it was computed from.

    Returns:
        A list of the reachable nodes (root included), of length the number of distinct nodes.
    """
    finished, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:  # every parent of node is already in `finished`
            finished.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in node.parents if id(parent) not in visited)
    finished.reverse()  # parents-first becomes root-first
    return finished
