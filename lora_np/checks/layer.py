"""Checkers for notebook 02 (the LoRA layer): its forward pass, the gradients of its low-rank
path, and merging the update into the frozen weight.

The references are the library's own: the fused op :func:`lora_np.functional.lora_linear` for
the forward, the engine's backward through that op for the gradients, and
:meth:`lora_np.lora.LoRALinear.merge` for the merge. Shapes are chosen so that d ≠ k, r ≠ k
and r ≠ d in most cases (a missing transpose then fails loudly), plus one square W0 (d = k)
where a missing transpose runs and gives wrong numbers, which the checker names.
"""

from __future__ import annotations

from .. import backend, functional, lora, nn
from ..autograd import Tensor, no_grad
from ._harness import (
    ExerciseError,
    as_array,
    as_items,
    call_explained,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = [
    "check_lora_forward",
    "check_lora_grads",
    "check_merge",
    "lora_forward_reference",
    "lora_grads_reference",
    "merge_reference",
]


# ----------------------------------------------------------------------------- references


def lora_forward_reference(x, W0, b, A, B, scaling):
    """h = x W0^T + b + scaling · (x A^T) B^T with the library's fused op.

    Args:
        x: (n, k); W0: (d, k); b: (d,) or None; A: (r, k); B: (d, r); scaling: a number.
    Returns:
        h: (n, d), a NumPy array of the inputs' dtype.
    """
    with no_grad():
        h = functional.lora_linear(
            Tensor(x),
            Tensor(W0),
            None if b is None else Tensor(b),
            Tensor(A),
            Tensor(B),
            float(scaling),
        )
    return h.numpy()


def lora_grads_reference(x, A, B, scaling, grad_h):
    """(grad_A (r, k), grad_B (d, r)) of the LoRA term, summed over the batch, by the engine.

    Runs the fused op forward (with a zero W0, which does not change these gradients) and
    backward from ``grad_h`` (n, d) = dL/dh.
    """
    d, k = np.shape(B)[0], np.shape(x)[1]
    A_t = Tensor(A, requires_grad=True)
    B_t = Tensor(B, requires_grad=True)
    W0 = Tensor(np.zeros((d, k), dtype=np.result_type(x, A, B)))
    h = functional.lora_linear(Tensor(x), W0, None, A_t, B_t, float(scaling))
    h.backward(Tensor(np.asarray(grad_h, dtype=h.numpy().dtype)))
    return backend.to_numpy(A_t.grad), backend.to_numpy(B_t.grad)


def merge_reference(W0, A, B, scaling):
    """W0 + scaling · B A as a new array, through ``LoRALinear.merge()``; W0 is left unchanged.

    Args:
        W0: (d, k); A: (r, k); B: (d, r); scaling: a finite number.
    Returns:
        (d, k), a NumPy array of W0's dtype.
    """
    W0 = np.asarray(W0)
    d, k = W0.shape
    r = np.shape(A)[0]
    generator = backend.rng()
    saved = getattr(getattr(generator, "bit_generator", None), "state", None)
    base = nn.Linear(k, d, bias=False, dtype=str(W0.dtype))  # draws a weight we overwrite
    layer = lora.LoRALinear(base, r=r, alpha=float(r))  # scaling alpha / r = 1 ...
    if saved is not None:  # building the layer must not move the caller's random stream
        generator.bit_generator.state = saved
    layer.set_scale(layer.active_adapter, float(scaling))  # ... times the factor: `scaling`
    base.weight.data = backend.xp.asarray(W0.copy())
    layer.A.data = backend.xp.asarray(np.asarray(A, dtype=W0.dtype))
    layer.B.data = backend.xp.asarray(np.asarray(B, dtype=W0.dtype))
    layer.merge()
    return backend.to_numpy(layer.base.weight.data)


# ----------------------------------------------------------------------------- shared


def _call_explained(fn, name: str, case: str, *args):
    """``call``, with a hint added when the learner's code hit a shape or a None it did not expect."""
    return call_explained(
        fn,
        name,
        case,
        *args,
        shape_hint=". A shape mismatch in a product usually means a missing or extra transpose: "
        "write the shape of every factor next to it",
        none_hint=". b can be None (no bias): add it only when it is given",
    )


def _wrong_shape_hint(got, name: str, case: str, want_shape, what: str):
    """A clear message when an output (a host array) has the transposed shape of the expected one."""
    shape = tuple(got.shape)
    if len(want_shape) == 2 and shape == tuple(reversed(want_shape)) and shape != want_shape:
        raise ExerciseError(
            f"{name} returned {what} of shape {shape} on {case}; expected {tuple(want_shape)}: "
            "it is transposed"
        )


# ----------------------------------------------------------------------------- lora_forward

# (n, d, k, r, bias, scaling, dtype, description)
_FORWARD_CASES = [
    (4, 6, 6, 2, True, 2.5, "float64", "a square W0 (d = k = 6), r = 2, n = 4, scaling 2.5"),
    (5, 7, 5, 3, True, 0.75, "float64", "d = 7, k = 5, r = 3, n = 5, scaling 0.75"),
    (3, 5, 8, 2, False, 4.0, "float64", "d = 5, k = 8, r = 2, n = 3, b = None, scaling 4"),
    (1, 4, 6, 1, True, 1.0, "float64", "a batch of one, d = 4, k = 6, r = 1, scaling 1"),
    (6, 6, 9, 4, True, 1.5, "float32", "float32 inputs, d = 6, k = 9, r = 4, n = 6"),
]


def _forward_inputs():
    rng = np.random.default_rng(20260202)
    for n, d, k, r, has_bias, scaling, dtype, description in _FORWARD_CASES:
        x = rng.standard_normal((n, k)).astype(dtype)
        W0 = rng.standard_normal((d, k)).astype(dtype)
        b = rng.standard_normal(d).astype(dtype) if has_bias else None
        A = rng.standard_normal((r, k)).astype(dtype)
        B = rng.standard_normal((d, r)).astype(dtype)
        yield (x, W0, b, A, B, scaling), description


def _wrong_forwards(x, W0, b, A, B, s) -> list:
    """The outputs of the classic wrong versions (float64), where their shapes allow them."""
    base = x @ W0.T
    bias = 0.0 if b is None else b
    low = (x @ A.T) @ B.T
    wrong = [
        ("Your output is off by the factor `scaling`: did you apply alpha / r?", base + bias + low),
        (
            "It matches scaling applied twice (scaling**2): multiply the low-rank path once.",
            base + bias + s * s * low,
        ),
        (
            "It matches (scaling / r) on the low-rank path: `scaling` is already alpha / r, so "
            "do not divide by r again.",
            base + bias + s / A.shape[0] * low,
        ),
        (
            "It matches scaling applied to the whole output: only the low-rank path is scaled, "
            "x W0^T + b stays as it is.",
            s * (base + bias + low),
        ),
    ]
    if b is not None:
        wrong += [
            ("The bias b is missing: add b (d,) to every row.", base + s * low),
            ("The bias b is added twice.", base + 2 * bias + s * low),
        ]
    if W0.shape[0] == W0.shape[1]:  # a square W0 lets x @ W0 and x @ (B A) run
        wrong += [
            (
                "It matches x @ W0: F.linear's convention is x W0^T (W0 is (d, k)).",
                x @ W0 + bias + s * low,
            ),
            (
                "It matches x @ B @ A (the update not transposed, or A and B swapped): the low-"
                "rank path is x A^T B^T, A first squeezing k numbers down to r.",
                base + bias + s * (x @ B @ A),
            ),
        ]
    return wrong


@exercise("lora_forward", lora_forward_reference)
def check_lora_forward(fn, *, quiet: bool = False) -> None:
    """Check ``fn(x, W0, b, A, B, scaling)`` -> h (n, d) = x W0^T + b + scaling · (x A^T) B^T."""
    name = "lora_forward"
    labels = ("x", "W0", "b", "A", "B", "scaling")
    n_cases = 0
    for args, case in _forward_inputs():
        args64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        want = lora_forward_reference(*args64)  # first, from private float64 copies
        mistakes = _wrong_forwards(*args64)
        given = [np.copy(a) if isinstance(a, np.ndarray) else a for a in args]
        before = snapshot(*given)
        got = _call_explained(fn, name, case, *given)
        unchanged(name, case, labels, before, given)
        got = as_array(got, name, case)
        _wrong_shape_hint(got, name, case, want.shape, "h")
        compare(got, want, name, case, mistakes, "output h", precision_of(*args))
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- lora_grads

# (n, d, k, r, scaling, dtype, description)
_GRAD_CASES = [
    (4, 6, 5, 2, 2.5, "float64", "n = 4, d = 6, k = 5, r = 2, scaling 2.5"),
    (5, 4, 7, 3, 0.5, "float64", "n = 5, d = 4, k = 7, r = 3, scaling 0.5"),
    (1, 5, 3, 2, 3.0, "float64", "a batch of one, d = 5, k = 3, r = 2, scaling 3"),
    (6, 7, 9, 4, 1.5, "float32", "float32 inputs, n = 6, d = 7, k = 9, r = 4"),
]


def _grad_inputs():
    rng = np.random.default_rng(20260303)
    for n, d, k, r, scaling, dtype, description in _GRAD_CASES:
        x = rng.standard_normal((n, k)).astype(dtype)
        A = rng.standard_normal((r, k)).astype(dtype)
        B = rng.standard_normal((d, r)).astype(dtype)
        grad_h = rng.standard_normal((n, d)).astype(dtype)
        yield (x, A, B, scaling, grad_h), description


def _wrong_grads(x, A, B, s, g) -> tuple:
    """(mistakes for grad_A, mistakes for grad_B): the classic wrong versions' answers."""
    n = x.shape[0]

    def mistakes(unscaled):
        return [
            (
                "Your gradient is off by the factor `scaling`: the forward multiplied the "
                "low-rank path by it, so its gradients carry it too.",
                unscaled,
            ),
            ("It matches scaling applied twice (scaling**2).", s * s * unscaled),
            (
                "It matches the gradient AVERAGED over the batch (divided by n): grad_h already "
                "carries any 1/n of the loss, so sum the per-token outer products.",
                s * unscaled / n if n > 1 else None,
            ),
        ]

    grad_A = (g @ B).T @ x  # (r, k), without the scaling
    grad_B = g.T @ (x @ A.T)  # (d, r), without the scaling
    return mistakes(grad_A), mistakes(grad_B)


@exercise("lora_grads", lora_grads_reference)
def check_lora_grads(fn, *, quiet: bool = False) -> None:
    """Check ``fn(x, A, B, scaling, grad_h)`` -> (grad_A (r, k), grad_B (d, r)), summed over n."""
    name = "lora_grads"
    labels = ("x", "A", "B", "scaling", "grad_h")
    n_cases = 0
    for args, case in _grad_inputs():
        x, A, B, s, g = args
        args64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        want_A, want_B = lora_grads_reference(*args64)  # first, from private float64 copies
        mistakes_A, mistakes_B = _wrong_grads(*args64)
        given = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        before = snapshot(*given)
        got = _call_explained(fn, name, case, *given)
        unchanged(name, case, labels, before, given)
        got_A, got_B = as_items(
            got, 2, name, case, "a pair (grad_A, grad_B), e.g. `return grad_A, grad_B`"
        )
        got_A = as_array(got_A, name, case + " (grad_A)")
        got_B = as_array(got_B, name, case + " (grad_B)")
        shape_A, shape_B = A.shape, B.shape
        if got_A.shape == shape_B and got_B.shape == shape_A:
            raise ExerciseError(
                f"{name} returned (grad_B, grad_A) on {case}: return them in the order "
                "(grad_A, grad_B), each shaped like its matrix"
            )
        _wrong_shape_hint(got_A, name, case, shape_A, "grad_A")
        _wrong_shape_hint(got_B, name, case, shape_B, "grad_B")
        precision = precision_of(*args)
        compare(got_A, want_A, name, case, mistakes_A, "grad_A", precision)
        compare(got_B, want_B, name, case, mistakes_B, "grad_B", precision)
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- merge

# (d, k, r, scaling, dtype, description)
_MERGE_CASES = [
    # scaling 3 with r = 2: scaling / r differs from 1 (at scaling = r it would read as "no scale")
    (6, 6, 2, 3.0, "float64", "a square W0 (d = k = 6), r = 2, scaling 3"),
    (7, 4, 3, 0.5, "float64", "d = 7, k = 4, r = 3, scaling 0.5"),
    (3, 8, 1, 16.0, "float64", "d = 3, k = 8, r = 1, scaling 16"),
    (5, 9, 2, 1.5, "float32", "float32 weights, d = 5, k = 9, r = 2, scaling 1.5"),
]


def _merge_inputs():
    rng = np.random.default_rng(20260404)
    for d, k, r, scaling, dtype, description in _MERGE_CASES:
        W0 = rng.standard_normal((d, k)).astype(dtype)
        A = rng.standard_normal((r, k)).astype(dtype)
        B = rng.standard_normal((d, r)).astype(dtype)
        yield (W0, A, B, scaling), description


def _wrong_merges(W0, A, B, s) -> list:
    delta = B @ A
    wrong = [
        ("Your update is off by the factor `scaling`: merge W0 + scaling · B A.", W0 + delta),
        ("It matches scaling applied twice (scaling**2).", W0 + s * s * delta),
        (
            "It matches W0 + (scaling / r) · B A: `scaling` is already alpha / r, so do not "
            "divide by r again.",
            W0 + s / A.shape[0] * delta,
        ),
        (
            "It matches the update scaling · B A alone: merge returns the whole new weight "
            "W0 + scaling · B A.",
            s * delta,
        ),
        ("It matches W0 - scaling · B A: merging adds the update.", W0 - s * delta),
    ]
    if W0.shape[0] == W0.shape[1]:
        wrong.append(
            (
                "It matches W0 + scaling · (B A)^T = W0 + scaling · A^T B^T: the update is "
                "B (d, r) @ A (r, k), in that order.",
                W0 + s * delta.T,
            )
        )
        wrong.append(
            (
                "It matches the merged weight transposed: keep W0's (d, k) layout.",
                (W0 + s * delta).T,
            )
        )
    return wrong


@exercise("merge", merge_reference)
def check_merge(fn, *, quiet: bool = False) -> None:
    """Check ``fn(W0, A, B, scaling)`` -> W0 + scaling · B A as a new array, W0 unchanged."""
    name = "merge"
    n_cases = 0
    for args, case in _merge_inputs():
        W0, A, B, s = args
        args64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        want = merge_reference(*args64)  # first, from private float64 copies
        mistakes = _wrong_merges(*args64)
        W0_given, A_given, B_given = W0.copy(), A.copy(), B.copy()
        got = call_explained(
            fn, name, case, W0_given, A_given, B_given, s,
            shape_hint=". The update is B (d, r) @ A (r, k): check the order of the factors",
        )  # fmt: skip
        if not np.array_equal(W0_given, W0) or W0_given.shape != W0.shape:
            raise ExerciseError(
                f"{name} changed W0 in place on {case}: the frozen weight must stay as it was "
                "(write W0 + ..., not W0 += ...; or start from W0.copy())"
            )
        if got is W0_given or (isinstance(got, np.ndarray) and np.shares_memory(got, W0_given)):
            raise ExerciseError(
                f"{name} returned W0 itself (or a view of it) on {case}: return a new array"
            )
        if not (np.array_equal(A_given, A) and np.array_equal(B_given, B)):
            raise ExerciseError(f"{name} changed A or B in place on {case}: leave them as given")
        got = as_array(got, name, case)
        _wrong_shape_hint(got, name, case, want.shape, "a weight")
        compare(got, want, name, case, mistakes, "merged weight", precision_of(W0, A, B))
        n_cases += 1
    passed(name, n_cases, quiet)
