"""Checkers for notebook 05 (the SVD of real updates): how many directions hold a share of a
matrix's energy, and the LoRA paper's subspace similarity φ between two adapters' A matrices.

The references are the library's :func:`lora_np.analysis.energy_rank` and
:func:`lora_np.analysis.subspace_similarity` (right-singular vectors, the paper's §7.2 Eq. 4).
The φ cases use A matrices with r1 ≠ r2 and i ≠ j (so a swap or a max for a min shows), the
edges i = j = 1 and i = r1, identical inputs (φ = 1), orthogonal row spaces (φ = 0), one pair
with r1 = r2 (where left-singular vectors run and give a wrong number) and a float32 pair.
"""

from __future__ import annotations

from .. import analysis
from ._harness import (
    ExerciseError,
    as_array,
    call,
    call_explained,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = ["check_energy_rank", "check_subspace_similarity"]


def _scalar(got, name: str, case: str, what: str):
    """The learner's answer as a 0-d host array, with a clear message when it is not one number."""
    array = as_array(got, name, case)
    if array.size != 1:
        raise ExerciseError(
            f"{name} returned an array of shape {array.shape} on {case}; expected one "
            f"number ({what})"
        )
    return array.reshape(())


# ----------------------------------------------------------------------------- energy_rank


def _energy_cases():
    """(M, share, description) per case; the same matrices on every call (own generator)."""
    rng = np.random.default_rng(20260505)
    # a matrix with a few strong directions and a weak tail: the shares land on different ranks
    U, _ = np.linalg.qr(rng.standard_normal((12, 8)))
    V, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    spectrum = np.array([9.0, 5.0, 3.0, 1.5, 0.8, 0.5, 0.3, 0.1])
    structured = (U * spectrum) @ V.T  # (12, 8)
    tie = np.zeros((5, 4))
    tie[np.arange(4), np.arange(4)] = 2.0  # four equal directions: 25% of the energy each
    yield structured, 0.9, "a 12×8 matrix with a decaying spectrum, share 0.9"
    yield structured, 1.0, "the same 12×8 matrix, share 1.0 (all of the energy: rank 8)"
    yield structured.T.copy(), 0.6, "its 8×12 transpose (d < k), share 0.6"
    yield rng.standard_normal((6, 9)), 0.75, "a random 6×9 matrix, share 0.75"
    yield tie, 0.5, "a 5×4 matrix whose top 2 of 4 equal directions hold exactly half"
    yield rng.standard_normal((7, 7)).astype(np.float32), 0.8, "a float32 7×7 matrix, share 0.8"
    yield np.zeros((4, 6)), 0.9, "an all-zero 4×6 matrix (no energy: rank 0)"


def _rank_of(energy_sorted, share) -> int | None:
    """Smallest r whose first r entries of ``energy_sorted`` hold ``share`` of their sum."""
    total = float(np.sum(energy_sorted))
    if total == 0.0:
        return None
    held = np.cumsum(energy_sorted) / total
    return int(np.searchsorted(held, share - 1e-12) + 1)


def _wrong_energy_ranks(M64, share: float, want: int) -> list:
    """The ranks that the classic wrong versions give on M (float64)."""
    S = np.linalg.svd(M64, compute_uv=False)
    energy = S**2
    total = float(energy.sum())
    wrong = [
        (
            "It matches the rank found with the singular values themselves, not their squares: "
            "the energy ||M||_F^2 is the sum of sigma_i^2.",
            _rank_of(S, share),
        ),
        (
            "It matches the rank found with the SMALLEST singular values first: np.linalg.svd "
            "sorts them largest first; add up the energy from the top.",
            _rank_of(energy[::-1], share),
        ),
        (
            "It matches the rank that holds 1 - share of the energy: share is what the top r "
            "directions must HOLD, not what may be left out.",
            _rank_of(energy, 1.0 - share) if share < 1.0 else None,
        ),
        (
            "It matches the rank that counts the largest ENTRIES of M: the energy is shared out "
            "over singular directions, so take the SVD first.",
            _rank_of(np.sort(M64.ravel() ** 2)[::-1], share),
        ),
    ]
    if share == 1.0 and total > 0.0:
        wrong += [
            (
                "At share 1.0 the cumulative share of all directions can come out a hair below "
                "1 in floating point (0.9999999999999998), so `>= 1.0` never holds and argmax "
                "returns index 0: compare with a small tolerance (share - 1e-12), so that every "
                "direction counts when the whole energy is asked for.",
                1,
            ),
            (
                "At share 1.0 the cumulative share can come out a hair below 1 in floating "
                "point, so no entry reaches 1.0 and the search runs past the end: compare with "
                "a small tolerance (share - 1e-12); the rank can never exceed min(d, k).",
                want + 1,
            ),
        ]
    if total > 0.0:
        wrong += [
            (
                "It is one too small: you returned the index of the first cumulative share that "
                "reaches the target; the rank is that index + 1 (Python counts from 0).",
                want - 1,
            ),
            (
                "It is one too large. Either you asked for the share to be exceeded (>) where "
                "reaching it (>=) is enough, or you added 1 twice.",
                want + 1,
            ),
        ]
    return wrong


@exercise("energy_rank", analysis.energy_rank)
def check_energy_rank(fn, *, quiet: bool = False) -> None:
    """Check ``fn(M, share)`` -> the smallest r whose top-r singular values hold ``share`` of
    ||M||_F^2 (0 for a zero matrix), for M (d, k) and share in (0, 1].

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise.
    """
    name = "energy_rank"
    n_cases = 0
    for M, share, case in _energy_cases():
        want = np.asarray(float(analysis.energy_rank(M.astype(np.float64), share)))  # first
        wrong = _wrong_energy_ranks(M.astype(np.float64), share, int(want))
        given = M.copy()
        before = snapshot(given)
        got = call(fn, name, case, given, share)
        unchanged(name, case, ("M",), before, [given])
        if isinstance(got, bool | np.bool_):
            raise ExerciseError(f"{name} returned {got} on {case}; expected a rank (an integer)")
        got = _scalar(got, name, case, "the rank r")
        if np.issubdtype(got.dtype, np.floating) and float(got) != round(float(got)):
            raise ExerciseError(
                f"{name} returned {float(got):.4g} on {case}; expected a whole number of "
                f"directions ({int(want)}). Did you return the share of energy instead of the rank?"
            )
        got = got.astype(np.float64)
        if not np.any(M) and float(got) != 0.0:
            raise ExerciseError(
                f"{name}: wrong rank on {case}: yours {float(got):g}, expected 0. A zero matrix "
                "has no energy (the cumulative share is 0/0 = NaN): return 0 before dividing."
            )
        wrong = [(why, None if r is None else np.asarray(float(r))) for why, r in wrong]
        compare(got, want, name, case, wrong, what="rank")
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- subspace_similarity


def _similarity_cases():
    """(A1, A2, i, j, description) per case; the same matrices on every call (own generator)."""
    rng = np.random.default_rng(20260506)
    k = 24
    A8, A16 = rng.standard_normal((8, k)), rng.standard_normal((16, k))
    shared = rng.standard_normal((5, k))  # both adapters partly learn the same 5 directions
    B6 = np.vstack([shared, rng.standard_normal((1, k))]) + 0.3 * rng.standard_normal((6, k))
    B12 = np.vstack([2.0 * shared, rng.standard_normal((7, k))]) + 0.3 * rng.standard_normal(
        (12, k)
    )
    C6, D6 = rng.standard_normal((6, k)), rng.standard_normal((6, k))
    orthogonal_1 = np.zeros((4, k))
    orthogonal_1[:, :10] = rng.standard_normal((4, 10))  # rows in the first 10 coordinates
    orthogonal_2 = np.zeros((7, k))
    orthogonal_2[:, 10:] = rng.standard_normal((7, k - 10))  # rows in the other 14
    mix = rng.standard_normal((6, 6))  # invertible: the same row space, other singular vectors
    yield A8, A16, 3, 5, "A1 (8, 24) and A2 (16, 24) at i = 3, j = 5"
    yield B6, B12, 4, 2, "A1 (6, 24) and A2 (12, 24) sharing 5 directions, at i = 4, j = 2"
    yield B6, B12, 1, 1, "the same pair at i = j = 1 (the top directions only)"
    yield B6, B12, 6, 9, "the same pair at i = r1 = 6, j = 9"
    yield C6, D6, 5, 2, "two (6, 24) matrices (r1 = r2) at i = 5, j = 2"
    yield B6, B6.copy(), 3, 3, "identical inputs at i = j = 3 (φ = 1)"
    yield B6, mix @ B6, 6, 6, "A2 = (a mix of A1's rows), at i = j = 6 = r (φ = 1)"
    yield orthogonal_1, orthogonal_2, 3, 5, "orthogonal row spaces at i = 3, j = 5 (φ = 0)"
    yield (
        B6.astype(np.float32),
        B12.astype(np.float32),
        2,
        7,
        "float32 A1 (6, 24) and A2 (12, 24) at i = 2, j = 7",
    )


def _phi(V1, V2, i, j, divide_by) -> float:
    """||V1[:, :i]^T V2[:, :j]||_F^2 / divide_by, with NumPy's silent slicing past the end."""
    return float(np.sum((V1[:, :i].T @ V2[:, :j]) ** 2)) / divide_by


def _wrong_similarities(A1, A2, i: int, j: int) -> list:
    """The numbers that the classic wrong versions of φ give (float64)."""
    U1, _, Vt1 = np.linalg.svd(A1, full_matrices=False)
    U2, _, Vt2 = np.linalg.svd(A2, full_matrices=False)
    V1, V2 = Vt1.T, Vt2.T  # (k, r1), (k, r2): right-singular vectors as columns
    small, large = min(i, j), max(i, j)
    overlap = V1[:, :i].T @ V2[:, :j]
    wrong = [
        (
            f"It matches dividing by {'i' if i > j else 'j'} (here max(i, j) = {large}): Eq. 4 "
            "divides by min(i, j), the size of the smaller subspace, so that φ = 1 when it "
            "lies inside the larger one.",
            _phi(V1, V2, i, j, large),
        ),
        (
            "It matches the Frobenius norm NOT squared: Eq. 4 uses ||U_i^T U_j||_F^2, the sum of "
            "the squared cosines.",
            float(np.linalg.norm(overlap)) / small,
        ),
        (
            "It matches ||U_i^T U_j||_F^2 without the division by min(i, j): φ is normalised "
            "to lie in [0, 1].",
            _phi(V1, V2, i, j, 1.0),
        ),
        (
            "It matches the BOTTOM singular vectors: np.linalg.svd sorts them strongest first, "
            "so the top i are the first i rows of Vt.",
            _phi(V1[:, ::-1], V2[:, ::-1], i, j, small),
        ),
        (
            "It matches the bottom rows of a FULL Vt (k, k), which span directions A never "
            "uses: take the top rows of Vt, the first i (full_matrices=False keeps only r).",
            _phi(
                np.linalg.svd(A1)[2].T[:, ::-1],
                np.linalg.svd(A2)[2].T[:, ::-1],
                i,
                j,
                small,
            ),
        ),
        (
            "It matches i and j swapped: the top i directions come from A1, the top j from A2.",
            _phi(V1, V2, j, i, small) if i != j else None,
        ),
        (
            "It matches using the rows of A directly, without an SVD: rows of A are neither "
            "orthonormal nor sorted by strength; take the right-singular vectors (rows of Vt).",
            _phi(A1.T, A2.T, i, j, small),
        ),
        (
            "It matches using the rows of A scaled to unit length: they are still not "
            "orthogonal to each other; take the right-singular vectors (rows of Vt).",
            _phi(
                (A1 / np.linalg.norm(A1, axis=1, keepdims=True)).T,
                (A2 / np.linalg.norm(A2, axis=1, keepdims=True)).T,
                i,
                j,
                small,
            ),
        ),
    ]
    if A1.shape[0] == A2.shape[0]:  # left-singular vectors have matching sizes only here
        wrong.append(
            (
                "It matches the LEFT-singular vectors (columns of U): they live in R^r, "
                "A's row index; compare A matrices by their RIGHT-singular vectors (rows of "
                "Vt), which live in R^k, the layer's input space.",
                _phi(U1, U2, i, j, small),
            )
        )
    return wrong


def _call_explained(fn, name: str, case: str, *args):
    """``call``, with a hint when a product of mismatched shapes suggests the wrong vectors."""
    return call_explained(
        fn,
        name,
        case,
        *args,
        shape_hint=". A1 and A2 have different numbers of rows (r1 ≠ r2): their LEFT-singular "
        "vectors live in spaces of different sizes. Use the RIGHT-singular vectors "
        "(rows of Vt), which live in R^k for both",
    )


@exercise("subspace_similarity", analysis.subspace_similarity)
def check_subspace_similarity(fn, *, quiet: bool = False) -> None:
    """Check ``fn(A1, A2, i, j)`` -> φ = ||V1_i^T V2_j||_F^2 / min(i, j), the LoRA paper's
    subspace similarity (§7.2, Eq. 4) of the top i right-singular vectors of A1 (r1, k) and
    the top j of A2 (r2, k).

    Prints one line when every case passes; raises :class:`ExerciseError` naming the case and
    the likely mistake otherwise. Any correct method passes (SVD, eigenvectors of A^T A with any
    signs, projections, float32 or float64 arithmetic).
    """
    name = "subspace_similarity"
    n_cases = 0
    for A1, A2, i, j, case in _similarity_cases():
        A1_64, A2_64 = A1.astype(np.float64), A2.astype(np.float64)
        want = np.asarray(analysis.subspace_similarity(A1_64.copy(), A2_64.copy(), i, j))  # first
        mistakes = _wrong_similarities(A1_64, A2_64, i, j)
        given1, given2 = A1.copy(), A2.copy()
        got = _call_explained(fn, name, case, given1, given2, i, j)
        if not (np.array_equal(given1, A1) and np.array_equal(given2, A2)):
            raise ExerciseError(f"{name} changed its input A1 or A2 on {case}: work on copies")
        got = _scalar(got, name, case, "φ in [0, 1]")
        compare(got, want, name, case, mistakes, "φ", precision_of(A1, A2))
        n_cases += 1
    passed(name, n_cases, quiet)
