"""NumPy's shape rules as the ops and their gradients need them.

Broadcasting copies an input along new leading axes and along axes of length 1, so its
gradient sums over exactly those axes (:func:`unbroadcast`); a reduction's gradient is spread
back over the reduced axes (:func:`expand_reduced`).
"""

from __future__ import annotations

import numbers

from . import backend


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` back to ``shape``: the gradient of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of length 1, so its
    gradient sums over exactly those axes.

    Args:
        grad: an array of the broadcast shape, e.g. (B, T, C).
        shape: the input's shape, e.g. (C,) or (1, T, 1).
    Returns:
        An array of ``shape`` (``grad`` itself when the shapes already agree).
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


def shape_of(value) -> tuple:
    return getattr(value, "shape", ())


def broadcast_error(op, av, bv, err):
    return ValueError(
        f"{op}: shapes {shape_of(av)} and {shape_of(bv)} do not broadcast together ({err})"
    )


def normalise_axes(axis, ndim: int):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes))


def expand_reduced(g, shape, axes, keepdims):
    """Broadcast the gradient of a reduction back over the reduced axes."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return backend.xp.broadcast_to(g, shape)


def is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: such an index never repeats an element."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, slice | numbers.Integral) or p is None or p is Ellipsis for p in parts)
