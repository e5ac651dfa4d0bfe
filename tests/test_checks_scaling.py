"""The notebook 04 checkers: correct solutions pass, the classic wrong ones are named."""

import math

import numpy as np
import pytest

from lora_np.checks import check_adam_first_update, check_lora_scaling
from lora_np.checks.scaling import reference_adam_first_update, reference_lora_scaling


# ---------------------------------------------------------------- lora_scaling
def scaling_numpy(alpha, r, rslora=False):  # a NumPy float32 answer, written differently
    return np.float32(alpha) / (np.sqrt(np.float32(r)) if rslora else np.float32(r))


def scaling_power(alpha, r, rslora=False):
    return alpha * r ** (-0.5 if rslora else -1.0)


@pytest.mark.parametrize("fn", [reference_lora_scaling, scaling_numpy, scaling_power])
def test_correct_scaling_passes(fn, capsys):
    check_lora_scaling(fn)
    assert "lora_scaling: all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda alpha, r, rslora=False: alpha / r, "rsLoRA was ignored"),
        (lambda alpha, r, rslora=False: alpha * r, "alpha * r"),
        (lambda alpha, r, rslora=False: r / alpha, "r / alpha"),
        (
            lambda alpha, r, rslora=False: alpha // math.sqrt(r) if rslora else alpha // r,
            "integer division",
        ),
        (
            lambda alpha, r, rslora=False: math.sqrt(alpha) / (math.sqrt(r) if rslora else r),
            "sqrt(alpha)",
        ),
        (lambda alpha, r, rslora=False: alpha / math.sqrt(r), "without rsLoRA"),
        (lambda alpha, r, rslora=True: alpha / math.sqrt(r) if rslora else alpha / r, "default"),
    ],
)
def test_wrong_scaling_is_named(fn, words):
    with pytest.raises(AssertionError) as err:
        check_lora_scaling(fn)
    assert words in str(err.value), str(err.value)


def test_scaling_stub_non_callable_nan_shape():
    def stub(alpha, r, rslora=False):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        check_lora_scaling(stub)
    with pytest.raises(AssertionError, match="expected your function"):
        check_lora_scaling(8.0)
    with pytest.raises(AssertionError, match="NaN"):
        check_lora_scaling(lambda alpha, r, rslora=False: float("nan"))
    with pytest.raises(AssertionError, match="a list of 2 items"):
        check_lora_scaling(lambda alpha, r, rslora=False: [alpha / r, alpha / r])
    with pytest.raises(AssertionError, match="rslora"):
        check_lora_scaling(lambda alpha, r: alpha / r)  # no rslora argument at all


# ---------------------------------------------------------------- adam_first_update
def adam_sign(G, A, scaling, lr):
    return -scaling * lr * np.sign(scaling * G @ A.T) @ A


def adam_loops_float32(G, A, scaling, lr):  # entry by entry, float32
    G, A = np.asarray(G, np.float32), np.asarray(A, np.float32)
    d, r = G.shape[0], A.shape[0]
    step_B = np.zeros((d, r), np.float32)
    for i in range(d):
        for j in range(r):
            g = scaling * float(G[i] @ A[j])
            step_B[i, j] = -lr * g / (abs(g) + 1e-8)
    return scaling * step_B @ A


@pytest.mark.parametrize("fn", [reference_adam_first_update, adam_sign, adam_loops_float32])
def test_correct_adam_update_passes(fn, capsys):
    check_adam_first_update(fn)
    assert "adam_first_update: all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda G, A, s, lr: -s * lr * (s * G @ A.T) @ A, "plain gradient step"),
        (lambda G, A, s, lr: -adam_sign(G, A, s, lr), "uphill"),
        (lambda G, A, s, lr: adam_sign(G, A, s, lr) / s, "scale s is missing"),
        (lambda G, A, s, lr: adam_sign(G, A, s, lr) * s, "applied twice"),
        (lambda G, A, s, lr: -lr * np.sign(s * G @ A.T), "the step of B"),
    ],
)
def test_wrong_adam_update_is_named(fn, words):
    with pytest.raises(AssertionError) as err:
        check_adam_first_update(fn)
    assert words in str(err.value), str(err.value)


def test_adam_update_stub_and_nan():
    def stub(G, A, s, lr):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        check_adam_first_update(stub)
    with pytest.raises(AssertionError, match="NaN"):
        check_adam_first_update(lambda G, A, s, lr: adam_sign(G, A, s, lr) * np.nan)


# ---------------------------------------------------------------- soundness and split cases
def test_a_complex_scale_is_refused():
    def complex_scale(alpha, r, rslora=False):
        return complex(alpha / (math.sqrt(r) if rslora else r), 0.0)

    with pytest.raises(AssertionError, match="complex"):
        check_lora_scaling(complex_scale)


def test_a_bool_scale_is_refused():
    with pytest.raises(AssertionError, match="bool"):
        check_lora_scaling(lambda alpha, r, rslora=False: True)


def test_alpha_over_r_squared_is_named_as_itself():
    # at alpha = 16, r = 4, alpha / r**2 = sqrt(alpha) / r = 1: the first case must tell them apart
    with pytest.raises(AssertionError) as info:
        check_lora_scaling(lambda alpha, r, rslora=False: alpha / r**2)
    assert "alpha / r**2" in str(info.value) and "sqrt" not in str(info.value)


def test_the_first_cases_give_every_mistake_its_own_number():
    from lora_np.checks.scaling import _scaling_mistakes

    for alpha, r in [(12, 8), (8, 3)]:  # the cases run first, with rslora left out
        want = alpha / r
        values = [v for _, v in _scaling_mistakes(alpha, r, False) if v is not None and v != want]
        assert len(set(values)) == len(values), (alpha, r, values)


def test_an_adam_step_that_changes_G_is_refused():
    def scales_G(G, A, scaling, lr):
        G *= scaling  # the caller's gradient changed
        return -lr * np.sign(G @ A.T) @ A * scaling

    with pytest.raises(AssertionError, match="changed its input G"):
        check_adam_first_update(scales_G)
