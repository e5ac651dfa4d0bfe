"""The notebook-05 projection-norm checker (§7.3) accepts correct answers written any way and
names each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_projection_norm
from lora_np.checks._harness import ExerciseError

# ----------------------------------------------------------------------------- correct solutions


def by_full_size_projection(W, M, r):
    """Correct: project W into M's subspaces at full size, U U^T W V V^T, then its norm."""
    U, _, Vt = np.linalg.svd(M)
    P_left = U[:, :r] @ U[:, :r].T  # (d, d)
    P_right = Vt[:r].T @ Vt[:r]  # (k, k)
    return np.linalg.norm(P_left @ W @ P_right)


def by_eigenvectors(W, M, r):
    """Correct: eigenvectors of M M^T and M^T M (ascending, signs flipped), in float32 (and
    returned as a float32, so that it is judged at float32's precision)."""
    M32 = np.asarray(M, dtype=np.float32)
    left = -np.linalg.eigh(M32 @ M32.T)[1][:, ::-1][:, :r]  # (d, r)
    right = np.linalg.eigh(M32.T @ M32)[1][:, ::-1][:, :r]  # (k, r)
    return np.sqrt(np.sum((left.T @ W.astype(np.float32) @ right) ** 2))  # float32


def by_loops(W, M, r):
    """Correct: each entry u_a^T W v_b with explicit loops, summed as squares."""
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    total = 0.0
    for a in range(r):
        for b in range(r):
            total += float(U[:, a] @ W @ Vt[b]) ** 2
    return total**0.5


def test_reference_and_independent_solutions_pass(capsys):
    check_projection_norm(ln.analysis.projection_norm)
    assert "projection_norm: all 8 checks passed" in capsys.readouterr().out
    for solution in (by_full_size_projection, by_eigenvectors, by_loops):
        check_projection_norm(solution, quiet=True)


# ----------------------------------------------------------------------------- named mistakes


def _svd(M):
    return np.linalg.svd(M, full_matrices=False)


def _top(M, r):
    U, _, Vt = _svd(M)
    return U[:, :r], Vt[:r].T


def _own_directions(W, M, r):
    U, V = _top(W, r)
    return np.linalg.norm(U.T @ W @ V)


def _swapped(W, M, r):
    U, V = _top(W, r)
    return np.linalg.norm(U.T @ M @ V)


def _columns_of_vt(W, M, r):
    U, _, Vt = _svd(M)
    return np.linalg.norm(U[:, :r].T @ W @ Vt[:, :r])


def _bottom(W, M, r):
    U, _, Vt = np.linalg.svd(M)
    return np.linalg.norm(U[:, -r:].T @ W @ Vt[-r:].T)


def _squared(W, M, r):
    U, V = _top(M, r)
    return np.sum((U.T @ W @ V) ** 2)


def _left_only(W, M, r):
    return np.linalg.norm(_top(M, r)[0].T @ W)


def _right_only(W, M, r):
    return np.linalg.norm(W @ _top(M, r)[1])


def _spectral(W, M, r):
    U, V = _top(M, r)
    return np.linalg.norm(U.T @ W @ V, 2)


def _one_more(W, M, r):
    U, V = _top(M, min(r + 1, min(M.shape)))
    return np.linalg.norm(U.T @ W @ V)


def _one_fewer(W, M, r):
    U, S, Vt = _svd(M)
    return np.linalg.norm(U[:, : r - 1].T @ W @ Vt[: r - 1].T)


def _weighted(W, M, r):
    U, S, Vt = _svd(M)
    return np.linalg.norm((U[:, :r] * S[:r]).T @ W @ (Vt[:r].T * S[:r]))


def _u_both_sides(W, M, r):
    U, V = _top(M, r)
    return np.linalg.norm(U.T @ W @ (U if M.shape[0] == M.shape[1] else V))


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (_own_directions, "top directions of W itself"),
        (_swapped, "other way round"),
        (_columns_of_vt, "COLUMNS of Vt"),
        (_bottom, "BOTTOM"),
        (_squared, "squared norm"),
        (_left_only, "one side only (U^T W)"),
        (_right_only, "one side only (W V)"),
        (_spectral, "spectral norm"),
        (_one_more, "(r + 1)"),
        (_one_fewer, "(r - 1)"),
        (_weighted, "weighted by M's singular values"),
        (_u_both_sides, "U on both sides"),
    ],
    ids=[
        "own",
        "swapped",
        "vt-columns",
        "bottom",
        "squared",
        "left-only",
        "right-only",
        "spectral",
        "one-more",
        "one-fewer",
        "weighted",
        "u-both",
    ],
)
def test_each_classic_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_projection_norm(wrong)
    assert phrase in str(info.value), str(info.value)


def test_u_on_both_sides_of_a_non_square_W_gets_a_hint():
    def u_both(W, M, r):
        U = _top(M, r)[0]
        return np.linalg.norm(U.T @ W @ U)

    with pytest.raises(ExerciseError) as info:
        check_projection_norm(u_both)
    assert "U^T" in str(info.value) and "rows of Vt" in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- soundness


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (None, "expected your function"),
        (lambda W, M, r: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda W, M, r: None, "forget `return`"),
        (lambda W, M, r: _top(M, r)[0].T @ W @ _top(M, r)[1], "expected one number"),
        (lambda W, M, r: float("nan"), "NaN"),
    ],
    ids=["not-callable", "stub", "none", "matrix", "nan"],
)
def test_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_projection_norm(bad)
    assert phrase in str(info.value), str(info.value)


def test_changing_an_input_is_refused():
    def in_place(W, M, r):
        value = ln.analysis.projection_norm(W, M, r)
        M -= M.mean()
        return value

    with pytest.raises(ExerciseError, match="changed its input M"):
        check_projection_norm(in_place)


def test_cases_cover_the_edges():
    seen = []

    def spy(W, M, r):
        seen.append((W.shape, r, W.dtype, np.array_equal(W, M)))
        return ln.analysis.projection_norm(W, M, r)

    check_projection_norm(spy, quiet=True)
    assert any(s[0] > s[1] for s, *_ in seen) and any(s[0] < s[1] for s, *_ in seen)
    assert any(s[0] == s[1] for s, *_ in seen)
    assert any(r == 1 for _, r, *_ in seen) and any(r == min(s) for s, r, *_ in seen)
    assert any(same for *_, same in seen) and any(dt == np.float32 for _, _, dt, _ in seen)


def test_passing_or_reference_falls_back_to_the_library(capsys):
    assert ln.checks.passing_or_reference(by_loops, "projection_norm") is by_loops
    fallback = ln.checks.passing_or_reference(_squared, "projection_norm")
    assert fallback is ln.analysis.projection_norm
    assert "using the library's projection_norm" in capsys.readouterr().out
