"""The notebook 03 checkers: correct solutions pass, the classic wrong ones are named."""

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_init_lora, check_pissa_init
from lora_np.checks.initialisation import reference_init_lora, reference_pissa_init


# ---------------------------------------------------------------- init_lora: correct versions
def init_float32(d, k, r, rng):
    bound = 1 / math.sqrt(k)
    return rng.uniform(-bound, bound, size=(r, k)).astype(np.float32), np.zeros((d, r), "float32")


def init_by_rows(d, k, r, rng):  # another draw order: one row at a time, from random()
    A = np.empty((r, k))
    for i in range(r):
        A[i] = (2 * rng.random(k) - 1) / np.sqrt(k)
    return A, np.zeros((d, r))


def init_transposed_draw(d, k, r, rng):  # drawn as (k, r) and transposed: still U(+-1/sqrt k)
    return rng.uniform(-1, 1, size=(k, r)).T / np.sqrt(k), np.zeros((d, r))


@pytest.mark.parametrize(
    "fn", [reference_init_lora, init_float32, init_by_rows, init_transposed_draw]
)
def test_correct_init_lora_passes(fn, capsys):
    check_init_lora(fn)
    assert "init_lora: all" in capsys.readouterr().out


def test_reference_uses_rng_and_leaves_the_library_stream_alone():
    ln.manual_seed(7)
    expected_next = ln.backend.rng().random()
    ln.manual_seed(7)
    A1, _ = reference_init_lora(8, 16, 4, np.random.default_rng(3))
    A2, _ = reference_init_lora(8, 16, 4, np.random.default_rng(3))
    assert np.array_equal(A1, A2)
    assert ln.backend.rng().random() == expected_next


# ---------------------------------------------------------------- init_lora: wrong versions
def kaiming(d, k, r, rng, bound=None):
    bound = 1 / math.sqrt(k) if bound is None else bound
    return rng.uniform(-bound, bound, size=(r, k)), np.zeros((d, r))


WRONG_INIT = {
    "B random": (
        lambda d, k, r, rng: (kaiming(d, k, r, rng)[0], rng.uniform(-0.5, 0.5, (d, r))),
        "B must start at exactly 0",
    ),
    "A zero": (lambda d, k, r, rng: (np.zeros((r, k)), np.zeros((d, r))), "A is all zeros"),
    "A Gaussian": (
        lambda d, k, r, rng: (rng.standard_normal((r, k)) / np.sqrt(3 * k), np.zeros((d, r))),
        "Gaussian",
    ),
    "A Gaussian std 1/r": (
        lambda d, k, r, rng: (rng.standard_normal((r, k)) / r, np.zeros((d, r))),
        "Gaussian",
    ),
    "bound 1/k": (lambda d, k, r, rng: kaiming(d, k, r, rng, 1 / k), "bound 1/k"),
    "bound sqrt(6/k), a = 0": (
        lambda d, k, r, rng: kaiming(d, k, r, rng, math.sqrt(6 / k)),
        "a = 0",
    ),
    "bound 1/sqrt(r)": (lambda d, k, r, rng: kaiming(d, k, r, rng, 1 / math.sqrt(r)), "fan-in"),
    "A transposed": (
        lambda d, k, r, rng: (kaiming(d, k, r, rng)[0].T, np.zeros((d, r))),
        "transpose",
    ),
    "B transposed": (
        lambda d, k, r, rng: (kaiming(d, k, r, rng)[0], np.zeros((r, d))),
        "transpose",
    ),
    "returned (B, A)": (lambda d, k, r, rng: kaiming(d, k, r, rng)[::-1], "(B, A)"),
    "rng ignored": (
        lambda d, k, r, rng: kaiming(d, k, r, np.random.default_rng(0)),
        "ignored",
    ),
    "global np.random": (
        lambda d, k, r, rng: (
            np.random.uniform(-1, 1, (r, k)) / np.sqrt(k),  # noqa: NPY002 (the mistake)
            np.zeros((d, r)),
        ),
        "same seed gave different A",
    ),
    "integer A": (
        lambda d, k, r, rng: (rng.integers(-1, 2, (r, k)), np.zeros((d, r))),
        "expected a float",
    ),
}


@pytest.mark.parametrize("mistake", sorted(WRONG_INIT))
def test_wrong_init_lora_is_named(mistake):
    fn, words = WRONG_INIT[mistake]
    with pytest.raises(AssertionError, match=None) as err:
        check_init_lora(fn)
    assert words in str(err.value), str(err.value)


def test_global_rng_reseeded_inside_is_caught():
    def reseeds_global(d, k, r, rng):
        np.random.seed(0)  # noqa: NPY002 (the mistake: changes the global stream)
        return kaiming(d, k, r, rng)

    with pytest.raises(AssertionError, match="global random generator"):
        check_init_lora(reseeds_global)


def test_init_lora_stub_non_callable_nan():
    def stub(d, k, r, rng):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        check_init_lora(stub)
    with pytest.raises(AssertionError, match="expected your function"):
        check_init_lora(42)
    with pytest.raises(AssertionError, match="NaN"):
        check_init_lora(lambda d, k, r, rng: (np.full((r, k), np.nan), np.zeros((d, r))))
    with pytest.raises(AssertionError, match="expected a pair"):
        check_init_lora(lambda d, k, r, rng: kaiming(d, k, r, rng)[0])


# ---------------------------------------------------------------- pissa_init
def pissa_loops(W0, r, scaling):  # float32, signs flipped, built column by column
    U, S, Vt = np.linalg.svd(np.asarray(W0, dtype=np.float64), full_matrices=False)
    d, k = W0.shape
    A, B = np.zeros((r, k)), np.zeros((d, r))
    for i in range(r):
        root = math.sqrt(S[i] / scaling)
        sign = -1.0 if i % 2 else 1.0
        A[i] = sign * root * Vt[i]
        B[:, i] = sign * root * U[:, i]
    residual = W0 - scaling * B @ A
    return A.astype(np.float32), B.astype(np.float32), residual.astype(np.float32)


@pytest.mark.parametrize("fn", [reference_pissa_init, pissa_loops])
def test_correct_pissa_passes(fn, capsys):
    check_pissa_init(fn)
    assert "pissa_init: all" in capsys.readouterr().out


def _svd_parts(W0, r, s):
    U, S, Vt = np.linalg.svd(W0, full_matrices=False)
    return U[:, :r], S[:r], Vt[:r]


def pissa_no_division(W0, r, s):
    U, S, Vt = _svd_parts(W0, r, s)
    A, B = np.sqrt(S)[:, None] * Vt, U * np.sqrt(S)
    return A, B, W0 - s * B @ A


def pissa_no_residual(W0, r, s):
    A, B, _ = reference_pissa_init(W0, r, s)
    return A, B, W0.copy()


def pissa_unbalanced(W0, r, s):
    U, S, Vt = _svd_parts(W0, r, s)
    A, B = (S / s)[:, None] * Vt, U
    return A, B, W0 - s * B @ A


def pissa_bottom(W0, r, s):
    U, S, Vt = np.linalg.svd(W0, full_matrices=False)
    root = np.sqrt(S[-r:] / s)
    A, B = root[:, None] * Vt[-r:], U[:, -r:] * root
    return A, B, W0 - s * B @ A


def pissa_residual_without_s(W0, r, s):
    A, B, _ = reference_pissa_init(W0, r, s)
    return A, B, W0 - B @ A


@pytest.mark.parametrize(
    "fn, words",
    [
        (pissa_no_division, "divide the singular values by s"),
        (pissa_no_residual, "W_res is W0 unchanged"),
        (pissa_unbalanced, "PiSSA splits evenly"),
        (pissa_bottom, "smallest r singular directions"),
        (pissa_residual_without_s, "the scale s is missing"),
        (lambda W0, r, s: tuple(a.T for a in reference_pissa_init(W0, r, s)), "transpose"),
    ],
)
def test_wrong_pissa_is_named(fn, words):
    with pytest.raises(AssertionError) as err:
        check_pissa_init(fn)
    assert words in str(err.value), str(err.value)


def test_pissa_stub_and_non_callable():
    def stub(W0, r, s):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="not written yet"):
        check_pissa_init(stub)
    with pytest.raises(AssertionError, match="expected your function"):
        check_pissa_init(None)
    with pytest.raises(AssertionError, match="NaN"):
        check_pissa_init(lambda W0, r, s: tuple(a * np.nan for a in reference_pissa_init(W0, r, s)))


# ----------------------------------------------------------------------------- split cases
def test_a_bound_of_one_over_sqrt_d_is_named_as_d_not_r():
    def bound_from_d(d, k, r, rng):
        bound = 1.0 / np.sqrt(d)
        return rng.uniform(-bound, bound, size=(r, k)), np.zeros((d, r))

    with pytest.raises(AssertionError) as info:
        check_init_lora(bound_from_d)
    assert "not d" in str(info.value) and "not r" not in str(info.value)


def test_pissa_that_changes_W0_is_refused():
    def subtracts_in_place(W0, r, s):
        A, B, res = reference_pissa_init(W0, r, s)
        W0 -= s * B @ A
        return A, B, res

    with pytest.raises(AssertionError, match="changed its input W0"):
        check_pissa_init(subtracts_in_place)
