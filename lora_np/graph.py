"""The computation graph: its nodes, the backward walk, and grad mode.

* **Node**: an array with the bookkeeping of the graph (``.data``, ``.grad``,
  ``.requires_grad``, ``.parents``, ``from_op``) and ``backward()``.
  :class:`lora_np.autograd.Tensor` is a Node with arithmetic; the ops that build the graph
  are there and in ``functional``.
* **Grad mode**: :func:`no_grad` turns graph recording off inside a block. The flag is
  per thread (as PyTorch's is): a data-loading or evaluation thread inside ``no_grad()``
  does not switch recording off for the thread that trains.
* **Threads**: two threads may run ``backward()`` at once on graphs that share leaves (the
  same parameters, one graph per shard of a batch: :mod:`lora_np.parallel`). Adding into a
  leaf's ``.grad`` holds a lock, so the two never interleave a read and a write of one array.
* **Topological order**: :func:`topological_order` lists a graph's nodes so that every node
  comes before the nodes it was computed from; ``backward()`` walks it from the root, so
  gradients flow in the reverse of the order the forward pass computed the nodes.

:func:`topological_order` works on anything with a ``parents`` tuple, so an exercise can
check a learner's own nodes with it. :mod:`lora_np.autograd` re-exports the public names.
"""

from __future__ import annotations

import contextlib
import threading

from . import backend


class _GradMode(threading.local):
    """One ``enabled`` flag per thread; a new thread starts with recording on."""

    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record no graph: outputs never require a gradient.

    Use it for evaluation and for in-place parameter updates. It affects the current thread
    only.
    """
    previous, _grad_mode.enabled = _grad_mode.enabled, False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad` (in this thread)."""
    return _grad_mode.enabled


def topological_order(root) -> list:
    """Every node reachable from ``root`` through ``.parents``, once, root first; each node
    comes before all of its parents (so reversed, each node comes after its inputs).

    Iterative depth-first search with an explicit stack: a chain of 20,000 ops would overflow
    Python's recursion limit. A node is placed after all of its parents are placed, which
    gives inputs-first order; reversing it puts ``root`` first.

    Args:
        root: a node with a ``parents`` attribute (a tuple of nodes).
    Returns:
        A list of nodes, ``root`` first.
    """
    inputs_first, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            inputs_first.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node.parents:
            if id(parent) not in visited:
                stack.append((parent, False))
    inputs_first.reverse()
    return inputs_first


class Node:
    """An array that can remember how it was computed: a node of the graph.

    :class:`lora_np.autograd.Tensor` is the Node users make; this class holds what the graph
    and the backward walk need.

    Attributes:
        data: the array (``numpy.ndarray`` or ``cupy.ndarray``).
        grad: the accumulated gradient, an array of ``data``'s shape, or ``None``.
        requires_grad: whether ``backward()`` fills ``.grad`` for this node.
        parents: the nodes this one was computed from (empty for a leaf).
    """

    __slots__ = (
        "_data",
        "grad",
        "requires_grad",
        "_parents",
        "_backward",
        "_retain",
        "_version",
        "_saved_versions",
    )

    @property
    def data(self):
        """The array. Assigning it (``t.data = a``, ``t.data += 1``) counts as a change:
        ``backward()`` then refuses to use a graph recorded before the change.

        Writing into the array without assigning (``t.data[0] = 1``, ``out=t.data``) is not
        seen; do such changes before the forward pass, or in ``no_grad()`` between steps.
        """
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = value
        self._version += 1

    # Make ``ndarray + Tensor`` call Tensor.__radd__ instead of NumPy broadcasting over objects.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self._data = to_array(data, dtype)
        self._version = 0
        self._saved_versions = ()
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"only floating-point tensors can require a gradient; got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._parents = ()
        self._backward = None
        self._retain = False

    @classmethod
    def from_op(cls, data, parents, backward_fn) -> Node:
        """An op's output (of this class): how every op in ``autograd`` and ``functional`` is made.

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
        out._data = data
        out._version = 0
        out.grad = None
        out._retain = False
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward_fn
            # what backward() compares to: a parent changed in place since is refused
            out._saved_versions = tuple(p._version for p in parents)
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
            out._saved_versions = ()
        return out

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = repr(backend.to_numpy(self.data)).replace("array(", "").rstrip(")")
        return f"Tensor({body}{grad})"

    def detach(self) -> Node:
        """The same data (no copy) cut from the graph: needs no gradient."""
        return type(self).from_op(self.data, (), None)

    @property
    def parents(self) -> tuple:
        """The inputs of the op that made this node, in the op's order; () for a leaf.

        Recorded only when the op ran with grad mode on and some input required a gradient.
        """
        return self._parents

    @property
    def version(self) -> int:
        """How many times ``.data`` has been assigned (PyTorch's ``_version``)."""
        return self._version

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

    def numpy(self):
        """The data as a host NumPy array (copied from the GPU on the CuPy backend)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {self.shape}")
        return self.data.reshape(()).item()

    def requires_grad_(self, flag: bool = True) -> Node:
        """Set ``requires_grad`` in place (on leaves only) and return ``self``."""
        if not self.is_leaf:
            raise RuntimeError("requires_grad_ can only be changed on a leaf tensor")
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require a gradient; got {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> Node:
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
            grad = to_array(grad, dtype=self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(
                    f"backward() got a gradient of shape {grad.shape} for a tensor of shape "
                    f"{self.shape}; they must match"
                )

        grads = {id(self): grad}
        for node in topological_order(self):
            g = grads.pop(id(node), None)
            if g is None:  # no path from the output reached this node
                continue
            if node._backward is None or node._retain:
                _accumulate_leaf(node, g)
            if node._backward is None:
                continue
            _check_versions(node)
            for parent, parent_grad in zip(node.parents, node._backward(g), strict=True):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                # Out of place on purpose: the same array may be handed to several parents.
                grads[key] = parent_grad if key not in grads else grads[key] + parent_grad


def _check_versions(node: Node) -> None:
    """Refuse to backpropagate through an op whose inputs changed after it ran: its backward
    would mix the old output with the new values (a silently wrong gradient)."""
    for parent, saved in zip(node.parents, node._saved_versions, strict=True):
        if parent._version != saved:
            raise RuntimeError(
                f"a tensor of shape {parent.shape} that this graph used was changed in place "
                f"(its .data was assigned: version {parent._version}, it was {saved} when the op "
                "ran) after the forward pass. Compute the forward pass again after changing "
                "it; change parameters between steps, after backward()"
            )


# Held while a gradient is added into a leaf. Threads running backward() on graphs that share
# a leaf (lora_np.parallel) would otherwise race: both may see ``grad is None`` and one store
# is lost, or NumPy's ``+=``, which releases the GIL while it loops, reads a block of the
# array that the other thread is writing. One lock for every leaf is enough: it is taken once
# per leaf per backward, and the addition it guards is a small part of a backward pass.
_leaf_lock = threading.Lock()


def _accumulate_leaf(node: Node, grad) -> None:
    """Add ``grad`` into ``node.grad``; the first time, store a private copy.

    The copy matters: an op may pass one array to several inputs (``a + b`` gives both the
    same gradient), and ``node.grad`` must stay safe to update in place. Thread-safe (see
    ``_leaf_lock``).
    """
    if grad.shape != node.data.shape:  # a backward closure must unbroadcast; fail loudly if not
        raise RuntimeError(f"internal error: gradient shape {grad.shape} != data {node.shape}")
    with _leaf_lock:
        if node.grad is None:
            node.grad = grad.astype(node.data.dtype, copy=True)
        else:
            node.grad += grad


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_array(data, dtype=None):
    """``data`` as an array of the current backend, with a clear error for non-numbers."""
    xp = backend.xp
    if isinstance(data, Node):
        data = data.data
    if backend.name == "numpy" and backend.array_module(data) != "numpy":
        data = data.get()  # an explicit construction may move data from the GPU to the host
    try:
        # A copy, as torch.tensor() makes: training a Parameter must not change the caller's
        # array (a learner keeps W0 around to compare with).
        array = xp.array(data, dtype=dtype)
    except (ValueError, TypeError) as err:
        raise TypeError(
            f"Tensor needs a rectangular array of numbers; got {short(data)} ({err})"
        ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Tensor needs numbers (bool, int or float), got dtype {array.dtype} from {short(data)}"
        )
    return array


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
