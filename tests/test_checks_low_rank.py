"""The notebook-01 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_best_rank_approximation, check_eckart_young_error
from lora_np.checks._harness import ExerciseError

# ----------------------------------------------------------------------------- best rank-r


def _svd_top(M, r):
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vt[:r]


def best_by_eigenvectors(M, r):
    """Correct, written differently: eigenvectors of M^T M (any signs), projected, in float32."""
    M32 = np.asarray(M, dtype=np.float32)
    values, vectors = np.linalg.eigh(M32.T @ M32)  # ascending eigenvalues
    rng = np.random.default_rng(5)
    signs = rng.choice([-1.0, 1.0], size=vectors.shape[1]).astype(np.float32)
    top = (vectors * signs)[:, ::-1][:, :r]  # (k, r), flipped signs do not change V V^T
    return M32 @ top @ top.T


def best_by_left_eigenvectors(M, r):
    """Correct, written differently: eigenvectors of M M^T, sign-flipped, as U_r U_r^T M."""
    values, vectors = np.linalg.eigh(M @ M.T)  # ascending
    top = -vectors[:, np.argsort(values)[::-1][:r]]  # (d, r), every sign flipped
    return top @ (top.T @ M)


def best_by_loops(M, r):
    """Correct, written with an explicit sum of rank-one layers."""
    U, S, Vt = np.linalg.svd(np.asarray(M, dtype=np.float64))
    out = np.zeros(np.shape(M))
    for i in range(r):
        out += S[i] * np.outer(U[:, i], Vt[i])
    return out


def test_the_library_and_independent_solutions_pass(capsys):
    check_best_rank_approximation(ln.analysis.best_rank_approximation)
    assert "all 6 checks passed" in capsys.readouterr().out
    check_best_rank_approximation(best_by_eigenvectors, quiet=True)
    check_best_rank_approximation(best_by_loops, quiet=True)
    check_best_rank_approximation(best_by_left_eigenvectors, quiet=True)
    check_best_rank_approximation(_svd_top, quiet=True)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda M, r: _svd_top(M, r + 1) if r < min(np.shape(M)) else _svd_top(M, r), "r + 1"),
        (lambda M, r: _svd_top(M, max(r - 1, 0)), "r - 1"),
        (
            lambda M, r: (lambda U, S, Vt: (U[:, :r] * S[:r]) @ Vt.T[:r])(
                *np.linalg.svd(M, full_matrices=False)
            ),
            "rows of V",
        ),
        (
            lambda M, r: (lambda U, S, Vt: U[:, :r] @ Vt[:r])(
                *np.linalg.svd(M, full_matrices=False)
            ),
            "without the singular values",
        ),
        (
            lambda M, r: (lambda U, S, Vt: (U[:, ::-1][:, :r] * S[::-1][:r]) @ Vt[::-1][:r])(
                *np.linalg.svd(M, full_matrices=False)
            ),
            "SMALLEST",
        ),
        (lambda M, r: M - _svd_top(M, r), "leftover"),
        (lambda M, r: float(np.linalg.norm(M - _svd_top(M, r))), "error ||M - M_r||"),
    ],
    ids=["r+1", "r-1", "V-not-transposed", "no-sigma", "smallest", "residual", "error"],
)
def test_each_classic_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError, match=None) as info:
        check_best_rank_approximation(wrong)
    assert phrase in str(info.value), str(info.value)


def test_u_transposed_is_named_on_a_wide_matrix():
    def u_transposed(M, r):
        U, S, Vt = np.linalg.svd(M, full_matrices=False)
        if M.shape[0] > M.shape[1]:  # the tall cases would fail on shapes; be right there
            return (U[:, :r] * S[:r]) @ Vt[:r]
        return (U.T[:, :r] * S[:r]) @ Vt[:r]

    with pytest.raises(ExerciseError) as info:
        check_best_rank_approximation(u_transposed)
    assert "COLUMNS of U" in str(info.value)


def test_changing_m_in_place_is_refused():
    def in_place(M, r):
        M[:] = _svd_top(M, r)
        return M

    with pytest.raises(ExerciseError, match="changed its input M"):
        check_best_rank_approximation(in_place)


def test_non_square_shapes_reach_the_function():
    shapes = []

    def spy(M, r):
        shapes.append((M.shape, r))
        return ln.analysis.best_rank_approximation(M, r)

    check_best_rank_approximation(spy, quiet=True)
    assert any(d > k for (d, k), _ in shapes) and any(d < k for (d, k), _ in shapes)
    assert any(r == 0 for _, r in shapes) and any(r == min(s) for s, r in shapes)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (None, "expected your function"),
        (lambda M, r: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda M, r: _svd_top(M, r)[:, :-1], "returned shape"),
        (lambda M, r: np.full(np.shape(M), np.nan), "NaN"),
        (lambda M, r: None, "forget `return`"),
        (lambda M, r: 1 / 0, "raised ZeroDivisionError"),
    ],
    ids=["not-callable", "stub", "shape", "nan", "none", "raises"],
)
def test_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_best_rank_approximation(bad)
    assert phrase in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- its error


def error_by_hand(M, r):
    """Correct, written with a loop in float32 arithmetic."""
    S = np.linalg.svd(np.asarray(M, dtype=np.float32), compute_uv=False)
    total = np.float32(0.0)
    for sigma in S[r:]:
        total += sigma * sigma
    return np.sqrt(total)


def error_from_the_matrix(M, r):
    """Correct, written differently: build M_r and measure it."""
    return np.linalg.norm(M - _svd_top(M, r))


def test_error_reference_and_independent_solutions_pass(capsys):
    check_eckart_young_error(ln.analysis.eckart_young_error)
    assert "eckart_young_error: all 6 checks passed" in capsys.readouterr().out
    check_eckart_young_error(error_by_hand, quiet=True)
    check_eckart_young_error(error_from_the_matrix, quiet=True)


def _S(M):
    return np.linalg.svd(M, compute_uv=False)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda M, r: np.sum(_S(M)[r:] ** 2), "SQUARED"),
        (lambda M, r: np.sqrt(np.sum(_S(M)[r:])), "SQUARES"),
        (lambda M, r: _S(M)[r] if r < min(M.shape) else 0.0, "SPECTRAL"),
        (lambda M, r: np.sqrt(np.sum(_S(M)[r + 1 :] ** 2)), "index r + 1"),
        (lambda M, r: np.sqrt(np.sum(_S(M)[max(r - 1, 0) :] ** 2)), "index r - 1"),
        (lambda M, r: np.sqrt(np.sum(_S(M)[:r] ** 2)), "KEPT"),
        (lambda M, r: np.sqrt(np.sum(_S(M)[r:] ** 2)) / np.linalg.norm(M), "RELATIVE"),
    ],
    ids=["squared", "not-squared", "spectral", "r+1", "r-1", "head", "relative"],
)
def test_each_classic_error_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_eckart_young_error(wrong)
    assert phrase in str(info.value), str(info.value)


def test_error_returned_as_an_array_of_one_is_refused():
    with pytest.raises(ExerciseError, match="returned shape"):
        check_eckart_young_error(lambda M, r: np.array([error_from_the_matrix(M, r)]))


def test_passing_or_reference_gives_back_the_right_function(capsys):
    assert ln.checks.passing_or_reference(best_by_loops, "best_rank_approximation") is best_by_loops
    fallback = ln.checks.passing_or_reference(lambda M, r: M, "best_rank_approximation")
    assert fallback is ln.analysis.best_rank_approximation
    assert "using the library's best_rank_approximation" in capsys.readouterr().out


# ----------------------------------------------------------------------------- soundness


def test_an_error_that_changes_M_is_refused():
    def truncates_in_place(M, r):
        value = ln.analysis.eckart_young_error(M, r)
        M[:, :] = 0.0
        return value

    with pytest.raises(ExerciseError, match="changed its input M"):
        check_eckart_young_error(truncates_in_place)


# ----------------------------------------------------------------------------- numerical rank


def rank_from_svd(M, rtol):
    """Correct: count the singular values above rtol times the largest."""
    S = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(S > rtol * S.max())) if S.max() > 0 else 0


def rank_by_loop(M, rtol):
    """Correct, written differently: a loop in M's own dtype (float32 stays float32), stopping early."""
    S = np.linalg.svd(M, compute_uv=False)
    count = 0
    for sigma in S:  # largest first
        if sigma <= rtol * S[0]:
            break
        count += 1
    return count


def rank_of_transpose(M, rtol):
    """Correct, written differently: the SVD of M^T (same singular values), as a NumPy int."""
    S = np.linalg.svd(M.T, compute_uv=False)
    threshold = rtol * (S[0] if S.size else 0.0)
    return np.int64(np.count_nonzero(S > threshold))


def test_numerical_rank_reference_and_independent_solutions_pass(capsys):
    from lora_np.checks import check_numerical_rank
    from lora_np.checks.low_rank import numerical_rank_reference

    check_numerical_rank(numerical_rank_reference)
    assert "✓ numerical_rank: all 9 checks passed" in capsys.readouterr().out
    check_numerical_rank(rank_from_svd, quiet=True)
    check_numerical_rank(rank_by_loop, quiet=True)
    check_numerical_rank(rank_of_transpose, quiet=True)
    check_numerical_rank(
        lambda M, rtol: int(np.linalg.matrix_rank(M, tol=rtol * np.linalg.norm(M, 2))), quiet=True
    )


def _singular(M):
    return np.linalg.svd(M, compute_uv=False)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda M, rtol: int(np.sum(_singular(M) > 0)), "every singular value"),
        (lambda M, rtol: min(M.shape), "every singular value"),
        (lambda M, rtol: int(np.sum(_singular(M) > rtol)), "rtol itself"),
        (lambda M, rtol: int(np.sum(_singular(M) <= rtol * _singular(M)[0])), "SMALL"),
        (
            lambda M, rtol: int(np.sum(_singular(M) ** 2 > rtol * _singular(M)[0] ** 2)),
            "squared singular values",
        ),
        (lambda M, rtol: int(np.sum(_singular(M) > 1e-10 * _singular(M)[0])), "ignored the rtol"),
    ],
    ids=["above-zero", "min-d-k", "absolute", "small", "squared", "fixed-rtol"],
)
def test_each_classic_rank_mistake_is_named(wrong, phrase):
    from lora_np.checks import check_numerical_rank

    with pytest.raises(ExerciseError) as info:
        check_numerical_rank(wrong)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (lambda M, rtol: float(rank_from_svd(M, rtol)), "expected a whole number"),
        (lambda M, rtol: True, "expected a whole number"),
        (lambda M, rtol: None, "forget `return`"),
        (lambda M, rtol: rank_from_svd(M, rtol) + (M.shape == (4, 6)), "yours 5, expected 4"),
    ],
    ids=["float", "bool", "none", "off-by-one-somewhere"],
)
def test_bad_rank_answers_give_clear_messages(bad, phrase):
    from lora_np.checks import check_numerical_rank

    with pytest.raises(ExerciseError) as info:
        check_numerical_rank(bad)
    assert phrase in str(info.value), str(info.value)


def test_a_rank_that_changes_M_is_refused():
    from lora_np.checks import check_numerical_rank

    def rounds_in_place(M, rtol):
        count = rank_from_svd(M, rtol)
        M[np.abs(M) < 1e-3] = 0.0
        return count

    with pytest.raises(ExerciseError, match="changed its input M"):
        check_numerical_rank(rounds_in_place)


def test_numerical_rank_does_not_depend_on_the_scale():
    # the cases include tiny and huge matrices, where an absolute threshold goes wrong
    from lora_np.checks.low_rank import _rank_inputs

    scales = [float(np.abs(M).max()) for M, _, _ in _rank_inputs() if np.any(M)]
    assert min(scales) < 1e-9 and max(scales) > 1e9


def test_the_first_rank_case_gives_every_mistake_its_own_count():
    # the checker stops at the first failing case: there, each wrong version must give a count
    # of its own (and not the right one), or a message could name someone else's mistake
    from lora_np.checks.low_rank import _rank_inputs, _wrong_ranks, numerical_rank_reference

    M, rtol, _ = next(iter(_rank_inputs()))
    counts = [count for _, count in _wrong_ranks(M, rtol)]
    assert numerical_rank_reference(M, rtol) not in counts
    assert len(set(counts)) == len(counts), counts
