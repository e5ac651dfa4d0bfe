"""lora_np.analysis: spectra, Eckart–Young, subspace similarity, amplification."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import analysis


def _with_spectrum(singular, d, k, seed=0):
    """A (d, k) matrix whose singular values are exactly ``singular`` (random directions)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((d, len(singular))))
    V, _ = np.linalg.qr(rng.standard_normal((k, len(singular))))
    return (U * np.asarray(singular, dtype=float)) @ V.T


def test_singular_values_descending_and_exact():
    M = _with_spectrum([5.0, 3.0, 1.0, 0.5], 10, 7)
    s = analysis.singular_values(M)
    assert s.shape == (7,)
    np.testing.assert_allclose(s[:4], [5.0, 3.0, 1.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(s[4:], 0.0, atol=1e-12)


def test_accepts_tensors_and_float32():
    M = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    s = analysis.singular_values(ln.Tensor(M))
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False), rtol=1e-6)


def test_energy_rank_on_a_constructed_spectrum():
    # squared values 16, 9, 4, 1 -> total 30; cumulative shares 0.533, 0.833, 0.967, 1.0
    values = np.array([4.0, 3.0, 2.0, 1.0])
    assert analysis.energy_rank(values, 0.5) == 1
    assert analysis.energy_rank(values, 0.8) == 2
    assert analysis.energy_rank(values, 0.9) == 3
    assert analysis.energy_rank(values, 1.0) == 4
    assert analysis.energy_rank(values[::-1], 0.8) == 2  # order does not matter
    M = _with_spectrum(values, 9, 6)
    assert analysis.energy_rank(M, 0.9) == 3  # the matrix gives the same answer
    assert analysis.energy_rank(np.zeros((3, 3))) == 0


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, "half"])
def test_energy_rank_rejects_bad_share(share):
    with pytest.raises(ValueError, match="share"):
        analysis.energy_rank(np.ones(3), share)


@pytest.mark.parametrize("r", [0, 1, 3, 6])
def test_eckart_young_error_is_the_truncated_svd_residual(r):
    M = np.random.default_rng(2).standard_normal((8, 6))
    approx = analysis.best_rank_approximation(M, r)
    assert approx.shape == M.shape
    assert np.linalg.matrix_rank(approx) == r
    residual = M - approx
    assert analysis.eckart_young_error(M, r) == pytest.approx(np.linalg.norm(residual), abs=1e-12)
    spectral = np.linalg.norm(residual, 2) if r < 6 else 0.0
    assert analysis.eckart_young_error(M, r, norm="spectral") == pytest.approx(spectral, abs=1e-12)
    s = np.linalg.svd(M, compute_uv=False)
    assert analysis.eckart_young_error(M, r) == pytest.approx(math.sqrt((s[r:] ** 2).sum()))


def test_no_random_rank_r_matrix_beats_the_bound():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((10, 8))
    floor = analysis.eckart_young_error(M, 2)
    for _ in range(50):
        candidate = rng.standard_normal((10, 2)) @ rng.standard_normal((2, 8))
        assert np.linalg.norm(M - candidate) >= floor


@pytest.mark.parametrize("bad", [-1, 7, 2.0, True, "2"])
def test_rank_validation(bad):
    with pytest.raises(ValueError, match="r must"):
        analysis.best_rank_approximation(np.ones((6, 8)), bad)


def test_matrix_validation():
    with pytest.raises(ValueError, match="2-D"):
        analysis.singular_values(np.ones(4))
    with pytest.raises(ValueError, match="norm"):
        analysis.eckart_young_error(np.ones((2, 2)), 1, norm="nuclear")


def test_subspace_similarity_same_subspace_is_one():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4, 30))
    mixed = rng.standard_normal((4, 4)) @ A  # same row space, other basis
    for i in range(1, 5):
        assert analysis.subspace_similarity(A, A, i, i) == pytest.approx(1.0)
    assert analysis.subspace_similarity(A, mixed, 4, 4) == pytest.approx(1.0)
    # a subspace inside a bigger one: the smaller one is fully contained
    bigger = np.vstack([A, rng.standard_normal((6, 30))])
    assert analysis.subspace_similarity(A, bigger, 4, 10) == pytest.approx(1.0)


def test_subspace_similarity_orthogonal_is_zero():
    eye = np.eye(10)
    assert analysis.subspace_similarity(eye[:3], eye[5:8], 3, 3) == pytest.approx(0.0, abs=1e-12)


def test_subspace_similarity_random_is_about_max_i_j_over_k():
    rng = np.random.default_rng(5)
    k = 400
    values = [
        analysis.subspace_similarity(
            rng.standard_normal((8, k)), rng.standard_normal((64, k)), 8, 64
        )
        for _ in range(5)
    ]
    assert 0.0 <= min(values) and max(values) <= 1.0
    assert np.mean(values) == pytest.approx(64 / k, rel=0.15)


def test_subspace_similarity_grid_matches_pointwise():
    rng = np.random.default_rng(6)
    A1, A2 = rng.standard_normal((4, 20)), rng.standard_normal((6, 20))
    grid = analysis.subspace_similarity_grid(A1, A2)
    assert grid.shape == (4, 6)
    for i in range(1, 5):
        for j in range(1, 7):
            assert grid[i - 1, j - 1] == pytest.approx(analysis.subspace_similarity(A1, A2, i, j))
    assert analysis.subspace_similarity_grid(A1, A2, max_i=2, max_j=3).shape == (2, 3)
    assert ((grid >= -1e-12) & (grid <= 1 + 1e-12)).all()


def test_subspace_similarity_side():
    rng = np.random.default_rng(7)
    B1, B2 = rng.standard_normal((20, 4)), rng.standard_normal((20, 8))  # B matrices: (d, r)
    assert 0 <= analysis.subspace_similarity(B1, B2, 4, 8, side="left") <= 1
    with pytest.raises(ValueError, match="side='left'"):
        analysis.subspace_similarity(B1, B2, 4, 8)  # right vectors: R^4 vs R^8
    with pytest.raises(ValueError, match="side"):
        analysis.subspace_similarity(B1, B1, 1, 1, side="up")
    with pytest.raises(ValueError, match="i must"):
        analysis.subspace_similarity(B1, B2, 5, 1, side="left")


def test_amplification_on_a_constructed_case():
    # W = diag(10, 5, 1, 0.1, ...) and ΔW = 3 e_4 e_4^T: ΔW points along W's 4th direction,
    # where W has 0.1, so the projection is 0.1 and the factor 3 / 0.1 = 30.
    W = np.diag([10.0, 5.0, 1.0, 0.1, 0.05, 0.01])
    delta = np.zeros((6, 6))
    delta[3, 3] = 3.0
    result = analysis.amplification_factor(delta, W, 1)
    assert result.projection_norm == pytest.approx(0.1)
    assert result.delta_norm == pytest.approx(3.0)
    assert result.factor == pytest.approx(30.0)
    factor, projected, norm = result  # unpacks like a tuple
    # projecting W on its own top direction gives its largest singular value
    assert analysis.projection_norm(W, W, 1) == pytest.approx(10.0)
    assert analysis.projection_norm(W, W, 2) == pytest.approx(math.hypot(10.0, 5.0))
    with pytest.raises(ValueError, match="same shape"):
        analysis.amplification_factor(np.ones((3, 4)), np.ones((4, 3)), 1)
