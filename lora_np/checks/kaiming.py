"""Checker for notebook 03's derivation: the bound of Kaiming-uniform initialisation.

``kaiming_bound(shape, a)`` returns the bound b of U(-b, b) that PyTorch's ``kaiming_uniform_``
draws a weight of ``shape`` = (fan_out, fan_in) from, for the negative slope ``a``: the
standard deviation gain / sqrt(fan_in) with gain = sqrt(2 / (1 + a^2)), turned into a bound
through Var U(-b, b) = b^2 / 3. With a = sqrt(5), PyTorch's default for Linear (and so for
loralib's and PEFT's A), this is 1 / sqrt(fan_in): what ``nn.Linear`` and ``LoRALinear``'s
"kaiming" start use. The shapes are never square and ``a`` takes several values, so the
fan-in, the gain and the square roots each change the answer.
"""

from __future__ import annotations

import math

from ._harness import as_array, call, compare, exercise, np, passed

__all__ = ["check_kaiming_bound", "kaiming_bound_reference"]


def kaiming_bound_reference(shape, a: float) -> float:
    """b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)); ``shape`` = (fan_out, fan_in)."""
    fan_in = shape[1]
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return gain * math.sqrt(3.0 / fan_in)


# (shape, a, description); a = sqrt(5) is PyTorch's default for Linear, a = 0 is ReLU's.
# At a = sqrt(5) gain^2 = gain / sqrt(3): "no square root" reads as "the std", so a = 0 comes first
_CASES = [
    ((64, 8), 0.0, "a weight (64, 8), a = 0 (ReLU's gain, sqrt(2))"),
    ((4, 32), math.sqrt(5), "A of shape (4, 32) (r = 4, k = 32), a = sqrt(5)"),
    ((7, 12), 1.0, "a weight (7, 12), a = 1 (gain 1)"),
    ((3, 100), math.sqrt(5), "A of shape (3, 100), a = sqrt(5)"),
    ((10, 6), 0.5, "a weight (10, 6), a = 0.5"),
]


def _mistakes(shape, a) -> list:
    fan_out, fan_in = shape
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return [
        (
            "It matches the standard deviation gain / sqrt(fan_in), not the bound: U(-b, b) has "
            "variance b^2 / 3, so b = sqrt(3) times the standard deviation.",
            gain / math.sqrt(fan_in),
        ),
        (
            "It uses fan_out (shape[0]): a weight (out, in) reads shape[1] numbers per output, "
            "and that fan-in sets the scale.",
            gain * math.sqrt(3.0 / fan_out),
        ),
        ("The gain is missing: multiply by sqrt(2 / (1 + a^2)).", math.sqrt(3.0 / fan_in)),
        (
            "The gain is 2 / (1 + a^2) without its square root.",
            2.0 / (1.0 + a * a) * math.sqrt(3.0 / fan_in),
        ),
        (
            "It matches Var = b^2 / 12, the variance of U(0, b): U(-b, b) spans 2b, so its "
            "variance is (2b)^2 / 12 = b^2 / 3.",
            gain * math.sqrt(12.0 / fan_in),
        ),
    ]


@exercise("kaiming_bound", kaiming_bound_reference)
def check_kaiming_bound(fn, *, quiet: bool = False) -> None:
    """Check ``fn(shape, a)`` -> the bound b of Kaiming-uniform U(-b, b) for a weight ``shape``."""
    name = "kaiming_bound"
    n_cases = 0
    rng = np.random.default_rng(20260522)  # hidden cases: the grader mixes this seed
    cases = list(_CASES)
    fan_out, fan_in = (int(v) for v in rng.integers(2, 200, size=2))
    if fan_out != fan_in:
        cases.append(
            ((fan_out, fan_in), float(rng.uniform(0, 3)), f"a weight ({fan_out}, {fan_in})")
        )
    for shape, a, case in cases:
        want = kaiming_bound_reference(shape, a)  # first
        got = call(fn, name, case, tuple(shape), a)
        got = as_array(got, name, case, ())
        compare(got, np.float64(want), name, case, _mistakes(shape, a), "bound")
        n_cases += 1
    passed(name, n_cases, quiet)
