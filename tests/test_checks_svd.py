"""The notebook-05 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_energy_rank, check_subspace_similarity
from lora_np.checks._harness import ExerciseError

# ----------------------------------------------------------------------------- energy_rank


def energy_rank_by_loop(M, share):
    """Correct, written with a loop over eigenvalues of M^T M (ascending, walked backwards)."""
    values = np.linalg.eigvalsh(np.asarray(M, dtype=np.float64).T @ M)  # sigma_i^2, ascending
    values = np.clip(values, 0.0, None)
    total = values.sum()
    if total == 0:
        return 0
    held, r = 0.0, 0
    for value in values[::-1]:
        held += value
        r += 1
        if held >= share * total * (1 - 1e-12):
            return r
    return r


def energy_rank_float32(M, share):
    """Correct, in float32 arithmetic, returning a NumPy integer."""
    S = np.linalg.svd(np.asarray(M, dtype=np.float32), compute_uv=False)
    energy = S.astype(np.float64) ** 2
    if energy.sum() == 0:
        return np.int64(0)
    held = np.cumsum(energy) / energy.sum()
    return np.argmax(held >= share - 1e-9) + 1


def test_energy_rank_reference_and_independent_solutions_pass(capsys):
    check_energy_rank(ln.analysis.energy_rank)
    assert "energy_rank: all 7 checks passed" in capsys.readouterr().out
    check_energy_rank(energy_rank_by_loop, quiet=True)
    check_energy_rank(energy_rank_float32, quiet=True)


def _held(values, share):
    held = np.cumsum(values) / np.sum(values)
    return int(np.argmax(held >= share - 1e-12)) + 1


def _zero_safe(rank_of):
    def wrapped(M, share):
        return 0 if not np.any(M) else rank_of(M, share)

    return wrapped


def _S(M):
    return np.linalg.svd(M, compute_uv=False)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (_zero_safe(lambda M, s: _held(_S(M), s)), "not their squares"),
        (_zero_safe(lambda M, s: _held(_S(M)[::-1] ** 2, s)), "SMALLEST"),
        (_zero_safe(lambda M, s: _held(_S(M) ** 2, 1 - s)), "1 - share"),
        (_zero_safe(lambda M, s: _held(np.sort(M.ravel() ** 2)[::-1], s)), "ENTRIES"),
        (_zero_safe(lambda M, s: _held(_S(M) ** 2, s) - 1), "one too small"),
        (
            _zero_safe(
                lambda M, s: int(np.argmax(np.cumsum(_S(M) ** 2) / np.sum(_S(M) ** 2) > s)) + 1
            ),
            "(>)",
        ),
        (lambda M, s: _held(_S(M) ** 2 + 1e-300, s), "zero matrix"),
        (_zero_safe(lambda M, s: float(np.sum(_S(M)[:3] ** 2) / np.sum(_S(M) ** 2))), "share"),
    ],
    ids=["not-squared", "smallest", "one-minus", "entries", "index", "strict", "zero", "share"],
)
def test_each_classic_energy_rank_mistake_is_named(wrong, phrase):
    with np.errstate(invalid="ignore", divide="ignore"):
        with pytest.raises(ExerciseError) as info:
            check_energy_rank(wrong)
    assert phrase in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- subspace_similarity


def phi_by_eigenvectors(A1, A2, i, j):
    """Correct, written differently: eigenvectors of A^T A (signs flipped), in float32."""

    def top(A, n):
        values, vectors = np.linalg.eigh(np.asarray(A, dtype=np.float32).T @ A)  # ascending
        return -vectors[:, ::-1][:, :n]  # (k, n), strongest first

    overlap = top(A1, i).T @ top(A2, j)
    return float(np.sum(overlap * overlap) / min(i, j))


def phi_by_projections(A1, A2, i, j):
    """Correct, written differently: trace of the product of the two projection matrices."""
    V1 = np.linalg.svd(A1)[2][:i].T  # full SVD, top i rows of Vt
    V2 = np.linalg.svd(A2)[2][:j].T
    P1, P2 = V1 @ V1.T, V2 @ V2.T
    return np.trace(P1 @ P2) / min(i, j)


def phi_by_loops(A1, A2, i, j):
    """Correct, written with explicit loops over pairs of directions."""
    Vt1 = np.linalg.svd(A1, full_matrices=False)[2]
    Vt2 = np.linalg.svd(A2, full_matrices=False)[2]
    total = 0.0
    for a in range(i):
        for b in range(j):
            total += float(Vt1[a] @ Vt2[b]) ** 2
    return total / min(i, j)


def test_subspace_similarity_reference_and_independent_solutions_pass(capsys):
    check_subspace_similarity(ln.analysis.subspace_similarity)
    assert "subspace_similarity: all 9 checks passed" in capsys.readouterr().out
    for solution in (phi_by_eigenvectors, phi_by_projections, phi_by_loops):
        check_subspace_similarity(solution, quiet=True)


def _V(A):
    return np.linalg.svd(A, full_matrices=False)[2].T  # (k, r): right-singular vectors


def _phi(V1, V2, i, j, divide):
    return float(np.sum((V1[:, :i].T @ V2[:, :j]) ** 2)) / divide


def _left_where_possible(A1, A2, i, j):
    """Left-singular vectors (run only where r1 = r2; elsewhere the right, correct, answer)."""
    if A1.shape[0] != A2.shape[0]:
        return _phi(_V(A1), _V(A2), i, j, min(i, j))
    U1, U2 = np.linalg.svd(A1)[0], np.linalg.svd(A2)[0]
    return _phi(U1, U2, i, j, min(i, j))


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda A1, A2, i, j: _phi(_V(A1), _V(A2), i, j, max(i, j)), "max(i, j)"),
        (
            lambda A1, A2, i, j: np.linalg.norm(_V(A1)[:, :i].T @ _V(A2)[:, :j]) / min(i, j),
            "NOT squared",
        ),
        (lambda A1, A2, i, j: _phi(_V(A1), _V(A2), i, j, 1.0), "without the division"),
        (
            lambda A1, A2, i, j: _phi(_V(A1)[:, ::-1], _V(A2)[:, ::-1], i, j, min(i, j)),
            "BOTTOM",
        ),
        (
            lambda A1, A2, i, j: _phi(
                np.linalg.svd(A1)[2][::-1].T, np.linalg.svd(A2)[2][::-1].T, i, j, min(i, j)
            ),
            "FULL Vt",
        ),
        (lambda A1, A2, i, j: _phi(A1.T, A2.T, i, j, min(i, j)), "without an SVD"),
        (
            lambda A1, A2, i, j: _phi(
                (A1 / np.linalg.norm(A1, axis=1, keepdims=True)).T,
                (A2 / np.linalg.norm(A2, axis=1, keepdims=True)).T,
                i,
                j,
                min(i, j),
            ),
            "unit length",
        ),
        (lambda A1, A2, i, j: _phi(_V(A1), _V(A2), j, i, min(i, j)), "swapped"),
        (_left_where_possible, "LEFT-singular"),
    ],
    ids=[
        "max",
        "not-squared",
        "not-normalised",
        "bottom",
        "bottom-full",
        "rows",
        "unit-rows",
        "swapped",
        "left",
    ],
)
def test_each_classic_subspace_similarity_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_subspace_similarity(wrong)
    assert phrase in str(info.value), str(info.value)


def test_left_vectors_on_unequal_ranks_get_a_hint():
    def left(A1, A2, i, j):
        U1, U2 = np.linalg.svd(A1)[0], np.linalg.svd(A2)[0]  # (r1, r1), (r2, r2)
        return np.sum((U1[:, :i].T @ U2[:, :j]) ** 2) / min(i, j)

    with pytest.raises(ExerciseError) as info:
        check_subspace_similarity(left)
    assert "RIGHT-singular" in str(info.value), str(info.value)


def test_cases_cover_the_edges():
    seen = []

    def spy(A1, A2, i, j):
        seen.append((A1.shape[0], A2.shape[0], i, j, A1.dtype))
        return ln.analysis.subspace_similarity(A1, A2, i, j)

    check_subspace_similarity(spy, quiet=True)
    assert any(r1 != r2 for r1, r2, *_ in seen) and any(r1 == r2 for r1, r2, *_ in seen)
    assert any(i != j for _, _, i, j, _ in seen) and (6, 12, 1, 1, np.float64) in seen
    assert any(i == r1 for r1, _, i, _, _ in seen)
    assert any(dtype == np.float32 for *_, dtype in seen)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (None, "expected your function"),
        (lambda A1, A2, i, j: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda A1, A2, i, j: np.ones((i, j)), "expected one number"),
        (lambda A1, A2, i, j: float("nan"), "NaN"),
        (lambda A1, A2, i, j: None, "forget `return`"),
    ],
    ids=["not-callable", "stub", "shape", "nan", "none"],
)
def test_bad_subspace_similarity_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_subspace_similarity(bad)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (lambda M, s: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda M, s: np.array([1, 2]), "expected one number"),
        (lambda M, s: float("nan"), "NaN"),
        (lambda M, s: True, "expected a rank"),
    ],
    ids=["stub", "shape", "nan", "bool"],
)
def test_bad_energy_rank_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_energy_rank(bad)
    assert phrase in str(info.value), str(info.value)


def test_changing_the_inputs_is_refused():
    def in_place(A1, A2, i, j):
        A1 *= 2.0
        return ln.analysis.subspace_similarity(A1, A2, i, j)

    with pytest.raises(ExerciseError, match="changed its input"):
        check_subspace_similarity(in_place)


def test_passing_or_reference_falls_back_to_the_library(capsys):
    assert ln.checks.passing_or_reference(phi_by_loops, "subspace_similarity") is phi_by_loops
    fallback = ln.checks.passing_or_reference(lambda A1, A2, i, j: 0.5, "subspace_similarity")
    assert fallback is ln.analysis.subspace_similarity
    assert "using the library's subspace_similarity" in capsys.readouterr().out
    fallback = ln.checks.passing_or_reference(lambda M, s: 1, "energy_rank")
    assert fallback is ln.analysis.energy_rank


def test_a_zero_matrix_answered_with_nan_shares_is_named():
    def nan_shares(M, share):  # 0/0 on the zero matrix: argmax of all-False gives 1
        energy = np.linalg.svd(M, compute_uv=False) ** 2
        with np.errstate(invalid="ignore"):
            held = np.cumsum(energy) / energy.sum()
        return int(np.argmax(held >= share - 1e-12)) + 1

    with pytest.raises(ExerciseError) as info:
        check_energy_rank(nan_shares)
    assert "zero matrix" in str(info.value) and "yours 1" in str(info.value)


# ----------------------------------------------------------------------------- soundness


def test_energy_rank_is_tested_at_share_one():
    def loop_stops_before_n(M, share):  # range(1, n) never tries every direction
        energy = np.linalg.svd(M, compute_uv=False) ** 2
        if energy.sum() == 0:
            return 0
        held = np.cumsum(energy) / energy.sum()
        for r in range(1, len(energy)):
            if held[r - 1] >= share - 1e-12:
                return r
        return len(energy) - 1

    with pytest.raises(ExerciseError, match="share 1.0"):
        check_energy_rank(loop_stops_before_n)


def test_energy_rank_that_changes_M_is_refused():
    def sorts_in_place(M, share):
        r = ln.analysis.energy_rank(M, share)
        M[...] = 0.0
        return r

    with pytest.raises(ExerciseError, match="changed its input M"):
        check_energy_rank(sorts_in_place)


def test_dividing_phi_by_i_is_named():
    def over_i(A1, A2, i, j):
        V1, V2 = np.linalg.svd(A1)[2].T, np.linalg.svd(A2)[2].T
        return float(np.sum((V1[:, :i].T @ V2[:, :j]) ** 2)) / i

    with pytest.raises(ExerciseError, match="dividing by i"):
        check_subspace_similarity(over_i)
