"""Each speed trick agrees with the plain formula beside it, and the allocator call is explicit."""

import numpy as np
import pytest

import lora_np as ln
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
    assert not hasattr(ln.backend, "malloc_tuned")


# --------------------------------------------------------------------------- threads
@pytest.fixture
def threads(monkeypatch):
    """Set the element-wise thread count and a small threshold, so that tests split work."""

    def use(n: int, min_size: int = 64):
        monkeypatch.setattr(ln.backend, "_threads", n)
        monkeypatch.setattr(fastpaths, "PARALLEL_MIN_SIZE", min_size)

    return use


@pytest.mark.parametrize("n_threads", [2, 3, 5])
@pytest.mark.parametrize("length", [0, 1, 63, 64, 1000, 4099])
def test_for_each_part_covers_the_range_once_in_order(threads, n_threads, length):
    threads(n_threads)
    seen = []
    fastpaths.for_each_part(seen.append, length)
    covered = [i for s in sorted(seen, key=lambda s: s.start) for i in range(length)[s]]
    assert covered == list(range(length))
    expected_parts = n_threads if length >= fastpaths.PARALLEL_MIN_SIZE else 1
    assert len(seen) == expected_parts
    assert all(s.start % 16 == 0 for s in seen)  # each part starts 64-byte aligned (float32)


def test_for_each_part_stays_on_one_thread_when_asked_or_small(threads):
    threads(1)
    seen = []
    fastpaths.for_each_part(seen.append, 10_000)
    assert seen == [slice(0, 10_000)]
    threads(4, min_size=10_001)
    fastpaths.for_each_part(seen.append, 10_000)
    assert seen[-1] == slice(0, 10_000)


def test_in_parallel_runs_each_task_and_raises_a_tasks_error(threads):
    threads(3)
    done = []
    fastpaths.in_parallel([lambda i=i: done.append(i) for i in range(3)])
    assert sorted(done) == [0, 1, 2]

    def fails():
        raise ValueError("part 2 failed")

    with pytest.raises(ValueError, match="part 2 failed"):
        fastpaths.in_parallel([lambda: None, fails])


def test_balanced_groups_deal_every_index_once_and_evenly():
    sizes = [100, 1, 50, 50, 3, 96]
    groups = fastpaths.balanced_groups(sizes, 2)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    loads = sorted(sum(sizes[i] for i in g) for g in groups)
    assert loads == [150, 150]
    assert fastpaths.balanced_groups([5], 4) == [[0]]  # no empty group


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threaded_gelu_and_product_equal_one_thread_bit_for_bit(rng, threads, dtype):
    x = rng.standard_normal(10_007).astype(dtype)
    g = rng.standard_normal(10_007).astype(dtype)
    threads(1)
    out_1, slope_1 = fastpaths.gelu_and_slope(x, True)
    product_1 = fastpaths.multiply(g, slope_1)
    threads(3)
    out_3, slope_3 = fastpaths.gelu_and_slope(x, True)
    assert np.array_equal(out_1, out_3) and np.array_equal(slope_1, slope_3)
    assert np.array_equal(product_1, fastpaths.multiply(g, slope_3))
    np.testing.assert_array_equal(product_1, g * slope_1)
    assert fastpaths.gelu_and_slope(x, False)[1] is None


def test_multiply_broadcasts_and_promotes_like_numpy(rng, threads):
    threads(2)
    a = rng.standard_normal((300, 7)).astype("float32")
    b = rng.standard_normal((300, 7))
    np.testing.assert_array_equal(fastpaths.multiply(a, b), a * b)
    assert fastpaths.multiply(a, b).dtype == np.float64
    row = rng.standard_normal(7).astype("float32")
    np.testing.assert_array_equal(fastpaths.multiply(a, row), a * row)


@pytest.mark.parametrize("opt_class", ["Adam", "AdamW"])
def test_threaded_adam_steps_equal_one_thread_bit_for_bit(rng, threads, opt_class):
    shapes = [(64, 32), (32,), (5, 5), (100,), (1,)]

    def run(n_threads):
        threads(n_threads)
        params = [ln.Tensor(rng_p.standard_normal(s), requires_grad=True) for s in shapes]
        opt = getattr(ln.optim, opt_class)(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            for p in params:
                p.grad = np.sin(p.data * (step + 1)) + 0.1
            opt.step()
        return [p.data for p in params]

    rng_p = np.random.default_rng(1)
    one = run(1)
    rng_p = np.random.default_rng(1)
    several = run(3)
    for a, b in zip(one, several):
        assert np.array_equal(a, b)


def test_a_forked_child_makes_its_own_pool(threads):
    import os

    threads(2)
    fastpaths.in_parallel([lambda: None, lambda: None])  # the parent has a pool
    assert fastpaths._pool is not None
    pid = os.fork()
    if pid == 0:  # the child: its pool was forgotten at the fork, and work still runs
        ok = fastpaths._pool is None
        done = []
        fastpaths.in_parallel([lambda: done.append(1), lambda: done.append(2)])
        os._exit(0 if ok and sorted(done) == [1, 2] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
