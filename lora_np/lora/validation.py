"""The checks every LoRA operation runs before it changes anything, and the scaling rule.

Each function returns the checked value or raises a ValueError that names the value and what
was expected; :func:`check_each` runs one check on every layer of a model first, so an error
leaves the model unchanged.
"""

from __future__ import annotations

import math
import numbers

INITS = ("kaiming", "gaussian", "pissa")
"""Valid values of ``init``. For experiments with other starts (both zero, both random), set
``layer.A.data`` and ``layer.B.data`` by hand after construction."""

DEFAULT_ADAPTER = "default"
_RESERVED_NAMES = ("training",)  # attribute names a Module already uses


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
    if (
        not isinstance(name, str)
        or not name
        or "." in name
        or name.startswith("_")
        or name in _RESERVED_NAMES
    ):
        raise ValueError(
            f"adapter name must be a non-empty string without dots, not starting with '_' and "
            f"not {_RESERVED_NAMES}; got {name!r}"
        )
    return name
