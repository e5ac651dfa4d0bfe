"""Every differentiable op: its forward and its backward, derived by hand.

Each op computes its output from the input arrays and returns ``Tensor._from_op(out, parents,
backward)``. The closure ``backward(g)`` receives d(loss)/d(out) and returns one gradient per
parent, computing only the ones whose parent requires a gradient (``None`` for the rest): a
frozen weight never costs a gradient computation.

Names and argument order follow PyTorch (``F.linear(x, weight, bias)``, ``F.cross_entropy``),
so a learner meets the same calls again there. Shapes in docstrings: ``B`` batch, ``T``
sequence length, ``C`` channels, ``N`` rows, ``V`` vocabulary.

All matrix products go through :func:`_mm` so a test can count them.
"""

from __future__ import annotations

import builtins
import math
import numbers

from . import backend
from .autograd import Tensor, check_same_backend, is_grad_enabled, unbroadcast

# A stand-in parent for Python-number operands: it never requires a gradient.
_CONSTANT = Tensor(0.0)


def _mm(a, b):
    """The one place a matrix product happens (``a @ b``)."""
    return a @ b


def _sum_last(a):
    """Sum over the last axis, keeping it (length 1), as a matrix-vector product.

    NumPy's own reduction along a short contiguous axis is 3-6x slower than BLAS on the
    (rows, 64..512) arrays of a step. Not a ``_mm``: it is not one of the model's products.
    """
    return (a @ backend.xp.ones(a.shape[-1], dtype=a.dtype))[..., None]


def _sum_rows(a):
    """(N, C) -> (C,): the column sums, as a vector-matrix product (see :func:`_sum_last`)."""
    return backend.xp.ones(a.shape[0], dtype=a.dtype) @ a


def _max_last(a):
    """Max over the last axis, keeping it: halve the axis with elementwise maxima.

    Six elementwise passes for 64 columns instead of NumPy's slow short-axis reduction.
    """
    xp = backend.xp
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        folded = xp.maximum(a[..., :half], a[..., half : 2 * half])
        if a.shape[-1] % 2:  # an odd column left over: fold it into the first
            xp.maximum(folded[..., :1], a[..., -1:], out=folded[..., :1])
        a = folded
    return a


def _needs(t) -> bool:
    return t.requires_grad


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
        t = Tensor._from_op(x, (), None)
        return t.data, t
    t = Tensor(x)
    return t.data, t


def _shape_of(value) -> tuple:
    return getattr(value, "shape", ())


def _binary_inputs(a, b):
    av, at = _operand(a)
    bv, bt = _operand(b)
    if hasattr(av, "shape") and hasattr(bv, "shape"):
        check_same_backend(av, bv)
    return av, at, bv, bt


def _broadcast_error(op, av, bv, err):
    return ValueError(
        f"{op}: shapes {_shape_of(av)} and {_shape_of(bv)} do not broadcast together ({err})"
    )


# --------------------------------------------------------------------------- elementwise
def add(a, b) -> Tensor:
    """a + b with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av + bv
    except ValueError as err:
        raise _broadcast_error("add", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g, _shape_of(av)) if at.requires_grad else None,
            unbroadcast(g, _shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor._from_op(out, (at, bt), backward)


def sub(a, b) -> Tensor:
    """a - b with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av - bv
    except ValueError as err:
        raise _broadcast_error("sub", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g, _shape_of(av)) if at.requires_grad else None,
            unbroadcast(-g, _shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor._from_op(out, (at, bt), backward)


def mul(a, b) -> Tensor:
    """a * b elementwise, with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av * bv
    except ValueError as err:
        raise _broadcast_error("mul", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g * bv, _shape_of(av)) if at.requires_grad else None,
            unbroadcast(g * av, _shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor._from_op(out, (at, bt), backward)


def div(a, b) -> Tensor:
    """a / b elementwise, with NumPy broadcasting."""
    av, at, bv, bt = _binary_inputs(a, b)
    try:
        out = av / bv
    except ValueError as err:
        raise _broadcast_error("div", av, bv, err) from None

    def backward(g):
        return (
            unbroadcast(g / bv, _shape_of(av)) if at.requires_grad else None,
            unbroadcast(-g * out / bv, _shape_of(bv)) if bt.requires_grad else None,
        )

    return Tensor._from_op(out, (at, bt), backward)


def _int_power(x, n: int):
    """x ** n by repeated multiplication."""
    result = x
    for _ in range(n - 1):
        result = result * x
    return result


def power(a, b) -> Tensor:
    """a ** b: tensor ** number, number ** tensor, or tensor ** tensor."""
    av, at, bv, bt = _binary_inputs(a, b)
    # Small whole exponents as products: float32 ``x ** 3`` is ~50x slower than x * x * x.
    small_int = isinstance(bv, numbers.Real) and not isinstance(bv, bool) and bv in (1, 2, 3, 4)
    try:
        out = _int_power(av, int(bv)) if small_int else av**bv
    except ValueError as err:
        raise _broadcast_error("power", av, bv, err) from None

    def backward(g):
        ga = gb = None
        if at.requires_grad:
            if small_int:
                ga = g * bv if bv == 1 else g * (bv * _int_power(av, int(bv) - 1))
            else:
                ga = unbroadcast(g * bv * av ** (bv - 1), _shape_of(av))
        if bt.requires_grad:
            # a Python-number base as an array of out's dtype: np.log(2) would be float64
            log_a = backend.xp.log(backend.xp.asarray(av, dtype=out.dtype))
            gb = unbroadcast(g * out * log_a, _shape_of(bv))
        return ga, gb

    return Tensor._from_op(out, (at, bt), backward)


def neg(x: Tensor) -> Tensor:
    """-x."""
    return Tensor._from_op(-x.data, (x,), lambda g: (-g,))


def exp(x: Tensor) -> Tensor:
    """e ** x elementwise."""
    out = backend.xp.exp(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g * out,))


def log(x: Tensor) -> Tensor:
    """Natural logarithm elementwise (x > 0)."""
    xd = x.data
    return Tensor._from_op(backend.xp.log(xd), (x,), lambda g: (g / xd,))


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent elementwise; d/dx = 1 - tanh(x)^2."""
    out = backend.xp.tanh(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g * (1 - out * out),))


def sqrt(x: Tensor) -> Tensor:
    """Square root elementwise (x >= 0); d/dx = 1 / (2 sqrt(x))."""
    out = backend.xp.sqrt(x.data)
    return Tensor._from_op(out, (x,), lambda g: (g / (2 * out),))


def relu(x: Tensor) -> Tensor:
    """max(x, 0) elementwise; the gradient at exactly 0 is taken as 0."""
    positive = x.data > 0
    out = x.data * positive
    return Tensor._from_op(out, (x,), lambda g: (g * positive,))


def astype(x: Tensor, dtype) -> Tensor:
    """x converted to ``dtype``; the gradient is converted back."""
    source = x.data.dtype
    return Tensor._from_op(x.data.astype(dtype), (x,), lambda g: (g.astype(source),))


# --------------------------------------------------------------------------- reductions
def _normalise_axes(axis, ndim: int):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(a % ndim for a in axes))


def _expand_reduced(g, shape, axes, keepdims):
    """Broadcast the gradient of a reduction back over the reduced axes."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return backend.xp.broadcast_to(g, shape)


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 (torch's name)
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    axes = _normalise_axes(axis, x.ndim)
    out = x.data.sum(axis=axes, keepdims=keepdims)
    shape = x.shape
    return Tensor._from_op(out, (x,), lambda g: (_expand_reduced(g, shape, axes, keepdims),))


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Mean over ``axis`` (an int, a tuple, or None for all)."""
    axes = _normalise_axes(axis, x.ndim)
    count = math.prod(x.shape[a] for a in axes)
    out = x.data.mean(axis=axes, keepdims=keepdims)
    shape = x.shape
    return Tensor._from_op(
        out, (x,), lambda g: (_expand_reduced(g / count, shape, axes, keepdims),)
    )


def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001 (torch's name)
    """Maximum over ``axis``. Tied maxima share the gradient equally."""
    axes = _normalise_axes(axis, x.ndim)
    kept = x.data.max(axis=axes, keepdims=True)
    out = kept if keepdims else kept.reshape([n for i, n in enumerate(x.shape) if i not in axes])

    def backward(g):
        is_max = x.data == kept
        g = g if keepdims else g.reshape(kept.shape)
        ties = is_max.sum(axis=axes, keepdims=True, dtype=g.dtype)  # g's dtype: no float64 upcast
        return (is_max * (g / ties),)

    return Tensor._from_op(out, (x,), backward)


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
    return Tensor._from_op(out, (x,), lambda g: (g.reshape(source),))


def transpose(x: Tensor, axes=None) -> Tensor:
    """Permute the axes (reverse them when ``axes`` is None)."""
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(axes)
    if sorted(a % x.ndim for a in axes) != list(range(x.ndim)) or len(axes) != x.ndim:
        raise ValueError(f"transpose axes {axes} are not a permutation of {x.ndim} dimensions")
    inverse = tuple(sorted(range(x.ndim), key=lambda i: axes[i] % x.ndim))
    return Tensor._from_op(x.data.transpose(axes), (x,), lambda g: (g.transpose(inverse),))


def _is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: such an index never repeats an element."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, slice | numbers.Integral) or p is None or p is Ellipsis for p in parts)


def getitem(x: Tensor, index) -> Tensor:
    """``x[index]`` with NumPy's basic and advanced indexing."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    out = x.data[index]
    basic = _is_basic_index(index)

    def backward(g):
        grad = backend.xp.zeros_like(x.data)
        if basic:
            grad[index] = g
        else:  # advanced indices may repeat: every copy sends its gradient back
            backend.scatter_add(grad, index, g)
        return (grad,)

    return Tensor._from_op(out, (x,), backward)


# --------------------------------------------------------------------------- matrices
def matmul(a, b) -> Tensor:
    """a @ b with NumPy's rules: 1-D operands, and batch axes that broadcast.

    A (..., n, k) input times a 2-D (k, m) weight runs as one 2-D product on (... * n, k) rows:
    a batched product of small matrices is much slower.
    """
    av, at, bv, bt = _binary_inputs(a, b)
    a_shape, b_shape = _shape_of(av), _shape_of(bv)
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
    if len(b_shape) == 2 and len(a_shape) > 2:
        rows = av.reshape(-1, a_shape[-1])  # (N, k) with N = prod(leading axes)
        out = _mm(rows, bv).reshape(a_shape[:-1] + b_shape[-1:])  # (..., n, m)

        def backward(g):
            g_rows = g.reshape(-1, b_shape[-1])  # (N, m)
            ga = _mm(g_rows, bv.T).reshape(a_shape) if at.requires_grad else None
            gb = _mm(rows.T, g_rows) if bt.requires_grad else None  # (k, m)
            return ga, gb

        return Tensor._from_op(out, (at, bt), backward)
    try:
        out = _mm(av, bv)
    except ValueError as err:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} do not match ({err})") from None

    def backward(g):
        ga = unbroadcast(_mm(g, bv.swapaxes(-1, -2)), a_shape) if at.requires_grad else None
        gb = unbroadcast(_mm(av.swapaxes(-1, -2), g), b_shape) if bt.requires_grad else None
        return ga, gb

    return Tensor._from_op(out, (at, bt), backward)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b, as PyTorch's ``F.linear``.

    Args:
        x: (..., in_features)
        weight: (out_features, in_features), the paper's W0 in R^{d x k}
        bias: (out_features,) or None
    Returns:
        (..., out_features)
    """
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(
            f"linear: input of shape {x.shape} has {x.shape[-1]} features but the weight of "
            f"shape {weight.shape} expects {in_features}"
        )
    check_same_backend(x.data, weight.data)
    rows = x.data.reshape(-1, in_features)  # (N, in)
    out = _mm(rows, weight.data.T)  # (N, out)
    if bias is not None:
        out += bias.data
    out = out.reshape(x.shape[:-1] + (out_features,))  # (..., out)
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        g_rows = g.reshape(-1, out_features)  # (N, out)
        gx = _mm(g_rows, weight.data).reshape(x.shape) if x.requires_grad else None
        gw = _mm(g_rows.T, rows) if weight.requires_grad else None  # (out, in)
        if bias is None:
            return gx, gw
        return gx, gw, (_sum_rows(g_rows) if bias.requires_grad else None)

    return Tensor._from_op(out, parents, backward)


def lora_linear(x: Tensor, weight: Tensor, bias, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """h = x W0^T + b + s (x A^T) B^T: a Linear with a LoRA side path, as one op.

    The same three matrix products as ``linear(x, W0, b) + linear(s * linear(x, A), B)``,
    with the Python and temporaries of one op instead of five; the backward never forms the
    (d, k) gradient of a frozen W0.

    Args:
        x: (..., k); weight: (d, k) = W0; bias: (d,) or None; A: (r, k); B: (d, r)
        scaling: s, a Python number (alpha / r, or alpha / sqrt(r))
    Returns:
        (..., d)
    """
    d, k = weight.shape
    if x.shape[-1] != k or A.shape[1] != k or B.shape != (d, A.shape[0]):
        raise ValueError(
            f"lora_linear: x {x.shape}, W0 {weight.shape}, A {A.shape}, B {B.shape} do not fit; "
            "expected x (..., k), W0 (d, k), A (r, k), B (d, r)"
        )
    check_same_backend(x.data, weight.data, A.data, B.data)
    rows = x.data.reshape(-1, k)  # (N, k)
    out = _mm(rows, weight.data.T)  # (N, d): W0 x
    if bias is not None:
        out += bias.data
    low = _mm(rows, A.data.T)  # (N, r): A x
    low *= scaling  # s A x: scaling r numbers per row, not d
    out += _mm(low, B.data.T)  # (N, d): + s B A x
    out = out.reshape(x.shape[:-1] + (d,))  # (..., d)
    parents = (x, weight, A, B) if bias is None else (x, weight, A, B, bias)

    def backward(g):
        g_rows = g.reshape(-1, d)  # (N, d)
        gB = _mm(g_rows.T, low) if B.requires_grad else None  # (d, r) = s G^T (X A^T)
        g_low = None
        if A.requires_grad or x.requires_grad:
            g_low = _mm(g_rows, B.data)  # (N, r)
            g_low *= scaling  # s G B
        gA = _mm(g_low.T, rows) if A.requires_grad else None  # (r, k) = s (G B)^T X
        gx = None
        if x.requires_grad:
            gx = _mm(g_rows, weight.data)  # (N, k): through W0
            gx += _mm(g_low, A.data)  # and through the side path
            gx = gx.reshape(x.shape)
        gw = _mm(g_rows.T, rows) if weight.requires_grad else None  # (d, k), if W0 trains
        grads = (gx, gw, gA, gB)
        if bias is None:
            return grads
        return grads + ((_sum_rows(g_rows) if bias.requires_grad else None),)

    return Tensor._from_op(out, parents, backward)


# --------------------------------------------------------------------------- embedding
def embedding(idx, weight: Tensor) -> Tensor:
    """Rows of ``weight`` picked by integer ids.

    Args:
        idx: integer array or Tensor of any shape S, each id in [0, V)
        weight: (V, C)
    Returns:
        (*S, C)
    """
    ids = idx.data if isinstance(idx, Tensor) else backend.xp.asarray(idx)
    vocab, channels = weight.shape
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding needs integer ids, got dtype {ids.dtype}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise IndexError(f"embedding: id {bad} is outside the vocabulary [0, {vocab})")
    check_same_backend(ids, weight.data)
    out = weight.data[ids]  # (*S, C)

    def backward(g):
        xp = backend.xp
        flat_ids = ids.reshape(-1)  # (N,)
        g_rows = g.reshape(-1, channels)  # (N, C)
        if flat_ids.size * vocab <= 1 << 24:
            # A one-hot matrix product beats np.add.at by ~9x at course sizes.
            one_hot = (flat_ids[None, :] == xp.arange(vocab)[:, None]).astype(g.dtype)  # (V, N)
            return (_mm(one_hot, g_rows),)  # (V, C)
        grad = xp.zeros_like(weight.data)
        backend.scatter_add(grad, flat_ids, g_rows)
        return (grad,)

    return Tensor._from_op(out, (weight,), backward)


# --------------------------------------------------------------------------- normalising
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably (max subtracted first)."""
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = xp.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)

    return Tensor._from_op(out, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - log(sum(exp(x))) along ``axis``, computed stably."""
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor._from_op(out, (x,), backward)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of the target classes, fused with the softmax.

    Args:
        logits: (N, C) or (..., C) unnormalised scores
        targets: integer class ids of shape logits.shape[:-1]; entries equal to
            ``ignore_index`` do not count
    Returns:
        a scalar: the mean over the counted entries (NaN if none count, as in PyTorch)
    """
    xp = backend.xp
    t = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    classes = logits.shape[-1]
    if t.shape != logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: targets of shape {t.shape} do not match logits of shape "
            f"{logits.shape}; expected targets of shape {logits.shape[:-1]}"
        )
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy needs integer targets, got dtype {t.dtype}")
    check_same_backend(logits.data, t)
    rows = logits.data.reshape(-1, classes)  # (N, C)
    t = t.reshape(-1)  # (N,)
    counted = t != ignore_index
    if counted.size and not xp.all((t[counted] >= 0) & (t[counted] < classes)):
        bad = t[counted][(t[counted] < 0) | (t[counted] >= classes)][0]
        raise IndexError(f"cross_entropy: target {int(bad)} is outside the classes [0, {classes})")
    safe_t = xp.where(counted, t, 0)
    n_counted = int(counted.sum())
    row_ids = xp.arange(rows.shape[0])

    shifted = rows - _max_last(rows)
    exps = xp.exp(shifted)
    sum_exps = _sum_last(exps)[:, 0]
    nll = xp.log(sum_exps) - shifted[row_ids, safe_t]  # (N,)
    loss = (nll * counted).sum() / n_counted if n_counted else xp.asarray(xp.nan, rows.dtype)
    loss = xp.asarray(loss, dtype=rows.dtype)

    def backward(g):
        probs = exps / sum_exps[:, None]  # (N, C), the softmax
        probs[row_ids, safe_t] -= 1
        probs *= (counted * (g / builtins.max(n_counted, 1)))[:, None].astype(probs.dtype)
        return (probs.reshape(logits.shape),)

    return Tensor._from_op(loss, (logits,), backward)


def mse_loss(prediction: Tensor, target) -> Tensor:
    """Mean of (prediction - target)^2 over every entry; ``target`` needs no gradient."""
    tv = target.data if isinstance(target, Tensor) else target
    if _shape_of(tv) != prediction.shape:
        raise ValueError(
            f"mse_loss: prediction of shape {prediction.shape} and target of shape "
            f"{_shape_of(tv)} differ"
        )
    diff = prediction.data - backend.xp.asarray(tv, dtype=prediction.dtype)
    out = (diff * diff).mean()
    scale = 2.0 / diff.size
    return Tensor._from_op(out, (prediction,), lambda g: (diff * (g * scale),))


def layer_norm(x: Tensor, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last axis to mean 0 and variance 1, then scale and shift.

    Args:
        x: (..., C)
        weight, bias: (C,) or None
    Returns:
        (..., C)
    """
    xp = backend.xp
    channels = x.shape[-1]
    for label, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (channels,):
            raise ValueError(
                f"layer_norm: {label} of shape {p.shape} does not match the last axis of the "
                f"input of shape {x.shape}; expected ({channels},)"
            )
    mu = _sum_last(x.data) / channels
    centred = x.data - mu
    rstd = 1.0 / xp.sqrt(_sum_last(centred * centred) / channels + eps)  # (..., 1)
    x_hat = centred * rstd
    out = x_hat * weight.data if weight is not None else x_hat.copy()
    if bias is not None:
        out += bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)

    def backward(g):
        grads = []
        if x.requires_grad:
            g_hat = g * weight.data if weight is not None else g
            mean_g = _sum_last(g_hat) / channels
            mean_gx = _sum_last(g_hat * x_hat) / channels
            grads.append(rstd * (g_hat - mean_g - x_hat * mean_gx))
        else:
            grads.append(None)
        g_rows = g.reshape(-1, channels)  # (N, C)
        if weight is not None:
            rows = x_hat.reshape(-1, channels)
            grads.append(_sum_rows(g_rows * rows) if weight.requires_grad else None)
        if bias is not None:
            grads.append(_sum_rows(g_rows) if bias.requires_grad else None)
        return tuple(grads)

    return Tensor._from_op(out, parents, backward)


# --------------------------------------------------------------------------- activations
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh form: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).

    The derivative, 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2),
    is computed in the forward pass while its pieces are at hand (only when a gradient is
    needed), in place: on a (B*T, 4C) activation, temporaries are the cost of this op.
    """
    xp = backend.xp
    xd = x.data.reshape(-1)  # 1-D, so every step below is an array that `out=` can write to
    x_sq = xd * xd
    t = x_sq * 0.044715
    t += 1
    t *= xd
    t *= _GELU_C
    xp.tanh(t, out=t)  # tanh(u)
    out = t + 1
    out *= xd
    out *= 0.5
    out = out.reshape(x.shape)
    if not (x.requires_grad and is_grad_enabled()):
        return Tensor._from_op(out, (x,), None)
    slope = x_sq  # reuse: sqrt(2/pi) (1 + 3 * 0.044715 x^2) (1 - tanh^2 u) * 0.5 x
    slope *= 3 * 0.044715
    slope += 1
    slope *= _GELU_C
    slope *= 1 - t * t
    slope *= xd
    t += 1
    slope += t  # 0.5 * (1 + tanh u) + ..., halved together below
    slope *= 0.5
    slope = slope.reshape(x.shape)
    return Tensor._from_op(out, (x,), lambda g: (g * slope,))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each entry with probability ``p`` and scale the rest by 1/(1-p) (training only)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    keep = backend.rng().random(x.shape) >= p
    mask = keep.astype(x.dtype) / (1.0 - p) if p < 1.0 else keep.astype(x.dtype)
    return Tensor._from_op(x.data * mask, (x,), lambda g: (g * mask,))


# --------------------------------------------------------------------------- attention
def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale + causal mask) v, with a hand-written backward.

    Args:
        q: (B, nh, T, hs); k, v: (B, nh, S, hs)
        is_causal: position i attends to positions j <= i only (top-left aligned, as PyTorch)
        scale: defaults to 1 / sqrt(hs)
    Returns:
        (B, nh, T, hs)
    """
    xp = backend.xp
    if q.shape[-1] != k.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit; expected q "
            "(..., T, hs), k and v (..., S, hs)"
        )
    check_same_backend(q.data, k.data, v.data)
    t_len, s_len = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = _mm(q.data, k.data.swapaxes(-1, -2)) * scale  # (B, nh, T, S)
    if is_causal:
        future = xp.triu(xp.ones((t_len, s_len), dtype=bool), k=1)  # (T, S): j > i
        scores += xp.where(future, -xp.inf, 0.0).astype(scores.dtype)  # exp(-inf) = 0
    scores -= _max_last(scores)
    att = xp.exp(scores, out=scores)  # reuse the buffer: scores are not needed again
    att /= _sum_last(att)  # (B, nh, T, S)
    out = _mm(att, v.data)  # (B, nh, T, hs)

    def backward(g):
        gq = gk = gv = None
        if v.requires_grad:
            gv = _mm(att.swapaxes(-1, -2), g)  # (B, nh, S, hs)
        if q.requires_grad or k.requires_grad:
            g_att = _mm(g, v.data.swapaxes(-1, -2))  # (B, nh, T, S)
            g_scores = att * (g_att - _sum_last(g_att * att))
            g_scores *= scale
            if q.requires_grad:
                gq = _mm(g_scores, k.data)  # (B, nh, T, hs)
            if k.requires_grad:
                gk = _mm(g_scores.swapaxes(-1, -2), q.data)  # (B, nh, S, hs)
        return gq, gk, gv

    return Tensor._from_op(out, (q, k, v), backward)
