"""Each speed trick agrees with the plain formula beside it, and the allocator call is explicit."""

import numpy as np
import pytest

from lora_np import fastpaths


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(5, 1), (4, 7), (3, 64), (2, 3, 65)])
def test_reductions_agree_with_numpy_float64(rng, shape):
    a = rng.standard_normal(shape)
    w = rng.standard_normal(shape[-1])
    for fast, plain in [
        (fastpaths.sum_last(a), fastpaths.plain_sum_last(a)),
        (fastpaths.weighted_sum_last(a, w), fastpaths.plain_weighted_sum_last(a, w)),
        (
            fastpaths.sum_rows(a.reshape(-1, shape[-1])),
            fastpaths.plain_sum_rows(a.reshape(-1, shape[-1])),
        ),
    ]:
        assert fast.shape == plain.shape and fast.dtype == plain.dtype
        np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 1), (4, 7), (3, 64), (2, 3, 65)])
def test_reductions_agree_with_numpy(rng, shape):
    a = rng.standard_normal(shape).astype("float32")
    np.testing.assert_allclose(
        fastpaths.sum_last(a), fastpaths.plain_sum_last(a), rtol=1e-5, atol=1e-5
    )
    w = rng.standard_normal(shape[-1]).astype("float32")
    np.testing.assert_allclose(
        fastpaths.weighted_sum_last(a, w),
        fastpaths.plain_weighted_sum_last(a, w),
        rtol=1e-5,
        atol=1e-5,
    )
    rows = a.reshape(-1, shape[-1])
    np.testing.assert_allclose(
        fastpaths.sum_rows(rows), fastpaths.plain_sum_rows(rows), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 64, 32), (1, 1, 7, 1)])
def test_transposed_copy_is_a_row_major_copy_of_the_view(rng, shape):
    a = rng.standard_normal((shape[0], shape[-1], *shape[1:-1])).swapaxes(1, -1)  # strided view
    fast = fastpaths.transposed_copy(a, 0.25)
    np.testing.assert_allclose(fast, fastpaths.plain_transposed_copy(a, 0.25), rtol=1e-15)
    assert fast.flags.c_contiguous and fast.dtype == a.dtype
    assert not np.shares_memory(fast, a)
    np.testing.assert_array_equal(fastpaths.transposed_copy(a), a.swapaxes(-1, -2))


@pytest.mark.parametrize("n_rows", [1, 47, 48, 100])
def test_weight_t_gives_the_same_product(rng, n_rows):
    w = rng.standard_normal((6, 5))
    x = rng.standard_normal((n_rows, 5))
    np.testing.assert_allclose(x @ fastpaths.weight_t(w, n_rows), x @ w.T, rtol=1e-12)
    copied = n_rows >= fastpaths.COPY_ROWS_PER_OUTPUT * 6
    assert fastpaths.weight_t(w, n_rows).flags.c_contiguous == copied


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_int_power_agrees(rng, n):
    x = rng.standard_normal(9)
    np.testing.assert_allclose(
        fastpaths.int_power(x, n), fastpaths.plain_int_power(x, n), rtol=1e-14
    )


def test_one_hot_product_is_the_scatter_add_gradient(rng):
    ids = rng.integers(0, 6, size=20)  # repeated ids: their rows must add up
    g_rows = rng.standard_normal((20, 3))
    fast = fastpaths.one_hot(ids, 6, g_rows.dtype) @ g_rows
    np.testing.assert_allclose(fast, fastpaths.plain_embedding_grad(ids, g_rows, 6), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_in_place_gelu_agrees_with_the_formula(rng, dtype):
    x = (rng.standard_normal(50) * 3).astype(dtype)
    before = x.copy()
    out, slope = fastpaths.gelu_and_slope(x, need_slope=True)
    plain_out, plain_slope = fastpaths.plain_gelu_and_slope(x)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, plain_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(slope, plain_slope, rtol=tol, atol=tol)
    np.testing.assert_array_equal(x, before)  # the input is not written to
    assert fastpaths.gelu_and_slope(x, need_slope=False)[1] is None


def test_tune_allocator_is_an_explicit_call_that_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LORA_NP_MALLOC_TUNING", "0")
    assert fastpaths.tune_allocator() is False
    monkeypatch.delenv("LORA_NP_MALLOC_TUNING")
    assert isinstance(fastpaths.tune_allocator(), bool)  # True on glibc, False elsewhere
