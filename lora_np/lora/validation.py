"""The checks every LoRA operation runs before it changes anything, and the scaling rule.

Each function returns the checked value or raises a ValueError that names the value and what
was expected; :func:`check_each` runs one check on every layer of a model first, so an error
leaves the model unchanged.
"""

from __future__ import annotations

import math
import numbers

from .. import nn

INITS = ("kaiming", "gaussian", "pissa")
"""Valid values of ``init``. For experiments with other starts (both zero, both random), set
``layer.A.data`` and ``layer.B.data`` by hand after construction."""

DEFAULT_ADAPTER = "default"
# Adapters are attributes of a Module (so parameters are named adapters.<name>.A): a name
# that is already an attribute would hide a method (named_children, train, ...) and break the
# model for good. Refused: every attribute of nn.Module, ``training`` (set per instance) and
# ``names`` (the adapter container's own method).
_RESERVED_NAMES = frozenset(name for name in dir(nn.Module) if not name.startswith("_")) | {
    "training",
    "names",
}


def scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def check_rank(r, d: int, k: int) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r} ({type(r).__name__})")
    if not 1 <= r <= min(d, k):
        raise ValueError(
            f"LoRA rank r must be between 1 and min(d, k) = min({d}, {k}) = {min(d, k)} for this "
            f"layer, got r={r}"
        )
    return int(r)


def check_alpha(alpha) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"lora alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def check_options(init, dropout, rslora) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(map(repr, INITS))}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"lora dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(rslora, bool):
        raise ValueError(f"rslora must be True or False, got {rslora!r}")


def check_adapter_name(name) -> str:
    """An adapter name: a non-empty string, no dots, no leading '_', not a Module attribute."""
    if not isinstance(name, str) or not name or "." in name or name.startswith("_"):
        raise ValueError(
            f"adapter name must be a non-empty string without dots, not starting with '_'; "
            f"got {name!r}"
        )
    if name in _RESERVED_NAMES:
        raise ValueError(
            f"adapter name {name!r} is already an attribute of a Module (it would hide "
            f"{name!r}); choose another name"
        )
    return name


def check_each(layers, check) -> None:
    """Run ``check(layer)`` on every ``(name, layer)`` before anything changes.

    The error of the first layer that fails is raised again with that layer's name in front,
    so a model-wide operation either passes every check or leaves every layer as it was.
    """
    for layer_name, layer in layers:
        try:
            check(layer)
        except (ValueError, RuntimeError, KeyError) as err:
            text = err.args[0] if err.args else str(err)
            raise type(err)(f"{layer_name or 'the layer'}: {text}") from None
