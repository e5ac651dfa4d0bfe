"""SVD tools for looking inside weight matrices and their updates.

Everything here takes matrices (NumPy or CuPy arrays, or ``Tensor``s) and returns arrays of the
same library, or Python floats. Nothing builds a graph: this is measurement, not training.

The singular value decomposition M = U diag(S) V^T, with M of shape (d, k), U (d, n),
S (n,) in descending order, V (k, n) and n = min(d, k), answers every question of the course:

* how much of M's "energy" (its squared Frobenius norm, the sum of S**2) the top r directions
  hold: :func:`energy_rank`;
* the best rank-r approximation and how far from M it stays (Eckart–Young):
  :func:`best_rank_approximation`, :func:`eckart_young_error`;
* how much two learned subspaces overlap (the LoRA paper, §7.2, Eq. 4):
  :func:`subspace_similarity`, :func:`subspace_similarity_grid`;
* whether ΔW amplifies directions W already has (§7.3): :func:`projection_norm`,
  :func:`amplification_factor`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import backend
from .autograd import Tensor

# ----------------------------------------------------------------------------- helpers


def _module_of(array):
    """The array library an array belongs to: host NumPy or the CuPy backend."""
    kind = backend.array_module(array)
    if kind != "numpy":  # a device array (CuPy, or the numpy-strict test backend)
        if backend.name != kind:
            raise TypeError(
                f"got a {kind} array while the {backend.name} backend is in use; "
                "call to_numpy() first"
            )
        return backend.xp
    return backend.np


def _matrix(M, label: str = "M"):
    """``M`` as a 2-D floating-point array (Tensors give their data) and its array module."""
    if isinstance(M, Tensor):
        M = M.data
    if backend.array_module(M) == "numpy":  # host data; device arrays stay where they are
        M = backend.np.asarray(M)
    if M.ndim != 2:
        raise ValueError(f"{label} must be a 2-D matrix, got an array of shape {tuple(M.shape)}")
    if M.size == 0:
        raise ValueError(f"{label} must not be empty, got shape {tuple(M.shape)}")
    if M.dtype.kind != "f":
        M = M.astype("float64")
    return M, _module_of(M)


def _check_whole_number(r, max_rank: int, label: str = "r", allow_zero: bool = False) -> int:
    """``r`` as an int in [1, max_rank] (or [0, max_rank]); a ValueError naming it if not."""
    low = 0 if allow_zero else 1
    if isinstance(r, bool) or not isinstance(r, int | backend.np.integer):
        raise ValueError(f"{label} must be an integer, got {r!r}")
    if not low <= int(r) <= max_rank:
        raise ValueError(f"{label} must be between {low} and {max_rank} (min(d, k)), got {r}")
    return int(r)


def _svd(M):
    """Thin SVD: U (d, n), S (n,), Vt (n, k), n = min(d, k), S descending."""
    M, xp = _matrix(M)
    return xp.linalg.svd(M, full_matrices=False)


# ----------------------------------------------------------------------------- spectrum


def singular_values(M):
    """The singular values of M, largest first.

    Args:
        M: (d, k) matrix.
    Returns:
        (min(d, k),) array, descending, non-negative.
    """
    M, xp = _matrix(M)
    return xp.linalg.svd(M, compute_uv=False)


def energy_rank(M_or_singular_values, share: float = 0.9) -> int:
    """The smallest r whose top-r singular values hold ``share`` of the energy.

    Energy is the squared Frobenius norm, ||M||_F^2 = sum_i s_i^2, so the answer is the smallest
    r with s_1^2 + ... + s_r^2 >= share * sum_i s_i^2. A zero matrix needs rank 0.

    Args:
        M_or_singular_values: a (d, k) matrix, or its (n,) singular values (any order).
        share: the fraction of energy to hold, in (0, 1].
    Returns:
        r, an int in [0, n].
    """
    if not (isinstance(share, int | float) and 0.0 < share <= 1.0):
        raise ValueError(f"share must be a number in (0, 1], got {share!r}")
    values = M_or_singular_values
    if isinstance(values, Tensor):
        values = values.data
    if backend.array_module(values) == "numpy":
        values = backend.np.asarray(values, dtype="float64")
    if values.ndim == 2:
        values = singular_values(values)
    elif values.ndim != 1:
        raise ValueError(
            f"energy_rank takes a 2-D matrix or a 1-D array of singular values, got shape {tuple(values.shape)}"
        )
    energy = backend.to_numpy(values).astype("float64") ** 2
    energy = backend.np.sort(energy)[::-1]
    total = float(energy.sum())
    if total == 0.0:
        return 0
    held = backend.np.cumsum(energy) / total
    # A small tolerance so that share=1.0 is reached despite rounding in the cumulative sum.
    return int(backend.np.searchsorted(held, share - 1e-12) + 1)


# ----------------------------------------------------------------------------- Eckart–Young


def best_rank_approximation(M, r: int):
    """The closest matrix of rank at most r to M (in Frobenius and spectral norm).

    Eckart–Young: keep the top r terms of the SVD, M_r = U[:, :r] diag(S[:r]) V[:, :r]^T.

    Args:
        M: (d, k) matrix.
        r: the rank to keep, 0 <= r <= min(d, k) (0 gives the zero matrix).
    Returns:
        (d, k) array of M's library and dtype.
    """
    M, _ = _matrix(M)
    r = _check_whole_number(r, min(M.shape), allow_zero=True)
    U, S, Vt = _svd(M)
    return (U[:, :r] * S[:r]) @ Vt[:r]  # (d, r) scaled columns @ (r, k)


def eckart_young_error(M, r: int, norm: str = "fro") -> float:
    """How far the best rank-r approximation stays from M, read off the spectrum.

    ``norm="fro"``: ||M - M_r||_F = sqrt(s_{r+1}^2 + ... + s_n^2).
    ``norm="spectral"``: ||M - M_r||_2 = s_{r+1} (0 when r = n).
    No rank-r matrix does better; a LoRA update of rank r fitting M cannot go below this floor.

    Args:
        M: (d, k) matrix.
        r: 0 <= r <= min(d, k).
        norm: "fro" or "spectral".
    """
    if norm not in ("fro", "spectral"):
        raise ValueError(f"norm must be 'fro' or 'spectral', got {norm!r}")
    M, _ = _matrix(M)
    r = _check_whole_number(r, min(M.shape), allow_zero=True)
    tail = backend.to_numpy(singular_values(M)).astype("float64")[r:]
    if norm == "spectral":
        return float(tail[0]) if tail.size else 0.0
    return math.sqrt(float((tail**2).sum()))


# ----------------------------------------------------------------------------- subspace similarity


def _singular_vectors(M, side: str):
    """Columns = singular vectors of M, strongest first: left (d, n) or right (k, n)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    U, _, Vt = _svd(M)
    return U if side == "left" else Vt.T


def _paired_singular_vectors(M1, M2, side: str):
    """The ``side``-singular vectors of two matrices, checked to live in the same space.

    In float64 whatever the input, so φ from one pair and from the grid agree to 1e-12.
    """
    M1, _ = _matrix(M1, "M1")
    M2, _ = _matrix(M2, "M2")
    U1 = _singular_vectors(M1.astype("float64"), side)
    U2 = _singular_vectors(M2.astype("float64"), side)
    if U1.shape[0] != U2.shape[0]:
        raise ValueError(
            f"the {side}-singular vectors of M1 {tuple(M1.shape)} and M2 {tuple(M2.shape)} live "
            f"in spaces of different size ({U1.shape[0]} and {U2.shape[0]}); "
            f"compare A matrices with side='right' and B matrices with side='left'"
        )
    return U1, U2


def subspace_similarity(M1, M2, i: int, j: int, side: str = "right") -> float:
    """The LoRA paper's normalised subspace similarity φ (§7.2, Eq. 4).

    φ(M1, M2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), where U1 and U2 hold the
    singular vectors of M1 and M2 as columns, strongest first. It is 1 when the smaller of the
    two subspaces lies inside the other and 0 when they are orthogonal. Two random subspaces of
    dimensions i and j in R^n give about max(i, j) / n.

    Which singular vectors: §7.2 of the paper says right-singular vectors, Appendix G says
    left-singular ones. For LoRA's A of shape (r, k) we use the **right**-singular vectors
    (the default): they live in R^k, the layer's input space, so an A with r = 8 and one with
    r = 64 can be compared; A's left-singular vectors live in R^r and differ in size between
    the two. For B (d, r), or a whole ΔW (d, k) compared by its output directions, pass
    ``side="left"``.

    Args:
        M1: (r1, k) and M2: (r2, k) for side="right"; (d, r1) and (d, r2) for side="left".
        i: how many of M1's top directions, 1 <= i <= min(M1.shape).
        j: how many of M2's top directions, 1 <= j <= min(M2.shape).
        side: "right" (rows' space, input directions) or "left" (columns' space).
    Returns:
        φ in [0, 1].
    """
    U1, U2 = _paired_singular_vectors(M1, M2, side)
    i = _check_whole_number(i, U1.shape[1], "i")
    j = _check_whole_number(j, U2.shape[1], "j")
    overlap = U1[:, :i].T @ U2[:, :j]  # (i, j): cosines between the two sets of directions
    return float((overlap**2).sum()) / min(i, j)


def subspace_similarity_grid(M1, M2, side: str = "right", max_i=None, max_j=None):
    """φ(M1, M2, i, j) for every i and j at once (Figure 3 of the paper is this grid).

    Args:
        M1, M2: as in :func:`subspace_similarity`.
        side: "right" (default, for A matrices) or "left" (for B matrices).
        max_i, max_j: how many directions of each to include (default: all).
    Returns:
        (max_i, max_j) host NumPy array; entry [i - 1, j - 1] is φ(M1, M2, i, j).
    """
    U1, U2 = _paired_singular_vectors(M1, M2, side)
    n1 = U1.shape[1] if max_i is None else _check_whole_number(max_i, U1.shape[1], "max_i")
    n2 = U2.shape[1] if max_j is None else _check_whole_number(max_j, U2.shape[1], "max_j")
    np = backend.np
    squared = backend.to_numpy(U1[:, :n1].T @ U2[:, :n2]).astype("float64") ** 2  # (n1, n2)
    # ||U1[:, :i]^T U2[:, :j]||_F^2 is the sum of the top-left i x j block of `squared`.
    block_sums = squared.cumsum(axis=0).cumsum(axis=1)
    smaller = np.minimum.outer(np.arange(1, n1 + 1), np.arange(1, n2 + 1))
    return block_sums / smaller


# ----------------------------------------------------------------------------- ΔW against W


class Amplification(NamedTuple):
    """What :func:`amplification_factor` returns (unpacks like a tuple)."""

    factor: float
    """||ΔW||_F / ||U^T W V||_F."""
    projection_norm: float
    """||U^T W V||_F: how much of W lies in ΔW's top-r directions."""
    delta_norm: float
    """||ΔW||_F."""


def projection_norm(W, M, r: int) -> float:
    """||U^T W V||_F with U (d, r), V (k, r) the top-r left and right singular vectors of M.

    The paper's Table 7 reports this for M = ΔW, M = W itself and M random: how much of W lives
    in the r-dimensional subspace that M emphasises. (The paper writes U^T W V^T with V^T being
    the right-singular matrix as returned by SVD; it is the same quantity.)

    Args:
        W: (d, k) matrix, e.g. the pretrained weight.
        M: (d, k) matrix whose top-r directions to project on.
        r: 1 <= r <= min(d, k).
    """
    W, _ = _matrix(W, "W")
    M, _ = _matrix(M, "M")
    if W.shape != M.shape:
        raise ValueError(f"W {tuple(W.shape)} and M {tuple(M.shape)} must have the same shape")
    r = _check_whole_number(r, min(M.shape))
    U, _, Vt = _svd(M)
    projected = U[:, :r].T @ W @ Vt[:r].T  # (r, d) @ (d, k) @ (k, r) -> (r, r)
    return math.sqrt(float((backend.to_numpy(projected).astype("float64") ** 2).sum()))


def amplification_factor(delta_W, W, r: int) -> Amplification:
    """How strongly ΔW amplifies directions of W (the LoRA paper, §7.3).

    factor = ||ΔW||_F / ||U^T W V||_F, with U, V the top-r left/right singular vectors of ΔW.
    A large factor means ΔW points along directions that W holds only weakly: the update
    amplifies features W has but does not emphasise (the paper finds ≈ 21.5 for r = 4).

    Args:
        delta_W: (d, k) the update, e.g. ``layer.delta_weight()``.
        W: (d, k) the pretrained weight.
        r: how many of ΔW's directions to use, 1 <= r <= min(d, k).
    Returns:
        Amplification(factor, projection_norm, delta_norm); factor is inf if the projection is 0.
    """
    delta_W, _ = _matrix(delta_W, "delta_W")
    projected = projection_norm(W, delta_W, r)
    delta_norm = math.sqrt(float((backend.to_numpy(delta_W).astype("float64") ** 2).sum()))
    factor = delta_norm / projected if projected > 0 else math.inf
    return Amplification(factor, projected, delta_norm)
