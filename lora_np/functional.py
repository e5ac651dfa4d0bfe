"""Every differentiable op: its forward and its backward, derived by hand.

The primitive ops (``add``, ``matmul``, ``sum``, ``reshape``, ...) live beside the Tensor in
:mod:`lora_np.autograd` and are re-exported here, so ``F.matmul`` and ``F.relu`` still work.
Each layer op here computes its output from the input arrays and returns
``Tensor.from_op(out, parents, backward)``. The closure ``backward(g)`` receives d(loss)/d(out) and returns one gradient per
parent, computing only the ones whose parent requires a gradient (``None`` for the rest): a
frozen weight never costs a gradient computation.

Names and argument order follow PyTorch (``F.linear(x, weight, bias)``, ``F.cross_entropy``),
so a learner meets the same calls again there. Shapes in docstrings: ``B`` batch, ``T``
sequence length, ``C`` channels, ``N`` rows, ``V`` vocabulary.

All matrix products go through :func:`_mm` (``Tensor @`` too) so a test can count them.
The speed tricks (BLAS-shaped reductions, row-major copies of W^T and k^T, the one-hot
embedding gradient, the in-place GELU) are in :mod:`lora_np.fastpaths`, each beside its plain
formula; the fused ``lora_linear`` and the one-hot branch of ``embedding`` are marked "fast
path" here, their plain twin beside them. In plain mode (``lora_np.plain()``) every op runs
its plain formula.
"""

from __future__ import annotations

import builtins
import math

from . import autograd, backend, fastpaths
from .autograd import (  # noqa: F401  (the primitives, re-exported as F.<name>)
    Tensor,
    add,
    astype,
    check_same_backend,
    div,
    exp,
    getitem,
    is_grad_enabled,
    log,
    matmul,
    max,
    mean,
    mul,
    neg,
    power,
    relu,
    reshape,
    sqrt,
    sub,
    sum,
    tanh,
    transpose,
)
from .shapes import shape_of


def _mm(a, b):
    """The one place a matrix product happens (``a @ b``): replace ``functional._mm`` to count
    or time them."""
    return a @ b


# ``Tensor @`` computes its products through _mm too (looked up at call time, so a replaced
# _mm is seen).
autograd.set_matrix_product(lambda a, b: _mm(a, b))

# Fast paths: sums as BLAS products. Their plain twins (NumPy's sums) are beside them in
# fastpaths, and plain mode runs those.
_sum_last, _sum_rows, _weighted_sum_last = (
    fastpaths.sum_last,
    fastpaths.sum_rows,
    fastpaths.weighted_sum_last,
)


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
    out = _mm(
        rows, fastpaths.weight_t(weight.data, rows.shape[0])
    )  # (N, out): W^T laid out for BLAS
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

    return Tensor.from_op(out, parents, backward)


def lora_linear(x: Tensor, weight: Tensor, bias, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """h = x W0^T + b + s (x A^T) B^T: a Linear with a LoRA side path, as one op.

    A fast path: the same three matrix products as its plain twin
    ``linear(x, W0, b) + s * linear(linear(x, A), B)`` (what plain mode computes), with the
    Python and temporaries of one op instead of five, s applied to the r-wide ``x A^T``; the
    backward never forms the (d, k) gradient of a frozen W0.

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
    if fastpaths.is_plain():  # the plain twin: three linear ops, s applied to the d-wide output
        return add(linear(x, weight, bias), mul(linear(linear(x, A), B), scaling))
    # Fast path: the same sum as one op (below).
    rows = x.data.reshape(-1, k)  # (N, k)
    out = _mm(rows, fastpaths.weight_t(weight.data, rows.shape[0]))  # (N, d): W0 x
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

    return Tensor.from_op(out, parents, backward)


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
        flat_ids = ids.reshape(-1)  # (N,)
        g_rows = g.reshape(-1, channels)  # (N, C)
        if flat_ids.size * vocab <= fastpaths.ONE_HOT_LIMIT and not fastpaths.is_plain():
            # Fast path: (V, N) @ (N, C), a one-hot matrix product, ~9x faster than np.add.at
            # here. Plain twin (and plain mode): each row added at its id, the line below.
            return (_mm(fastpaths.one_hot(flat_ids, vocab, g.dtype), g_rows),)  # (V, C)
        return (fastpaths.plain_embedding_grad(flat_ids, g_rows, vocab),)

    return Tensor.from_op(out, (weight,), backward)


# --------------------------------------------------------------------------- normalising
def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, computed stably (max subtracted first).

    Args:
        x: any shape S, e.g. (N, C) scores
        axis: the axis that sums to 1
    Returns:
        S, non-negative, summing to 1 along ``axis``
    """
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = xp.exp(shifted)
    out /= out.sum(axis=axis, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)

    return Tensor.from_op(out, (x,), backward)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - log(sum(exp(x))) along ``axis``, computed stably.

    Args:
        x: any shape S, e.g. (N, C) scores
        axis: the axis normalised over
    Returns:
        S: log-probabilities (their exp sums to 1 along ``axis``)
    """
    xp = backend.xp
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor.from_op(out, (x,), backward)


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

    shifted = rows - rows.max(axis=-1, keepdims=True)
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

    return Tensor.from_op(loss, (logits,), backward)


def mse_loss(prediction: Tensor, target) -> Tensor:
    """Mean of (prediction - target)^2 over every entry; ``target`` needs no gradient.

    Args:
        prediction: any shape S
        target: an array or Tensor of shape S
    Returns:
        a scalar ()
    """
    tv = target.data if isinstance(target, Tensor) else target
    if shape_of(tv) != prediction.shape:
        raise ValueError(
            f"mse_loss: prediction of shape {prediction.shape} and target of shape "
            f"{shape_of(tv)} differ"
        )
    diff = prediction.data - backend.xp.asarray(tv, dtype=prediction.dtype)
    out = (diff * diff).mean()
    scale = 2.0 / diff.size
    return Tensor.from_op(out, (prediction,), lambda g: (diff * (g * scale),))


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
    x_hat = x.data - mu  # centred, normalised in place below
    rstd = 1.0 / xp.sqrt(_sum_last(x_hat * x_hat) / channels + eps)  # (..., 1)
    x_hat *= rstd
    out = x_hat * weight.data if weight is not None else x_hat.copy()
    if bias is not None:
        out += bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)

    def backward(g):
        # With g_hat = g * w: dx = rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)),
        # means over the last axis. g * x_hat serves twice: summed over rows it is the
        # weight's gradient, and its mean weighted by w is mean(g_hat * x_hat).
        need_gx_hat = x.requires_grad or (weight is not None and weight.requires_grad)
        g_x_hat = g * x_hat if need_gx_hat else None
        grads = [None]
        if x.requires_grad:
            w = weight.data if weight is not None else xp.ones(channels, dtype=g.dtype)
            w_mean = w / channels  # (C,): weights of the two means
            gx = g * w if weight is not None else g.copy()  # g_hat
            gx -= _weighted_sum_last(g, w_mean)  # mean(g_hat)
            gx -= x_hat * _weighted_sum_last(g_x_hat, w_mean)  # x_hat * mean(g_hat * x_hat)
            gx *= rstd
            grads[0] = gx
        if weight is not None:
            rows = g_x_hat.reshape(-1, channels) if weight.requires_grad else None
            grads.append(_sum_rows(rows) if weight.requires_grad else None)
        if bias is not None:
            grads.append(_sum_rows(g.reshape(-1, channels)) if bias.requires_grad else None)
        return tuple(grads)

    return Tensor.from_op(out, parents, backward)


# --------------------------------------------------------------------------- activations
def gelu(x: Tensor) -> Tensor:
    """GELU, tanh form: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).

    The derivative is computed in the forward pass while its pieces are at hand, only when a
    gradient is needed (:func:`lora_np.fastpaths.gelu_and_slope`, in place).

    Args:
        x: any shape S
    Returns:
        S
    """
    need_slope = x.requires_grad and is_grad_enabled()
    out, slope = fastpaths.gelu_and_slope(x.data.reshape(-1), need_slope)  # 1-D: `out=` works
    out = out.reshape(x.shape)
    if not need_slope:
        return Tensor.from_op(out, (x,), None)
    slope = slope.reshape(x.shape)
    return Tensor.from_op(out, (x,), lambda g: (g * slope,))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each entry with probability ``p`` and scale the rest by 1/(1-p) (training only).

    Args:
        x: any shape S
        p: drop probability in [0, 1]
        training: False (or p == 0) returns ``x`` itself
    Returns:
        S; the mask is drawn from ``backend.rng()``
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    keep = backend.rng().random(x.shape) >= p
    mask = keep.astype(x.dtype) / (1.0 - p) if p < 1.0 else keep.astype(x.dtype)
    return Tensor.from_op(x.data * mask, (x,), lambda g: (g * mask,))


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
    # k^T * scale as its own row-major copy: BLAS multiplies these small matrices fastest in
    # that layout, and the scaling rides along with the copy (fastpaths.transposed_copy).
    scores = _mm(q.data, fastpaths.transposed_copy(k.data, scale))  # (B, nh, T, S)
    if is_causal:
        future = xp.triu(xp.ones((t_len, s_len), dtype=bool), k=1)  # (T, S): j > i
        scores += xp.where(future, -xp.inf, 0.0).astype(scores.dtype)  # exp(-inf) = 0
    scores -= scores.max(axis=-1, keepdims=True)
    att = xp.exp(scores, out=scores)  # reuse the buffer: scores are not needed again
    att /= _sum_last(att)  # (B, nh, T, S)
    out = _mm(att, v.data)  # (B, nh, T, hs)

    def backward(g):
        gq = gk = gv = None
        if v.requires_grad:
            gv = _mm(att.swapaxes(-1, -2), g)  # (B, nh, S, hs)
        if q.requires_grad or k.requires_grad:
            # d(loss)/d(scores) = att * (g_att - sum_j g_att * att), times scale for the
            # scores' scaling; scale folded into the copy of v^T, the rest done in place.
            g_scores = _mm(g, fastpaths.transposed_copy(v.data, scale))  # (B, nh, T, S)
            g_scores -= _sum_last(g_scores * att)
            g_scores *= att
            if q.requires_grad:
                gq = _mm(g_scores, k.data)  # (B, nh, T, hs)
            if k.requires_grad:
                gk = _mm(g_scores.swapaxes(-1, -2), q.data)  # (B, nh, S, hs)
        return gq, gk, gv

    return Tensor.from_op(out, (q, k, v), backward)
