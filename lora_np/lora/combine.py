"""Combining adapters into a new one (PEFT's ``add_weighted_adapter``): cat, linear, svd."""

from __future__ import annotations

import math
import numbers

from .. import backend
from .layer import LoRAAdapter, LoRALinear
from .targeting import lora_layers_or_error
from .validation import check_adapter_name, check_each, check_rank


def _combined_weights(layer: LoRALinear, names, weights, how: str, rank):
    """(A, B) of the combination on one layer; the new adapter has scaling 1 (alpha = r)."""
    xp = backend.xp
    adapters = [layer.adapters[n] for n in names]
    if how == "cat":
        # [B_1 ... B_n] [w_1 s_1 A_1; ...; w_n s_n A_n] = sum_i w_i s_i B_i A_i: exact.
        A = xp.concatenate([w * a.scaling * a.A.data for a, w in zip(adapters, weights)], axis=0)
        B = xp.concatenate([a.B.data for a in adapters], axis=1)
        return A, B
    if how == "linear":
        # Average the factors (PEFT's "linear"): not the average of the updates, because
        # (sum B_i)(sum A_j) has cross terms B_i A_j.
        roots = [math.sqrt(w * a.scaling) for a, w in zip(adapters, weights)]
        A = sum(c * a.A.data for a, c in zip(adapters, roots))
        B = sum(c * a.B.data for a, c in zip(adapters, roots))
        return A, B
    # "svd": the best rank-`rank` approximation of the weighted sum of updates.
    delta = sum(w * a.delta_weight().astype("float64") for a, w in zip(adapters, weights))
    U, S, Vt = xp.linalg.svd(delta, full_matrices=False)
    root = xp.sqrt(S[:rank])
    dtype = adapters[0].A.dtype
    return (root[:, None] * Vt[:rank]).astype(dtype), (U[:, :rank] * root).astype(dtype)


def combine_adapters(
    target, names, weights, how: str = "cat", new_name: str = "combined", rank=None
) -> list:
    """Add a new adapter ``new_name`` built from existing ones (PEFT's ``add_weighted_adapter``).

    how:
        "cat": rank = sum of ranks; ΔW_new = sum_i w_i s_i B_i A_i exactly.
        "linear": needs equal ranks; A = sum_i sqrt(w_i s_i) A_i and B likewise; weights >= 0.
            Not exact: B_new A_new also holds the cross terms B_i A_j.
        "svd": the weighted sum of updates truncated to ``rank`` (default: the largest rank),
            the best approximation of that rank (Eckart–Young).
    The new adapter has alpha = r (scaling 1), is added inactive (``set_adapter`` to use it).

    Args:
        target: a LoRALinear or a model (every LoRA layer must hold all ``names``).
        names: adapter names (a single name is one adapter).
        weights: one finite real number per name.
        rank: only for "svd": an integer 1 <= rank <= min(d, k).
    Raises:
        RuntimeError while a layer is merged; ValueError for bad arguments. Nothing changes
        on an error.
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
    if how not in ("cat", "linear", "svd"):
        raise ValueError(f"how must be 'cat', 'linear' or 'svd', got {how!r}")
    if how == "linear" and any(w < 0 for w in weights):
        raise ValueError(
            f"'linear' takes square roots of the weights; they must be >= 0, got {weights}"
        )
    check_adapter_name(new_name)
    if rank is not None and how != "svd":
        raise ValueError(f"rank is only used by how='svd', got rank={rank!r} with how={how!r}")
    plans = []

    def plan(layer) -> None:
        layer._require_unmerged("combine adapters")
        ranks = [layer.adapters[n].r for n in names]  # KeyError if missing
        if new_name in layer.adapters:
            raise ValueError(f"this layer already has an adapter named {new_name!r}")
        if how == "linear" and len(set(ranks)) != 1:
            raise ValueError(f"'linear' needs adapters of equal rank, got ranks {ranks}")
        new_rank = {
            "cat": sum(ranks),
            "linear": ranks[0],
            "svd": max(ranks) if rank is None else rank,
        }[how]
        check_rank(new_rank, layer.out_features, layer.in_features)
        plans.append((layer, new_rank))

    check_each(layers, plan)
    for layer, new_rank in plans:
        A, B = _combined_weights(layer, names, weights, how, new_rank)
        dtype = layer.base.weight.dtype
        # Built directly from A and B (alpha = r: scaling 1): add_adapter would draw a random
        # A from the global generator only to throw it away, shifting every later seeded draw.
        adapter = LoRAAdapter(
            A.astype(dtype), B.astype(dtype), float(new_rank), False, 0.0, "kaiming"
        )
        adapter.requires_grad_(False)
        setattr(layer.adapters, new_name, adapter)
    return [n for n, _ in layers]
