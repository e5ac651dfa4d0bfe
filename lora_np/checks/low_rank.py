"""Checkers for notebook 01 (low-rank decomposition): the rank of a matrix in floating point,
the best rank-r approximation of a matrix and the error it leaves, all read off the SVD
(Eckart–Young).

The library's :func:`lora_np.analysis.best_rank_approximation` and
:func:`lora_np.analysis.eckart_young_error` are the reference answers. Every case uses a
non-square matrix (d > k and d < k), so a factor used the wrong way round cannot hide behind a
square shape; the edge ranks r = 0 (the zero matrix) and r = min(d, k) (M itself) are included.
``numerical_rank``'s reference counts the library's :func:`lora_np.analysis.singular_values`
above ``rtol`` times the largest; its cases are built from known singular values, none of them
near the threshold, so any correct count agrees exactly.
"""

from __future__ import annotations

from .. import analysis
from ._harness import (
    ExerciseError,
    as_array,
    as_whole_number,
    call,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = [
    "check_best_rank_approximation",
    "check_eckart_young_error",
    "check_numerical_rank",
    "numerical_rank_reference",
]

# (d, k, r, dtype, description): d > k and d < k, r from 0 to min(d, k), one float32 case
_CASES = [
    (7, 5, 2, "float64", "a 7×5 matrix (d > k) with r = 2"),
    (4, 9, 3, "float64", "a 4×9 matrix (d < k) with r = 3"),
    (6, 6, 1, "float64", "a 6×6 matrix with r = 1"),
    (5, 8, 0, "float64", "a 5×8 matrix with r = 0"),
    (6, 4, 4, "float64", "a 6×4 matrix with r = min(d, k) = 4"),
    (8, 6, 2, "float32", "a float32 8×6 matrix with r = 2"),
]


def _matrices():
    """(M, r, description) per case; the same matrices on every call (own generator)."""
    rng = np.random.default_rng(20260101)
    for d, k, r, dtype, description in _CASES:
        yield rng.standard_normal((d, k)).astype(dtype), r, description


def _layers(U, S, Vt, keep) -> np.ndarray:
    """sum over i in ``keep`` of S[i] u_i v_i^T, shape (d, k) (zero when ``keep`` is empty)."""
    keep = list(keep)
    return (U[:, keep] * S[keep]) @ Vt[keep]


def _wrong_approximations(M64, r: int) -> list:
    """The answers that the classic wrong versions give on M (float64)."""
    U, S, Vt = np.linalg.svd(M64, full_matrices=False)
    d, k = M64.shape
    n = min(d, k)
    best = _layers(U, S, Vt, range(r))
    wrong = [
        (
            "It matches the top r + 1 layers: keep S[:r], U[:, :r] and Vt[:r] (r layers, "
            "indices 0 to r - 1).",
            _layers(U, S, Vt, range(r + 1)) if r < n else None,
        ),
        (
            "It matches the top r - 1 layers: one layer is missing (Python slices such as "
            "S[:r] already stop before index r).",
            _layers(U, S, Vt, range(r - 1)) if r >= 1 else None,
        ),
        (
            "It matches the r layers with the SMALLEST singular values: np.linalg.svd sorts "
            "them largest first (np.linalg.eigh sorts eigenvalues smallest first).",
            _layers(U, S, Vt, range(n - r, n)),
        ),
        (
            "It matches U[:, :r] @ Vt[:r] without the singular values: each layer is "
            "sigma_i u_i v_i^T, so scale the columns of U (or the rows of Vt) by S[:r].",
            U[:, :r] @ Vt[:r],
        ),
        (
            "It matches the leftover M - M_r: return the kept part M_r, not what it misses.",
            M64 - best,
        ),
    ]
    if n == k:  # Vt.T[:r] has the shape of Vt[:r]: rows of V instead of rows of V^T
        wrong.append(
            (
                "It uses rows of V where rows of V^T belong: np.linalg.svd returns V^T (Vt), "
                "whose row i is v_i; take Vt[:r], not Vt.T[:r].",
                (U[:, :r] * S[:r]) @ Vt.T[:r],
            )
        )
    if n == d:  # U.T[:, :r] has the shape of U[:, :r]
        wrong.append(
            (
                "It uses U^T where U belongs: the left singular vectors u_i are the COLUMNS of "
                "U, so take U[:, :r].",
                (U.T[:, :r] * S[:r]) @ Vt[:r],
            )
        )
    return wrong


@exercise("best_rank_approximation", analysis.best_rank_approximation)
def check_best_rank_approximation(fn, *, quiet: bool = False) -> None:
    """Check ``fn(M, r)`` -> the best rank-r approximation of M (d, k) in Frobenius norm.

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise. Any correct method passes (SVD, eigenvectors of M^T M with
    any signs, float32 or float64 arithmetic).
    """
    name = "best_rank_approximation"
    n_cases = 0
    for M, r, description in _matrices():
        case = description
        M64 = M.astype(np.float64)
        want = analysis.best_rank_approximation(M64.copy(), r)  # first, from a private copy
        mistakes = _wrong_approximations(M64, r)
        M_given = M.copy()
        got = call(fn, name, case, M_given, r)
        if not np.array_equal(M_given, M):
            raise ExerciseError(
                f"{name} changed its input M on {case}: work on a copy (or build a new array)"
            )
        got = as_array(got, name, case)
        if got.ndim == 0:
            raise ExerciseError(
                f"{name} returned a single number on {case}; expected the (d, k) matrix M_r. "
                "Did you return the error ||M - M_r|| instead of the approximation itself?"
            )
        compare(got, want, name, case, mistakes, "approximation", precision_of(M))
        n_cases += 1
    passed(name, n_cases, quiet)


def _wrong_errors(M64, r: int) -> list:
    """The numbers that the classic wrong versions give for the rank-r error of M."""
    S = np.linalg.svd(M64, compute_uv=False)
    tail = S[r:]
    n = S.size
    return [
        (
            "It matches the SQUARED error sum(sigma_i^2 for i > r): take the square root.",
            float(np.sum(tail**2)),
        ),
        (
            "It matches sqrt(sum of sigma_i for i > r): the energy adds up the SQUARES of the "
            "singular values.",
            float(np.sqrt(np.sum(tail))),
        ),
        ("It matches sum(sigma_i for i > r): square, sum, then take the root.", float(tail.sum())),
        (
            "It matches sigma_(r+1), the error in the SPECTRAL norm; the Frobenius error adds "
            "up every leftover layer.",
            float(S[r]) if r < n else None,
        ),
        (
            "It matches the tail from index r + 1: S[r:] already holds sigma_(r+1), "
            "sigma_(r+2), ... (Python counts from 0).",
            float(np.sqrt(np.sum(S[r + 1 :] ** 2))),
        ),
        (
            "It matches the tail from index r - 1: S[r:] is the leftover, S[:r] is kept.",
            float(np.sqrt(np.sum(S[r - 1 :] ** 2))) if r >= 1 else None,
        ),
        (
            "It matches the norm of the KEPT part sqrt(sum of sigma_i^2 for i <= r): the error "
            "is what is left out.",
            float(np.sqrt(np.sum(S[:r] ** 2))),
        ),
        (
            "It matches the RELATIVE error (divided by ||M||_F): return the error itself.",
            float(np.sqrt(np.sum(tail**2)) / np.linalg.norm(M64)),
        ),
    ]


@exercise("eckart_young_error", analysis.eckart_young_error)
def check_eckart_young_error(fn, *, quiet: bool = False) -> None:
    """Check ``fn(M, r)`` -> ||M - M_r||_F, the Frobenius error of the best rank-r approximation.

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise.
    """
    name = "eckart_young_error"
    n_cases = 0
    for M, r, description in _matrices():
        case = description
        M64 = M.astype(np.float64)
        want = np.asarray(analysis.eckart_young_error(M64.copy(), r))  # first, on a copy
        mistakes = _wrong_errors(M64, r)
        given = M.copy()
        before = snapshot(given)
        got = call(fn, name, case, given, r)
        unchanged(name, case, ("M",), before, [given])
        got = as_array(got, name, case, ())
        compare(got, want, name, case, mistakes, "error", precision_of(M))
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- numerical rank


def numerical_rank_reference(M, rtol: float) -> int:
    """How many singular values of M (d, k) exceed ``rtol`` times the largest one (0 for M = 0)."""
    S = analysis.singular_values(np.asarray(M))
    return int(np.count_nonzero(S > rtol * S[0])) if S.size else 0


# (d, k, singular values relative to the largest or ("product", r), scale, rtol, dtype, description)
_RANK_CASES = [
    # first: a case where every wrong version below gives its own count
    (
        9,
        12,
        (1.0, 0.5, 0.05, 1e-2, 1e-4, 1e-6),
        1e-2,
        1e-3,
        "float64",
        "a (9, 12) matrix with singular values 1e-2 * (1, 0.5, 0.05, 1e-2, 1e-4, 1e-6) and rtol 1e-3",
    ),
    (7, 5, ("product", 2), 1.0, 1e-10, "float64", "B A with B (7, 2), A (2, 5)"),
    (6, 9, ("product", 3), 1e-12, 1e-10, "float64", "a rank-3 B A whose entries are about 1e-12"),
    (8, 6, ("product", 1), 1e12, 1e-10, "float64", "a rank-1 B A whose entries are about 1e12"),
    (5, 4, (), 1.0, 1e-10, "float64", "the zero matrix (5, 4)"),
    (4, 6, ("product", 4), 1.0, 1e-10, "float64", "a full-rank (4, 6) matrix"),
    (
        9,
        7,
        (1.0, 0.3, 1e-7),
        1.0,
        1e-10,
        "float64",
        "rank 3 whose third value is 1e-7 of the first",
    ),
    (
        8,
        8,
        (1.0, 0.5, 1e-2, 1e-4),
        1.0,
        1e-3,
        "float64",
        "singular values 1, 0.5, 1e-2, 1e-4 with rtol 1e-3",
    ),
    (9, 7, ("product", 2), 1.0, 1e-5, "float32", "a float32 rank-2 B A with rtol 1e-5"),
]


def _rank_inputs():
    """(M, rtol, description) per case; the same matrices on every call (own generator)."""
    rng = np.random.default_rng(20260105)
    for d, k, values, scale, rtol, dtype, description in _RANK_CASES:
        if values and values[0] == "product":
            M = rng.standard_normal((d, values[1])) @ rng.standard_normal((values[1], k))
        else:
            U, _ = np.linalg.qr(rng.standard_normal((d, d)))
            V, _ = np.linalg.qr(rng.standard_normal((k, k)))
            r = len(values)
            M = (U[:, :r] * np.asarray(values, dtype=np.float64)) @ V[:, :r].T
        yield (M * scale).astype(dtype), rtol, description


def _wrong_ranks(M, rtol: float) -> list:
    """The counts that the classic wrong versions give on M."""
    S = np.linalg.svd(np.asarray(M, dtype=np.float64), compute_uv=False)
    top = S[0] if S.size else 0.0
    return [
        (
            "you counted every singular value (those above 0, or min(d, k) of them): rounding "
            "leaves the ones that should be 0 at about 1e-16 times the largest, never exactly 0; "
            "count those above rtol * sigma_1",
            int(np.count_nonzero(S > 0)),
        ),
        (
            "you compared the singular values with rtol itself: the threshold is relative, "
            "rtol * sigma_1, so that scaling M by any factor leaves its rank unchanged",
            int(np.count_nonzero(S > rtol)),
        ),
        (
            "you counted the SMALL singular values (those below the threshold): the rank is the "
            "number of directions that survive, those above rtol * sigma_1",
            int(np.count_nonzero(S <= rtol * top)),
        ),
        (
            "you compared squared singular values (sigma_i**2 > rtol * sigma_1**2, a threshold of "
            "sqrt(rtol)): compare sigma_i with rtol * sigma_1",
            int(np.count_nonzero(S**2 > rtol * top**2)),
        ),
        (
            "you ignored the rtol given (a threshold of your own): use rtol * sigma_1",
            int(np.count_nonzero(S > 1e-10 * top)),
        ),
    ]


@exercise("numerical_rank", numerical_rank_reference)
def check_numerical_rank(fn, *, quiet: bool = False) -> None:
    """Check ``fn(M, rtol)`` -> the number of singular values of M above rtol * sigma_1, an int.

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise.
    """
    name = "numerical_rank"
    n_cases = 0
    for M, rtol, case in _rank_inputs():
        want = numerical_rank_reference(M.astype(np.float64), rtol)  # first, on a copy
        mistakes = _wrong_ranks(M, rtol)
        given = M.copy()
        before = snapshot(given)
        got = call(fn, name, case, given, rtol)
        unchanged(name, case, ("M",), before, [given])
        got = as_whole_number(got, name, case, "how many singular values exceed rtol * sigma_1")
        if got != want:
            for explanation, wrong in mistakes:
                if wrong != want and got == wrong:
                    raise ExerciseError(f"{name}: wrong rank on {case}: {explanation}")
            raise ExerciseError(f"{name}: wrong rank on {case}: yours {got}, expected {want}")
        n_cases += 1
    passed(name, n_cases, quiet)
