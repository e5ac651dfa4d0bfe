"""Combining adapters into a new one (PEFT's ``add_weighted_adapter``): cat, linear, svd, ties.

Checked against PEFT 0.21 in ``tests/crosscheck/test_combine_peft.py``, which also pins where we
differ on purpose (see ``combine_adapters``).
"""

from __future__ import annotations

import math
import numbers

from .. import backend
from .dora import DoRALinear
from .layer import LoRAAdapter, LoRALinear
from .targeting import lora_layers_or_error
from .validation import check_adapter_name, check_each, check_rank

_HOWS = ("cat", "linear", "svd", "ties", "ties_svd")
_SAME_RANK = ("linear", "ties")  # they add the factors entry by entry


def _ties(tensors, weights, density: float):
    """PEFT's TIES merge of n same-shape task tensors T_i (n, ...) with weights c_i.

    1. Trim: keep the int(density * size) entries of each T_i largest in magnitude, zero the rest.
    2. Elect: each entry's sign is that of sum_i T_i (the trimmed tensors, unweighted; 0 -> +).
    3. Disjoint mean: average c_i T_i over the i whose entry has the elected sign (a zero never
       has it), so agreeing tasks are averaged, not added, and disagreeing ones are dropped.
    """
    xp = backend.xp
    T = xp.stack(tensors)  # (n, ...)
    flat = xp.abs(T.reshape(len(T), -1))
    keep = int(density * flat.shape[1])
    if keep < flat.shape[1]:  # PEFT prunes nothing at density 1
        # the keep-th largest magnitude per tensor; exact ties at it are measure zero
        cut = xp.sort(flat, axis=1)[:, -keep] if keep else xp.full(len(T), xp.inf)
        T = T * (flat >= cut[:, None]).reshape(T.shape)
    agree = xp.sign(T) == xp.where(T.sum(axis=0) >= 0, 1.0, -1.0)
    c = xp.asarray(weights, dtype=T.dtype).reshape((-1,) + (1,) * (T.ndim - 1))
    return (c * T * agree).sum(axis=0) / xp.maximum(agree.sum(axis=0), 1)


def _truncate(delta, rank: int):
    """(A (rank, k), B (d, rank)) with B A the best rank-``rank`` approximation of delta (d, k).

    Split evenly, A = sqrt(S) V^T and B = U sqrt(S) (PEFT puts all of S into B; B A is equal).
    """
    U, S, Vt = backend.xp.linalg.svd(delta, full_matrices=False)
    root = backend.xp.sqrt(S[:rank])
    return root[:, None] * Vt[:rank], U[:, :rank] * root


def _combined_weights(layer: LoRALinear, names, weights, how: str, rank, density):
    """(A (rank, k), B (d, rank)) of the combination on one layer; the new adapter has scaling 1."""
    xp = backend.xp
    adapters = [layer.adapters[n] for n in names]
    coefs = [w * a.scaling for a, w in zip(adapters, weights)]  # c_i = w_i s_i
    if how == "cat":
        # [B_1 ... B_n] [c_1 A_1; ...; c_n A_n] = sum_i c_i B_i A_i: exact.
        A = xp.concatenate([c * a.A.data for a, c in zip(adapters, coefs)], axis=0)
        B = xp.concatenate([a.B.data for a in adapters], axis=1)
        return A, B
    if how in _SAME_RANK:
        # The factors are combined entry by entry, with sqrt|c_i| on each side and the sign of
        # c_i on A's: B A holds sum_i c_i B_i A_i (for "linear") plus the cross terms B_i A_j.
        roots_B = [math.sqrt(abs(c)) for c in coefs]
        roots_A = [math.copysign(r, c) for r, c in zip(roots_B, coefs)]
        if how == "linear":
            A = sum(r * a.A.data for a, r in zip(adapters, roots_A))
            B = sum(r * a.B.data for a, r in zip(adapters, roots_B))
            return A, B
        A = _ties([a.A.data for a in adapters], roots_A, density)
        B = _ties([a.B.data for a in adapters], roots_B, density)
        return A, B
    # "svd", "ties_svd": the merged update sum_i w_i ΔW_i (or TIES of the ΔW_i, weights w_i),
    # where ΔW_i = s_i B_i A_i already holds each scaling once, truncated to `rank`.
    deltas = [a.delta_weight().astype("float64") for a in adapters]
    if how == "svd":
        delta = sum(w * d for w, d in zip(weights, deltas))
    else:
        delta = _ties(deltas, weights, density)
    return _truncate(delta, rank)


def combine_adapters(
    target,
    names,
    weights,
    how: str = "cat",
    new_name: str = "combined",
    rank=None,
    density=None,
) -> list:
    """Add a new adapter ``new_name`` built from existing ones (PEFT's ``add_weighted_adapter``).

    With c_i = w_i s_i (weight times scaling) and ΔW_i = s_i B_i A_i (d, k), per layer:
        "cat": rank = sum of ranks; ΔW_new = sum_i w_i ΔW_i exactly.
        "linear": equal ranks r; A = sum_i sign(c_i) sqrt|c_i| A_i, B = sum_i sqrt|c_i| B_i.
            Not exact: B A also holds the cross terms sign(c_j) sqrt|c_i c_j| B_i A_j.
        "svd": sum_i w_i ΔW_i truncated to ``rank`` (default: the largest rank), the best
            approximation of that rank (Eckart-Young); A and B share the singular values.
        "ties": equal ranks; A and B each by TIES (below) of the A_i with weights
            sign(c_i) sqrt|c_i| and of the B_i with weights sqrt|c_i| (PEFT's "ties": on the
            factors, so B A has cross terms as with "linear").
        "ties_svd": TIES of the ΔW_i with weights w_i, truncated as "svd".
    TIES, as PEFT computes it: keep the ``density`` share of each tensor's
    entries largest in magnitude, elect each entry's sign from the unweighted sum, average the
    weighted entries that have that sign (PEFT's majority_sign_method="total").
    The new adapter has alpha = rank (scaling 1, no rsLoRA, no dropout) and is added inactive
    (``set_adapter`` to use it). Unlike PEFT 0.21, on purpose (pinned in the crosscheck): the
    default is "cat", which is exact (PEFT's is "svd"); one adapter keeps ``how`` and ``rank``
    (PEFT switches to "linear" and ignores the rank); the new scaling is 1 even when the first
    adapter uses rsLoRA (PEFT's is then sqrt(rank)); an existing ``new_name``, too few weights,
    rank=0 and a "cat" rank above min(d, k) raise (PEFT skips, zips, uses the default rank,
    accepts).

    Args:
        target: a LoRALinear or a model (every LoRA layer must hold all ``names``).
        names: adapter names (a single name is one adapter).
        weights: one finite real number per name (negative subtracts).
        rank: only for "svd" and "ties_svd": an integer 1 <= rank <= min(d, k).
        density: only for "ties" and "ties_svd", and needed there: the fraction of entries
            each task tensor keeps, a number with 0 < density <= 1.
    Raises:
        RuntimeError while a layer is merged; KeyError for a missing adapter; ValueError for
        other bad arguments. Nothing changes on an error.
    Returns:
        The names of the layers changed ("" for a single layer).
    """
    layers = [("", target)] if isinstance(target, LoRALinear) else lora_layers_or_error(target)
    names = [names] if isinstance(names, str) else list(names)
    weights = [weights] if isinstance(weights, numbers.Real) else list(weights)
    if not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise ValueError(f"combine_adapters: weights must be real numbers, got {weights}")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"combine_adapters: weights must be finite, got {weights}")
    if not names or len(names) != len(weights):
        raise ValueError(f"need one weight per adapter, got names {names} and weights {weights}")
    if how not in _HOWS:
        raise ValueError(f"how must be one of {', '.join(map(repr, _HOWS))}, got {how!r}")
    check_adapter_name(new_name)
    if rank is not None and not how.endswith("svd"):
        raise ValueError(
            f"rank is only used by 'svd' and 'ties_svd', got rank={rank!r} with {how!r}"
        )
    if how.startswith("ties") != (density is not None):
        raise ValueError(
            f"density is needed by 'ties' and 'ties_svd' only, got {density!r} with {how!r}"
        )
    if density is not None and (
        isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1
    ):
        raise ValueError(f"density must be a number with 0 < density <= 1, got {density!r}")
    plans = []

    def plan(layer) -> None:
        if isinstance(layer, DoRALinear):  # m and the norm of W0 + s·B A do not combine
            raise ValueError(
                "combine_adapters combines LoRA updates s·B·A; a DoRA layer's adapters also "
                "carry a magnitude that no combination of theirs defines"
            )
        layer._require_unmerged("combine adapters")
        ranks = [layer.adapters[n].r for n in names]  # KeyError if missing
        if new_name in layer.adapters:
            raise ValueError(f"this layer already has an adapter named {new_name!r}")
        if how in _SAME_RANK and len(set(ranks)) != 1:
            raise ValueError(f"{how!r} needs adapters of equal rank, got ranks {ranks}")
        new_rank = sum(ranks) if how == "cat" else ranks[0] if how in _SAME_RANK else rank
        new_rank = max(ranks) if new_rank is None else new_rank
        check_rank(new_rank, layer.out_features, layer.in_features)
        plans.append((layer, new_rank))

    check_each(layers, plan)
    for layer, new_rank in plans:
        A, B = _combined_weights(layer, names, weights, how, new_rank, density)
        dtype = layer.base.weight.dtype
        # Built directly from A and B (alpha = r: scaling 1): add_adapter would draw a random
        # A from the global generator only to throw it away, shifting every later seeded draw.
        adapter = LoRAAdapter(
            A.astype(dtype), B.astype(dtype), float(new_rank), False, 0.0, "kaiming"
        )
        adapter.requires_grad_(False)
        setattr(layer.adapters, new_name, adapter)
    return [n for n, _ in layers]
