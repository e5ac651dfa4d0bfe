"""The measured speed tricks, each beside the plain formula it equals, and the switch that
turns them all off (plain mode).

Every fast function here has a plain twin, ``plain_<name>`` (or the formula named in its
docstring), written first, as the formula reads. The ops in :mod:`lora_np.autograd` and
:mod:`lora_np.functional` call the fast versions, and ``tests/test_fastpaths.py`` checks that
each pair agrees in value and gradient (to rounding: a sum in another order rounds differently).

**Plain mode**, one switch for the whole engine: ``lora_np.set_plain(True)``, the block
``with lora_np.plain(): ...``, or ``LORA_NP_PLAIN=1`` in the environment before the import.
Then every fast function here answers with its plain twin, and the ops that have a faster
shape of their own take their plain one instead (each marked "fast path" in its source, its
plain twin beside it): ``matmul`` of a batch by a matrix stays a broadcast product, a whole
power stays ``x ** n``, the embedding gradient adds rows at their ids, ``F.lora_linear`` is
the sum of three ``linear`` ops, and ``LoRALinear.forward`` is ``base(x) + s (x A^T) B^T``
as written. The numbers agree with the fast engine to rounding; read the engine in plain mode
to see the formulas, step through it in a debugger, or check a change against it. The unit
tests of the ops run in both modes (``tests/conftest.py``, the ``engine_mode`` fixture).

Where the time goes and what each trick saved is in ``benchmarks/RESULTS.md`` ("Where a step's
time goes", "What changed the numbers") and the README's "Speed" section.

:func:`tune_allocator` is the one trick that is not an op: it changes how the C library hands
out memory, for the whole process, so it only happens when a training script asks for it.
"""

from __future__ import annotations

import contextlib
import math
import os

from . import backend

# --------------------------------------------------------------------------- plain mode
PLAIN_ENV = "LORA_NP_PLAIN"
"""The environment variable read once, at import: 1 starts in plain mode, 0 (or unset) fast."""


def _plain_from_environment() -> bool:
    value = os.environ.get(PLAIN_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(
        f"{PLAIN_ENV}={value!r} is not understood; expected 1 (plain formulas) or 0 (fast paths)"
    )


# One flag for the process, not per thread (unlike grad mode): lora_np.parallel runs a batch's
# shards on worker threads, and they must compute as the thread that asked.
_plain = _plain_from_environment()


def is_plain() -> bool:
    """True while plain mode is on: every op runs its plain formula, no fast path."""
    return _plain


def set_plain(flag: bool) -> None:
    """Turn plain mode on (True) or off (False) for the whole process, from the next op on.

    Graphs recorded before the switch keep the backward closures they were made with.
    """
    global _plain
    if not isinstance(flag, bool):
        raise TypeError(f"plain mode is switched with True or False, got {flag!r}")
    _plain = flag


@contextlib.contextmanager
def plain(flag: bool = True):
    """``with plain(): ...`` runs the block in plain mode (``plain(False)``: with the fast
    paths), then restores the mode that was on before."""
    previous = _plain
    set_plain(flag)
    try:
        yield
    finally:
        set_plain(previous)


# --------------------------------------------------------------------------- reductions
def plain_sum_last(a):
    """(..., C) -> (..., 1): the sum over the last axis, as NumPy's reduction."""
    return a.sum(axis=-1, keepdims=True)


def sum_last(a):
    """Fast path of :func:`plain_sum_last`: the same sum as a matrix-vector product.

    NumPy's own reduction along a short contiguous axis is 3-6x slower than BLAS on the
    (rows, 64..512) arrays of a step.
    """
    if _plain:
        return plain_sum_last(a)
    return (a @ backend.xp.ones(a.shape[-1], dtype=a.dtype))[..., None]


def plain_weighted_sum_last(a, w):
    """(..., C), (C,) -> (..., 1): the sum over the last axis of a * w."""
    return (a * w).sum(axis=-1, keepdims=True)


def weighted_sum_last(a, w):
    """Fast path of :func:`plain_weighted_sum_last`: one matrix-vector product (no (..., C)
    temporary, and BLAS instead of a short-axis reduction)."""
    if _plain:
        return plain_weighted_sum_last(a, w)
    return (a @ w)[..., None]


def plain_sum_rows(a):
    """(N, C) -> (C,): the column sums."""
    return a.sum(axis=0)


def sum_rows(a):
    """Fast path of :func:`plain_sum_rows`: a vector-matrix product (see :func:`sum_last`)."""
    if _plain:
        return plain_sum_rows(a)
    return backend.xp.ones(a.shape[0], dtype=a.dtype) @ a


# --------------------------------------------------------------------------- layouts
def plain_transposed_copy(a, scale: float = 1.0):
    """(..., n, m) -> (..., m, n): ``scale`` times the swapped last two axes (a strided view,
    times ``scale``)."""
    return a.swapaxes(-1, -2) * scale


def transposed_copy(a, scale: float = 1.0):
    """Fast path of :func:`plain_transposed_copy`: the same values as a new C-ordered array.

    OpenBLAS multiplies ``x @ w`` faster when ``w`` is laid out row by row than when it is a
    transposed view: 15-25% for the (128 x 128) and (128 x 64) weights of a tiny-GPT layer,
    and about 1.7x for the small (64 x 32) matrices of attention (slower still when their rows
    are strided views of a wider array). One copy gives every product the fast layout; in
    attention the scaling rides along with it, so it costs no pass over the scores.
    """
    if _plain:
        return plain_transposed_copy(a, scale)
    xp = backend.xp
    if scale == 1:
        return xp.ascontiguousarray(a.swapaxes(-1, -2))
    out = xp.empty(a.shape[:-2] + (a.shape[-1], a.shape[-2]), dtype=a.dtype)
    return xp.multiply(a.swapaxes(-1, -2), scale, out=out)


COPY_ROWS_PER_OUTPUT = 8
"""``x @ W^T`` copies W^T first when x has at least this many rows per output feature of W
(d x k): measured, the row-major layout saves 15-25% for the (2048, 128) x (128, 128) and
(128, 64) products of a tiny-GPT step, nothing for 512 outputs, and the copy of a large W
costs more than it saves for a few rows (generating one token multiplies a single row)."""


def weight_t(weight, n_rows: int):
    """W^T (k, d) for ``rows @ W^T`` with ``n_rows`` rows. Plain twin: the transposed view
    ``weight.T``; fast path: a row-major copy of it when the product is long beside W
    (:func:`transposed_copy`)."""
    if not _plain and n_rows >= COPY_ROWS_PER_OUTPUT * weight.shape[0]:
        return transposed_copy(weight)
    return weight.T


# --------------------------------------------------------------------------- powers
def plain_int_power(x, n: int):
    """x ** n."""
    return x**n


def int_power(x, n: int):
    """Fast path of :func:`plain_int_power` for a whole n >= 1: repeated multiplication.

    float32 ``x ** 3`` is about 50x slower than ``x * x * x`` in NumPy.
    """
    if _plain:
        return plain_int_power(x, n)
    result = x
    for _ in range(n - 1):
        result = result * x
    return result


# --------------------------------------------------------------------------- embedding
ONE_HOT_LIMIT = 1 << 24
"""The embedding gradient uses a one-hot product while ids x vocabulary stays below this."""


def plain_embedding_grad(ids, g_rows, vocab: int):
    """(N,) ids, (N, C) gradient rows -> (V, C): each row of g added into the row of its id."""
    grad = backend.xp.zeros((vocab, g_rows.shape[1]), dtype=g_rows.dtype)
    backend.scatter_add(grad, ids, g_rows)
    return grad


def one_hot(ids, vocab: int, dtype):
    """(N,) integer ids -> (V, N) matrix with a 1 where row v == ids[n].

    Fast path of :func:`plain_embedding_grad`: ``one_hot(ids) @ g_rows`` is the embedding's
    weight gradient, and a matrix product beats ``np.add.at`` by about 9x at course sizes
    (``functional.embedding`` takes it while ids x vocabulary < :data:`ONE_HOT_LIMIT`, and
    never in plain mode).
    """
    xp = backend.xp
    return (ids[None, :] == xp.arange(vocab)[:, None]).astype(dtype)


# --------------------------------------------------------------------------- GELU
GELU_C = math.sqrt(2.0 / math.pi)


def plain_gelu_and_slope(x):
    """GELU (tanh form) of an array and its derivative, written as the formulas read:
    GELU(x) = 0.5 x (1 + tanh u) with u = sqrt(2/pi) (x + 0.044715 x^3), and
    d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'(x).

    Returns:
        (out, slope), each of x's shape
    """
    xp = backend.xp
    u = GELU_C * (x + 0.044715 * x * x * x)
    tanh_u = xp.tanh(u)
    out = 0.5 * x * (1 + tanh_u)
    slope = 0.5 * (1 + tanh_u) + 0.5 * x * (1 - tanh_u**2) * GELU_C * (1 + 3 * 0.044715 * x * x)
    return out, slope


def gelu_and_slope(xd, need_slope: bool):
    """Fast path of :func:`plain_gelu_and_slope`: GELU of a 1-D array and, if asked, its
    derivative, in 15 in-place passes.

    With h = 0.5 (1 + tanh u), GELU is x h, and since 1 - tanh^2 u = 4 h (1 - h) the
    derivative becomes h (1 + p (x - x h)) with p = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2). On a
    (B*T, 4C) activation every pass over memory is the cost of this op, so each step writes
    into an array it already has (``xd`` itself is not changed): 1.5x faster than the formula
    as read.

    Args:
        xd: (N,) input.
    Returns:
        (out (N,), slope (N,) or None)
    """
    if _plain:
        out, slope = plain_gelu_and_slope(xd)
        return out, (slope if need_slope else None)
    xp = backend.xp
    x_sq = xd * xd
    h = x_sq * (GELU_C * 0.044715)
    h += GELU_C
    h *= xd  # u
    xp.tanh(h, out=h)
    h *= 0.5
    h += 0.5  # h = 0.5 (1 + tanh u)
    out = xd * h
    if not need_slope:
        return out, None
    slope = x_sq  # reuse: p = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    slope *= 6 * 0.044715 * GELU_C
    slope += 2 * GELU_C
    slope *= xd - out  # p (x - x h)
    slope += 1
    slope *= h
    return out, slope


# --------------------------------------------------------------------------- memory
def tune_allocator() -> bool:
    """Ask glibc's malloc to keep large freed blocks for reuse; True when it took effect.

    A training step allocates and frees the same few-MB activation arrays every time. By
    default glibc hands blocks that large straight back to the kernel, so each step maps them
    again and pays a page fault per 4 KB page: a quarter of a tiny-GPT step on 2 cores. With
    mmap only for blocks over 1 GB and no trimming, freed memory is reused. The price: the
    process keeps its peak memory, which is why this is a call a training script makes and not
    something ``import lora_np`` does. A no-op (False) off glibc, or when the environment has
    ``LORA_NP_MALLOC_TUNING=0``. Numbers do not change, only speed.
    """
    if os.environ.get("LORA_NP_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes  # noqa: PLC0415  (a standard module, needed only here)

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    ok = mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, (1 << 31) - 1)
    return bool(ok and mallopt(m_top_pad, 64 << 20))
