"""Data parallelism over CPU threads: a batch split by rows, each shard on its own thread.

Why: NumPy runs every element-wise pass of a step (GELU, softmax, layer norm, the optimiser's
arithmetic) on one core; only the BLAS products use more. Splitting the *batch* instead keeps
every core busy for the whole step: each thread runs the forward and backward pass of a few
rows, with BLAS at one thread. NumPy releases the GIL inside its loops and inside BLAS, so the
shards' arithmetic overlaps while the Python bookkeeping of the graph takes turns.

    ln.backend.set_blas_threads(1)          # first: see "BLAS threads" below
    opt.zero_grad()
    loss = parallel.loss_and_backward(model, idx, targets, threads=2)   # a float
    opt.step()
    logits = parallel.forward(model, idx, threads=2)                    # no graph

The maths. The model is called as ``model(idx, targets) -> (logits, loss)`` with ``idx`` and
``targets`` of ``B`` rows (the tiny GPT: both ``(B, T)``), and ``loss`` the mean of the
per-token losses ``l_t`` over the ``n`` targets that count (those not -100,
:data:`IGNORE_INDEX`, as :func:`lora_np.functional.cross_entropy` counts them)::

    L = (1/n) sum_t l_t

Split the rows into shards ``S_1 .. S_k`` (contiguous, sizes differing by at most one row); shard
``i`` has ``n_i`` counted targets and its own loss ``L_i = (1/n_i) sum_{t in S_i} l_t``. Then::

    L = sum_i (n_i/n) L_i          dL/dθ = sum_i (n_i/n) dL_i/dθ

so shard ``i``'s backward pass starts from its weight, ``loss_i.backward(n_i/n)``, and the
leaves' ``.grad`` add up to exactly the batch gradient (equal to one pass over the batch up
to float rounding: sums run in another order). A shard with ``n_i = 0`` has weight 0 (and a
NaN loss): its backward pass is skipped. When no target counts at all, the plain path runs, so
the loss is NaN as :func:`~lora_np.functional.cross_entropy` documents.

What this needs of the model: rows that do not interact (true of the tiny GPT; not of batch
normalisation) and the loss above. Two threads then add into one Parameter's ``.grad``;
:mod:`lora_np.graph` holds a lock for that. With dropout on, the shards draw their masks
from the one generator in an order that depends on thread timing: training then no longer
repeats bit for bit.

Which path runs:

* ``threads=1``, or the CuPy backend (and ``numpy-strict``, its stand-in in tests): the
  plain path, one pass over the whole batch (exactly ``model(idx, targets)`` then
  ``loss.backward()``, all or nothing as below). Threads do not help a GPU: its kernels
  already run in parallel, and they queue on one stream.
* fewer rows than ``threads``: one shard per row (one row: the plain path).
* otherwise ``threads`` shards, run on a thread pool kept per thread count (the calling
  thread runs the first shard), first every forward pass, then every backward pass.

All or nothing: an error in any shard's forward pass (a bad token id) comes before any
gradient is added; an error in a backward pass, or Ctrl-C, puts every ``.grad`` back as it
was, on every path (the trained leaves' gradients are kept aside first: free after
``zero_grad()``, one copy otherwise). Either way the call returns only when every shard has
stopped, so no thread goes on writing gradients after it. An empty batch (no rows, or rows of length 0) is refused. A
model whose forward pass calls this module itself is refused: the inner call would wait for
the pool the outer call occupies, forever.

BLAS threads: call ``ln.backend.set_blas_threads(1)`` before using this module. Otherwise
each shard's products start their own BLAS threads, and ``threads`` x cores threads compete
for the cores. This module does not change the
setting itself: the setting is global to the process, and changing it costs milliseconds.
"""

from __future__ import annotations

import numbers
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from . import backend, graph

IGNORE_INDEX = -100  # targets equal to this do not count (cross_entropy's default)

_pools: dict[int, ThreadPoolExecutor] = {}  # workers per thread count, kept between steps
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The pool of ``threads - 1`` workers (the caller is the remaining thread)."""
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(
                threads - 1, thread_name_prefix=f"lora_np-parallel-{threads}"
            )
        return _pools[threads]


_shard = threading.local()  # .running: this thread is running a shard of one of our calls


def _as_shard(fn, item):
    _shard.running = True
    try:
        return fn(item)
    finally:
        _shard.running = False


def _refuse_nesting() -> None:
    if getattr(_shard, "running", False):
        raise RuntimeError(
            "lora_np.parallel was called from inside one of its own shards (the model's forward "
            "pass calls parallel.forward or parallel.loss_and_backward): the inner call would "
            "wait for the thread pool that the outer call occupies, a deadlock. Inside a model, "
            "call the inner model directly; split only the outermost call"
        )


def _wait_all(futures: list):
    """Wait until every future is done, even through Ctrl-C; return the interrupt or None.

    A KeyboardInterrupt reaches the main thread while it waits; the workers run on, so
    returning then would leave them writing gradients after the call. Futures not started
    yet are cancelled instead.
    """
    interrupt = None
    while True:
        try:
            wait(futures)
            return interrupt
        except BaseException as err:
            interrupt = interrupt or err
            for future in futures:
                future.cancel()


def _run(fn, items: list, threads: int) -> list:
    """``[fn(item) for item in items]``, the first on this thread, the rest on the pool.

    Every call has finished before this returns or raises (Ctrl-C included); the first error
    is raised: this thread's, then an interrupt, then the others' in ``items``' order.
    """
    pool, futures, errors, results = _pool(threads), [], [], []
    try:
        for item in items[1:]:
            futures.append(pool.submit(_as_shard, fn, item))
        results.append(_as_shard(fn, items[0]))
    except BaseException as err:  # still wait for the others: none may outlive the call
        errors.append(err)
        for future in futures:
            future.cancel()  # not started yet: never starts
    interrupt = _wait_all(futures)
    if interrupt is not None:
        errors.append(interrupt)
    for future in futures:
        if future.cancelled():
            continue
        if future.exception() is not None:
            errors.append(future.exception())
        else:
            results.append(future.result())
    if errors:
        raise errors[0]
    return results


def _check_threads(threads) -> None:
    if not (isinstance(threads, numbers.Integral) and not isinstance(threads, bool)):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")


def _rows(array, name: str):
    """``array`` (a Tensor or array-like) as a host array with a leading batch axis."""
    data = backend.np.asarray(array.data if isinstance(array, graph.Node) else array)
    if data.ndim < 1:
        raise ValueError(f"{name} needs a batch axis (rows) first, got shape {data.shape}")
    return data


def _shards(rows: int, threads: int) -> list[slice]:
    """``min(threads, rows)`` contiguous slices covering ``range(rows)``, sizes within one."""
    k = min(threads, rows)
    size, extra = divmod(rows, k)
    bounds = [i * size + min(i, extra) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _shape(array) -> tuple:
    data = array.data if isinstance(array, graph.Node) else array
    return tuple(data.shape) if hasattr(data, "shape") else backend.np.shape(data)


def check_batch(idx, targets=None) -> None:
    """Refuse an empty batch: ``idx`` or ``targets`` with no rows or rows of length 0.

    Raises:
        ValueError: naming both shapes. No loss can be averaged over zero targets.
    """
    shapes = [_shape(idx)] + ([] if targets is None else [_shape(targets)])
    if any(0 in shape for shape in shapes):
        got = f"idx has shape {shapes[0]}" + ("" if targets is None else f", targets {shapes[1]}")
        raise ValueError(
            f"empty batch: {got}; a batch needs at least one row of at least one position"
        )


def count_targets(targets) -> int:
    """How many targets count (are not -100, :data:`IGNORE_INDEX`) in ``targets``."""
    data = targets.data if isinstance(targets, graph.Node) else targets
    xp = backend.module_of(data) if hasattr(data, "shape") else backend.np
    return int((xp.asarray(data) != IGNORE_INDEX).sum())


def _leaves(losses: list) -> list:
    """Every leaf that requires a gradient in the graphs of ``losses``, once each."""
    leaves, seen = [], set()
    for loss in losses:
        for node in graph.topological_order(loss):
            if node.is_leaf and node.requires_grad and id(node) not in seen:
                seen.add(id(node))
                leaves.append(node)
    return leaves


def _all_or_nothing(losses: list, backward) -> None:
    """Run ``backward()`` (the backward passes of ``losses``); on any error, Ctrl-C included,
    put every leaf's ``.grad`` back as it was. ``backward`` returns only once every pass has
    stopped, so nothing writes a gradient after the restore."""
    kept = [(leaf, None if leaf.grad is None else leaf.grad.copy()) for leaf in _leaves(losses)]
    try:
        backward()
    except BaseException:
        for leaf, grad in kept:
            leaf.grad = grad
        raise


def _plain_loss_and_backward(model, idx, targets) -> float:
    _, loss = model(idx, targets)
    _all_or_nothing([loss], loss.backward)
    return float(loss.item())


def loss_and_backward(model, idx, targets, threads: int = 2) -> float:
    """The batch loss, with its gradient added into every trained leaf's ``.grad``.

    The same as ``_, loss = model(idx, targets); loss.backward(); loss.item()``, computed as
    ``threads`` shards of rows on ``threads`` threads (see the module docstring). Like
    ``backward()``, it adds to gradients already there: call ``zero_grad()`` first.

    Args:
        model: called as ``model(idx, targets) -> (logits, loss)``, ``loss`` the mean over
            the targets that are not -100; rows must not interact.
        idx: the inputs, ``B`` rows (the tiny GPT: int ``(B, T)``).
        targets: ``B`` rows (the tiny GPT: int ``(B, T)``); -100 marks a target that does not
            count.
        threads: how many threads (an int >= 1); 1 is the plain path.
    Returns:
        The batch loss as a Python float (NaN when no target counts, as the plain path).
    Raises:
        ValueError: ``threads`` is not an int >= 1; ``idx`` or ``targets`` has no batch axis,
            is empty, or their numbers of rows differ. Errors of the model's forward pass come
            before any gradient is added; errors of a backward pass leave every ``.grad`` as
            it was.
        RuntimeError: called from inside a shard (the model itself uses this module).
    """
    _refuse_nesting()
    _check_threads(threads)
    check_batch(idx, targets)
    if threads == 1 or backend.name != "numpy" or not graph.is_grad_enabled():
        # inside no_grad() the plain path raises as loss.backward() would
        return _plain_loss_and_backward(model, idx, targets)
    ids, tgt = _rows(idx, "idx"), _rows(targets, "targets")
    if len(ids) != len(tgt):
        raise ValueError(
            f"idx and targets need the same number of rows; got idx of shape {ids.shape} and "
            f"targets of shape {tgt.shape}"
        )
    shards = _shards(len(ids), threads)
    counted = [int((tgt[s] != IGNORE_INDEX).sum()) for s in shards]  # n_i
    total = sum(counted)  # n
    if len(shards) < 2 or total == 0:
        return _plain_loss_and_backward(model, idx, targets)

    losses = _run(lambda s: model(ids[s], tgt[s])[1], shards, threads)
    weights = [n_i / total for n_i in counted]
    live = [(loss, w) for loss, w in zip(losses, weights) if w > 0]  # skip NaN, weight-0 shards
    backward = [loss for loss, _ in live]
    _all_or_nothing(backward, lambda: _run(lambda pair: pair[0].backward(pair[1]), live, threads))
    return sum(w * float(loss.item()) for loss, w in live)


def forward(model, idx, threads: int = 2):
    """The logits of ``model(idx)`` without a graph, computed as ``threads`` shards of rows.

    The same as ``with no_grad(): logits, _ = model(idx)``; the shards' logits are joined
    along the first axis (one copy of the logits).

    Args:
        model: called as ``model(idx) -> (logits, _)``; rows must not interact.
        idx: the inputs, ``B`` rows (the tiny GPT: int ``(B, T)``).
        threads: how many threads (an int >= 1); 1 is the plain path.
    Returns:
        The logits, a Tensor that needs no gradient (the tiny GPT: ``(B, T, V)``).
    Raises:
        ValueError: a bad ``threads`` or an empty ``idx``.
        RuntimeError: called from inside a shard (the model itself uses this module).
    """
    _refuse_nesting()
    _check_threads(threads)
    check_batch(idx)

    def plain(rows):
        with graph.no_grad():
            return model(rows)[0]

    if threads == 1 or backend.name != "numpy":
        return plain(idx)
    ids = _rows(idx, "idx")
    shards = _shards(len(ids), threads)
    if len(shards) < 2:
        return plain(idx)
    parts = _run(lambda s: plain(ids[s]), shards, threads)
    joined = backend.np.concatenate([p.data for p in parts], axis=0)
    return type(parts[0]).from_op(joined, (), None)
