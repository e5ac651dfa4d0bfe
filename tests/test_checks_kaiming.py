"""check_kaiming_bound accepts the bound derived different ways and names each classic mistake."""

import math

import numpy as np
import pytest

from lora_np.checks import check_kaiming_bound
from lora_np.checks._harness import ExerciseError
from lora_np.checks.kaiming import kaiming_bound_reference


def bound_from_std(shape, a):
    """Correct: the standard deviation first, then sqrt(3) of it, as a NumPy float32."""
    std = np.sqrt(2 / (1 + a**2)) / np.sqrt(shape[-1])
    return np.float32(std * np.sqrt(3))


def bound_one_root(shape, a):
    """Correct, written differently: one square root of 6 / ((1 + a^2) fan_in)."""
    _, fan_in = shape
    return math.sqrt(6 / ((1 + a * a) * fan_in))


def test_reference_and_independent_solutions_pass(capsys):
    check_kaiming_bound(kaiming_bound_reference)
    assert "✓ kaiming_bound: all 6 checks passed" in capsys.readouterr().out
    check_kaiming_bound(bound_from_std, quiet=True)
    check_kaiming_bound(bound_one_root, quiet=True)


def test_a_sqrt5_gives_one_over_sqrt_k():
    assert math.isclose(kaiming_bound_reference((4, 32), math.sqrt(5)), 1 / math.sqrt(32))


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda s, a: math.sqrt(2 / (1 + a * a)) / math.sqrt(s[1]), "not the bound"),
        (lambda s, a: math.sqrt(6 / ((1 + a * a) * s[0])), "It uses fan_out"),
        (lambda s, a: math.sqrt(3 / s[1]), "The gain is missing"),
        (lambda s, a: 2 / (1 + a * a) * math.sqrt(3 / s[1]), "without its square root"),
        (lambda s, a: math.sqrt(2 / (1 + a * a)) * math.sqrt(12 / s[1]), "U(0, b)"),
        (lambda s, a: 1 / math.sqrt(s[1]), "largest difference"),  # a = sqrt(5) only
        (lambda s, a: [math.sqrt(6 / ((1 + a * a) * s[1]))], "expected numbers"),
    ],
    ids=["std", "fan-out", "no-gain", "gain-squared", "b2-over-12", "a-ignored", "list"],
)
def test_each_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_kaiming_bound(wrong)
    assert phrase in str(info.value), str(info.value)
