"""Checker for notebook 05 (§7.3 of the LoRA paper): how much of W lives in the top-r singular
subspaces of another matrix M, ||U^T W V||_F with U (d, r) and V (k, r) M's top left- and
right-singular vectors.

The reference is the library's :func:`lora_np.analysis.projection_norm`. The cases have tall and
wide matrices (d ≠ k, where using U on both sides cannot run), one square pair (where it runs
and gives a wrong number), r = 1 and r = min(d, k), M = W (the answer is then
sqrt(σ1² + ... + σr²) of W), a low-rank M, and a float32 pair. Every M has well separated
singular values, so its top-r subspaces are unique and any correct method agrees.
"""

from __future__ import annotations

from .. import analysis
from ._harness import (
    ExerciseError,
    as_array,
    call_explained,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = ["check_projection_norm"]


def _with_spectrum(rng, d: int, k: int, spectrum):
    """A (d, k) matrix with the given singular values and random singular vectors."""
    U, _ = np.linalg.qr(rng.standard_normal((d, len(spectrum))))
    V, _ = np.linalg.qr(rng.standard_normal((k, len(spectrum))))
    return (U * np.asarray(spectrum, dtype=np.float64)) @ V.T


def _cases():
    """(W, M, r, description) per case; the same matrices on every call (own generator)."""
    rng = np.random.default_rng(20260507)
    tall_M = _with_spectrum(rng, 12, 8, [6.0, 4.0, 2.5, 1.6, 1.0, 0.6, 0.3, 0.1])
    tall_W = rng.standard_normal((12, 8))
    wide_M = _with_spectrum(rng, 8, 12, [5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2, 0.1])
    square_M = _with_spectrum(rng, 10, 10, np.geomspace(8.0, 0.2, 10))
    square_W = rng.standard_normal((10, 10))
    low_rank_M = _with_spectrum(rng, 9, 11, [3.0, 1.0])  # rank 2
    small_W = rng.standard_normal((9, 7)).astype(np.float32)
    small_M = _with_spectrum(rng, 9, 7, [4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1]).astype(np.float32)
    yield tall_W, tall_M, 3, "W, M (12, 8) at r = 3"
    yield rng.standard_normal((8, 12)), wide_M, 2, "W, M (8, 12) at r = 2"
    yield square_W, square_M, 4, "a square W, M (10, 10) at r = 4"
    yield tall_W, tall_M, 1, "W, M (12, 8) at r = 1"
    yield tall_W, tall_M, 8, "W, M (12, 8) at r = 8 = min(d, k)"
    yield tall_W, tall_W.copy(), 3, "M = W (12, 8) at r = 3 (the most W holds in 3 directions)"
    yield rng.standard_normal((9, 11)), low_rank_M, 2, "a rank-2 M (9, 11) at r = 2"
    yield small_W, small_M, 3, "float32 W, M (9, 7) at r = 3"


def _norm(a) -> float:
    return float(np.sqrt(np.sum(np.asarray(a, dtype=np.float64) ** 2)))


def _mistakes(W, M, r: int) -> list:
    """(explanation, the number a classic wrong version gives) on this case (float64)."""
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    Uw, _, Vtw = np.linalg.svd(W, full_matrices=False)
    Uf, _, Vtf = np.linalg.svd(M)  # full: (d, d), (k, k)
    Ur, Vr = U[:, :r], Vt[:r].T
    d, k = M.shape
    square = d == k
    wrong = [
        (
            "It matches the top directions of W itself: take the SVD of M, the matrix whose "
            "strongest directions W is projected on (the second argument).",
            _norm(Uw[:, :r].T @ W @ Vtw[:r].T),
        ),
        (
            "It matches M projected on W's directions: the arguments are the other way round; "
            "project W (the first) on the top directions of M (the second).",
            _norm(Uw[:, :r].T @ M @ Vtw[:r].T),
        ),
        (
            "It matches the first r COLUMNS of Vt: np.linalg.svd returns V transposed, so the "
            "right-singular vectors are the ROWS of Vt; V = Vt[:r].T.",
            _norm(Ur.T @ W @ Vt[:, :r]) if Vt.shape[0] == k else None,
        ),
        (
            "It matches the BOTTOM r singular directions: np.linalg.svd sorts them strongest "
            "first, so the top r are the first r.",
            _norm(Uf[:, -r:].T @ W @ Vtf[-r:].T),
        ),
        (
            "It matches the BOTTOM r singular directions: np.linalg.svd sorts them strongest "
            "first, so the top r are the first r.",
            _norm(U[:, -r:].T @ W @ Vt[-r:].T),
        ),
        (
            "It matches the squared norm: the measure is ||U^T W V||_F itself, not its square "
            "(the energy).",
            _norm(Ur.T @ W @ Vr) ** 2,
        ),
        (
            "It matches W projected on one side only (U^T W): project the columns on M's top "
            "left-singular directions AND the rows on its top right-singular ones.",
            _norm(Ur.T @ W),
        ),
        (
            "It matches W projected on one side only (W V): project the columns on M's top "
            "left-singular directions AND the rows on its top right-singular ones.",
            _norm(W @ Vr),
        ),
        (
            "It matches the spectral norm (the largest singular value) of U^T W V: the "
            "measure is the Frobenius norm, the root of the sum of squares of every entry.",
            float(np.linalg.norm(Ur.T @ W @ Vr, 2)),
        ),
        (
            "It matches one direction too many (r + 1): U[:, :r] and Vt[:r] keep r.",
            _norm(U[:, : r + 1].T @ W @ Vt[: r + 1].T) if r < min(d, k) else None,
        ),
        (
            "It matches one direction too few (r - 1): U[:, :r] and Vt[:r] keep r.",
            _norm(U[:, : r - 1].T @ W @ Vt[: r - 1].T) if r > 1 else None,
        ),
        (
            "It matches the directions weighted by M's singular values: U and V have unit "
            "columns; leave S out.",
            _norm((Ur * S[:r]).T @ W @ (Vr * S[:r])),
        ),
    ]
    if square:  # only here can the same vectors stand on both sides
        wrong += [
            (
                "It matches U on both sides (U^T W U): the columns of W live in R^d and are "
                "projected with U, its rows live in R^k and are projected with V (rows of Vt).",
                _norm(Ur.T @ W @ Ur),
            ),
            (
                "It matches V on both sides (V^T W V): the columns of W live in R^d and are "
                "projected with U, its rows live in R^k and are projected with V (rows of Vt).",
                _norm(Vr.T @ W @ Vr),
            ),
        ]
    return wrong


def _call_explained(fn, name: str, case: str, *args):
    """``call``, with a hint when a product of mismatched shapes suggests the wrong vectors."""
    return call_explained(
        fn,
        name,
        case,
        *args,
        shape_hint=". W is (d, k) with d ≠ k here: U (d, r) goes on its left as U^T, V (k, r) on "
        "its right, with V = Vt[:r].T (the rows of Vt are the right-singular vectors)",
    )


@exercise("projection_norm", analysis.projection_norm)
def check_projection_norm(fn, *, quiet: bool = False) -> None:
    """Check ``fn(W, M, r)`` -> ||U^T W V||_F, with U (d, r) and V (k, r) the top-r left- and
    right-singular vectors of M; W and M are (d, k) and 1 <= r <= min(d, k).

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise. Any correct method passes (U^T W V, the full-size projection
    U U^T W V V^T, loops over pairs of directions, float32 or float64 arithmetic).
    """
    name = "projection_norm"
    n_cases = 0
    for W, M, r, case in _cases():
        W64, M64 = W.astype(np.float64), M.astype(np.float64)
        want = np.asarray(analysis.projection_norm(W64.copy(), M64.copy(), r))  # first
        mistakes = [
            (why, None if value is None else np.asarray(value))
            for why, value in _mistakes(W64, M64, r)
        ]
        given = [W.copy(), M.copy()]
        before = snapshot(*given)
        got = _call_explained(fn, name, case, *given, r)
        unchanged(name, case, ("W", "M"), before, given)
        array = as_array(got, name, case)
        if array.size != 1:
            raise ExerciseError(
                f"{name} returned an array of shape {array.shape} on {case}; expected one "
                "number, the Frobenius norm of U^T W V (np.linalg.norm of it)"
            )
        compare(array.reshape(()), want, name, case, mistakes, "norm", precision_of(W, M))
        n_cases += 1
    passed(name, n_cases, quiet)
