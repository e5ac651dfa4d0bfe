"""Checkers for notebook 03 (initialisation): ``init_lora`` and ``pissa_init``.

``check_init_lora(fn)`` cannot ask for the library's exact random numbers: any correct way of
drawing A ~ U(-1/sqrt(k), 1/sqrt(k)) from the given generator must pass. So it checks what the
contract fixes: shapes, B exactly zero, every entry of A inside +-1/sqrt(k), the spread of a
large draw against the uniform law (a Kolmogorov-Smirnov distance and the variance), and that
the randomness comes from ``rng`` (same seed, same A; other seed, other A; NumPy's global
generator untouched). The reference wraps the public ``LoRALinear(init="kaiming")``.

``check_pissa_init(fn)`` accepts any sign of each singular pair (an SVD fixes none): it compares
s * B A, the residual and the balance of the two factors, which are the same for every valid
choice. The reference is the public ``LoRALinear(init="pissa")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import backend, nn
from .. import lora as lora_lib
from ._harness import (
    ExerciseError,
    as_array,
    as_items,
    call,
    compare,
    exercise,
    np,
    passed,
    snapshot,
    unchanged,
)

__all__ = ["check_init_lora", "check_pissa_init", "reference_init_lora", "reference_pissa_init"]


# ============================================================================ init_lora


def reference_init_lora(d: int, k: int, r: int, rng) -> tuple:
    """The library's start for an adapter of a (d, k) layer: (A (r, k), B (d, r)), float64.

    ``LoRALinear`` draws from the library's own generator; to honour the contract ("drawn
    from ``rng``") this lends it a state seeded from ``rng`` for the draw and then restores it,
    so the library's random stream is left exactly where it was.
    """
    seed = int(rng.integers(2**63))
    if backend.get_backend() != "numpy":  # a GPU generator has no NumPy state to lend
        bound = 1.0 / math.sqrt(k)  # the same recipe as LoRALinear's "kaiming", on the host
        A = np.random.default_rng(seed).uniform(-bound, bound, size=(r, k))
        return A, np.zeros((d, r))
    generator = backend.rng()
    saved = generator.bit_generator.state
    try:
        generator.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        layer = lora_lib.LoRALinear(nn.Linear(k, d, bias=False, dtype="float64"), r, float(r))
        A, B = backend.to_numpy(layer.A.data), backend.to_numpy(layer.B.data)
    finally:
        generator.bit_generator.state = saved
    return A, B


_INIT_SHAPES = [
    (64, 32, 4, "fc1 of notebook 03: (d, k) = (64, 32), r = 4"),
    (8, 64, 4, "a wide layer (d, k) = (8, 64), r = 4"),
    (10, 7, 3, "a non-square (10, 7) layer, r = 3"),
    (5, 300, 1, "rank 1 on a (5, 300) layer"),
    (3, 3, 3, "r = d = k = 3"),
]
# 262,144 entries of A: enough to see the law, not only the range; d, k and r all differ, so a
# bound of 1/sqrt(d) and one of 1/sqrt(r) give different numbers and are named apart
_BIG = (128, 4096, 64)
_KS_LIMIT = 0.01  # a correct draw exceeds this with probability about 1e-22 at this size


def _named_bound_mistake(bound_seen: float, d: int, k: int, r: int) -> str:
    """Explain a range of A that is not +-1/sqrt(k), from the largest entry seen."""
    known = [
        (
            math.sqrt(6.0 / k),
            "bound sqrt(6/k): that is Kaiming-uniform with a = 0 (He's ReLU "
            "gain); LoRA's A uses a = sqrt(5), gain 1/sqrt(3), so the bound is 1/sqrt(k)",
        ),
        (math.sqrt(3.0 / k), "bound sqrt(3/k): the gain 1/sqrt(3) of a = sqrt(5) is missing"),
        (1.0 / k, "bound 1/k: the bound is 1/sqrt(k), not 1/k"),
        (1.0 / math.sqrt(r), "bound 1/sqrt(r): the fan-in of A (r, k) is k, not r"),
        (1.0 / math.sqrt(d), "bound 1/sqrt(d): the fan-in of A (r, k) is k, not d"),
        (1.0, "entries in (-1, 1): the bound 1/sqrt(k) is missing"),
        (0.5 / math.sqrt(k), "bound 1/(2 sqrt(k)): uniform(-b, b) already spans 2b; no halving"),
    ]
    for value, explanation in known:
        if abs(bound_seen / value - 1) < 0.03 and abs(value * math.sqrt(k) - 1) > 0.05:
            return explanation
    return f"the largest |entry| is {bound_seen:.4g}, while the bound 1/sqrt(k) is {1 / math.sqrt(k):.4g}"


def _excess_kurtosis(values) -> float:
    centred = values - values.mean()
    return float(np.mean(centred**4) / np.mean(centred**2) ** 2 - 3.0)


def _factors(fn: Callable, name: str, case: str, d: int, k: int, r: int, rng) -> tuple:
    """Call ``fn(d, k, r, rng)`` and return (A, B) as host arrays with the contract's shapes."""
    A, B = as_items(call(fn, name, case, d, k, r, rng), 2, name, case, "a pair (A, B)")
    A = as_array(A, name, case)
    B = as_array(B, name, case)
    if A.shape == (d, r) and B.shape == (r, k) and (d, r) != (r, k):
        raise ExerciseError(f"{name}: on {case} you returned (B, A); return (A, B), in that order")
    for label, array, want, flipped in (("A", A, (r, k), (k, r)), ("B", B, (d, r), (r, d))):
        if array.shape == flipped and flipped != want:
            raise ExerciseError(
                f"{name}: {label} has shape {array.shape} on {case}, the transpose of "
                f"{want}: A is (r, k) and B is (d, r), so that B A is (d, k) like W0"
            )
        if array.shape != want:
            raise ExerciseError(
                f"{name}: {label} has shape {array.shape} on {case}; expected {want}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise ExerciseError(
                f"{name}: {label} has dtype {array.dtype} on {case}; expected a float array"
            )
    return A, B


def _check_start(A, B, name: str, case: str, d: int, k: int, r: int) -> None:
    """B exactly zero, A not zero and inside +-1/sqrt(k) (at the output's precision)."""
    if np.any(B != 0):
        raise ExerciseError(
            f"{name}: B is not zero on {case} (largest |entry| {float(np.abs(B).max()):.3g}). "
            "B must start at exactly 0, so that Delta W = B A = 0 and the adapted model is "
            "the pretrained one at step 0: did you draw B at random too?"
        )
    if not np.any(A):
        raise ExerciseError(
            f"{name}: A is all zeros on {case}. With A = 0 and B = 0 both gradients vanish "
            "(a saddle point that training never leaves): A must be random"
        )
    bound = 1.0 / math.sqrt(k)
    slack = 1e-6 if A.dtype == np.float32 else 1e-12
    largest = float(np.abs(A.astype(np.float64)).max())
    if largest > bound * (1 + slack):
        if _excess_kurtosis(A.astype(np.float64).ravel()) > -0.6 and A.size >= 1000:
            raise ExerciseError(
                f"{name}: A's entries go beyond +-1/sqrt(k) = +-{bound:.4g} on {case} "
                f"(largest {largest:.4g}) and look bell-shaped: did you draw a Gaussian? "
                "Kaiming-uniform is a uniform law on (-1/sqrt(k), 1/sqrt(k))"
            )
        raise ExerciseError(
            f"{name}: A's entries go beyond +-1/sqrt(k) = +-{bound:.4g} on {case}: "
            + _named_bound_mistake(largest, d, k, r)
        )
    if r > 1 and np.all(A == A[:1]):
        raise ExerciseError(
            f"{name}: all {r} rows of A are equal on {case}: draw every entry independently"
        )


def _check_law(A, name: str, case: str, d: int, k: int, r: int) -> None:
    """A large draw of A against U(-1/sqrt(k), 1/sqrt(k)): KS distance and variance."""
    u = np.sort(A.astype(np.float64).ravel() * math.sqrt(k))  # should be U(-1, 1)
    n = u.size
    cdf = (u + 1.0) / 2.0
    ks = float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))
    if ks <= _KS_LIMIT and abs(u.var() / (1.0 / 3.0) - 1) < 0.02:
        return
    largest = float(np.abs(u).max()) / math.sqrt(k)
    if _excess_kurtosis(u) > -0.6:
        hint = "the entries look bell-shaped: did you draw a Gaussian instead of a uniform law?"
    elif largest < 0.97 / math.sqrt(k):
        hint = _named_bound_mistake(largest, d, k, r)
    else:
        hint = "the entries should spread evenly over (-1/sqrt(k), 1/sqrt(k)), as rng.uniform does"
    raise ExerciseError(
        f"{name}: {n:,} entries of A on {case} do not follow U(-1/sqrt(k), 1/sqrt(k)) "
        f"(Kolmogorov-Smirnov distance {ks:.3g}, std {u.std() / math.sqrt(k):.4g}, "
        f"expected {1 / math.sqrt(3 * k):.4g}): {hint}"
    )


def _check_rng_used(fn: Callable, name: str, d: int, k: int, r: int) -> int:
    """Same seed -> same A, other seed -> other A, NumPy's global generator untouched."""
    case = f"(d, k, r) = {(d, k, r)} called twice"
    saved = np.random.get_state()  # the caller's global stream, given back untouched below
    try:
        np.random.seed(20_231_203)
        before = np.random.get_state()
        first, _ = _factors(fn, name, case, d, k, r, np.random.default_rng(1234))
        after = np.random.get_state()
        same, _ = _factors(fn, name, case, d, k, r, np.random.default_rng(1234))
        other, _ = _factors(fn, name, case, d, k, r, np.random.default_rng(4321))
    finally:
        np.random.set_state(saved)
    touched_global = before[0] != after[0] or not (
        np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    )
    if not np.array_equal(first, same):
        raise ExerciseError(
            f"{name}: two generators with the same seed gave different A: draw from the `rng` "
            "argument (rng.uniform(...)), not from np.random or another generator"
        )
    if np.array_equal(first, other):
        raise ExerciseError(
            f"{name}: generators with different seeds gave the same A: the `rng` argument is "
            "ignored; draw A with rng.uniform(...)"
        )
    if touched_global:
        raise ExerciseError(
            f"{name} used NumPy's global random generator (np.random.*): draw from the `rng` "
            "argument instead, so that the caller's seed decides A"
        )
    return 3


@exercise("init_lora", reference_init_lora)
def check_init_lora(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(d, k, r, rng)`` -> (A (r, k), B (d, r)): A ~ U(+-1/sqrt(k)) from ``rng``, B = 0.

    Any correct draw passes (any method or order of drawing, float32 or float64): the checker
    tests the law of A on a large draw, not the library's exact numbers.
    """
    name = "init_lora"
    d, k, r = _BIG  # first, so that a wrong law is named from 262,144 entries, not a few
    case = f"a large draw, d, k, r = {d}, {k}, {r}"
    A, B = _factors(fn, name, case, d, k, r, np.random.default_rng(99))
    _check_start(A, B, name, case, d, k, r)
    _check_law(A, name, case, d, k, r)
    n_checks = 2
    for seed, (d, k, r, what) in enumerate(_INIT_SHAPES):
        case = f"d, k, r = {d}, {k}, {r} ({what})"
        A, B = _factors(fn, name, case, d, k, r, np.random.default_rng(seed))
        _check_start(A, B, name, case, d, k, r)
        n_checks += 1
    n_checks += _check_rng_used(fn, name, 16, 32, 4)
    passed(name, n_checks, quiet)


# ============================================================================ pissa_init


def reference_pissa_init(W0, r: int, scaling: float) -> tuple:
    """The library's PiSSA start for a frozen (d, k) weight: (A (r, k), B (d, r), residual (d, k)).

    Wraps ``LoRALinear(base, r, alpha=scaling * r, init="pissa")`` on a float64 copy of W0
    (PiSSA draws nothing at random).
    """
    W0 = np.asarray(W0, dtype=np.float64)
    d, k = W0.shape
    base = nn.Linear(k, d, bias=False, dtype="float64")
    base.weight.data = backend.xp.asarray(W0.copy())
    layer = lora_lib.LoRALinear(base, r, float(scaling) * r, init="pissa")
    return tuple(backend.to_numpy(a) for a in (layer.A.data, layer.B.data, layer.base.weight.data))


_PISSA_CASES = [
    ((64, 32), 4, 2.0, "fc1 of notebook 03: (64, 32), r = 4, s = 2"),
    ((8, 64), 4, 2.0, "a wide (8, 64) weight, r = 4, s = 2"),
    ((20, 12), 3, 1.0, "a (20, 12) weight, r = 3, s = 1"),
    ((12, 20), 1, 0.25, "rank 1 of a (12, 20) weight, s = 0.25"),
    ((16, 16), 5, 4.0, "a square (16, 16) weight, r = 5, s = 4"),
]


@exercise("pissa_init", reference_pissa_init)
def check_pissa_init(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(W0, r, scaling)`` -> (A (r, k), B (d, r), W_res (d, k)), PiSSA's start.

    With W0 = U S V^T: A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s), W_res = W0 - s B A.
    Every sign choice of the singular pairs passes (compared: s B A, W_res, A A^T and B^T B).
    """
    name = "pissa_init"
    rng = np.random.default_rng(3)
    n_checks = 0
    for shape, r, s, what in _PISSA_CASES:
        case = f"W0 {shape}, r = {r}, scaling = {s:g} ({what})"
        W0 = rng.standard_normal(shape) / math.sqrt(shape[1])
        d, k = shape
        A_ref, B_ref, res_ref = reference_pissa_init(W0, r, s)
        given = W0.copy()
        before = snapshot(given)
        out = call(fn, name, case, given, r, s)
        unchanged(name, case, ("W0",), before, [given])
        A, B, res = (as_array(a, name, case) for a in as_items(out, 3, name, case, "(A, B, W_res)"))
        for label, array, want in (("A", A, (r, k)), ("B", B, (d, r)), ("W_res", res, (d, k))):
            if array.shape != want:
                flipped = " (the transpose)" if array.shape == want[::-1] else ""
                raise ExerciseError(
                    f"{name}: {label} has shape {array.shape}{flipped} on {case}; expected {want}"
                )
        A64, B64 = A.astype(np.float64), B.astype(np.float64)
        U, S, Vt = np.linalg.svd(W0, full_matrices=False)
        top = U[:, :r] * S[:r] @ Vt[:r]
        product_mistakes = [
            (
                "s * B A is W0's best rank-r part times s: divide the singular values by s "
                "(sqrt(S_r / s) in each factor)",
                s * top,
            ),
            (
                "s * B A is W0's best rank-r part divided by s: the factors hold sqrt(S_r / s), "
                "not S_r / s",
                top / s,
            ),
            (
                "you took the smallest r singular directions; PiSSA takes the top r",
                (U[:, -r:] * S[-r:]) @ Vt[-r:],
            ),
        ]
        out_dtype = np.result_type(A.dtype, B.dtype)
        compare(
            (s * B64 @ A64).astype(out_dtype),
            s * B_ref @ A_ref,
            name,
            case,
            product_mistakes,
            "s * B A",
        )
        res_mistakes = [
            (
                "W_res is W0 unchanged: subtract the part the adapter now holds, "
                "W_res = W0 - s * B A, or the layer's output changes at step 0",
                W0,
            ),
            ("W_res = W0 - B A: the scale s is missing in the subtraction", W0 - B64 @ A64),
        ]
        compare(res, res_ref, name, case, res_mistakes, "W_res")
        gram_A, gram_B = A64 @ A64.T, B64.T @ B64
        want = np.sort(S[:r] / s)[::-1]
        off_A = gram_A - np.diag(np.diag(gram_A))
        balanced = np.sort(np.diag(gram_A))[::-1]
        unbalanced = np.allclose(np.sort(np.diag(gram_B)), 1, atol=1e-4) or np.allclose(
            np.sort(np.diag(gram_A)), 1, atol=1e-4
        )
        tol = 1e-4 if np.float32 in (A.dtype, B.dtype) else 1e-8
        if unbalanced and not np.allclose(balanced, want, rtol=tol, atol=tol):
            raise ExerciseError(
                f"{name}: wrong split on {case}: s * B A is right, but one factor holds all of "
                "sqrt(S_r / s) squared and the other is orthonormal. PiSSA splits evenly: "
                "A = sqrt(S_r / s) V_r^T and B = U_r sqrt(S_r / s)"
            )
        if not (
            np.allclose(balanced, want, rtol=tol, atol=tol)
            and np.allclose(np.diag(gram_B)[np.argsort(-np.diag(gram_A))], want, rtol=tol, atol=tol)
            and np.abs(off_A).max() < tol * max(1.0, want.max())
        ):
            raise ExerciseError(
                f"{name}: on {case} the rows of A (and columns of B) should be orthogonal with "
                f"squared norms S_r / s = {np.array2string(want, precision=3)}; yours have "
                f"{np.array2string(balanced, precision=3)}"
            )
        n_checks += 3
    passed(name, n_checks, quiet)
