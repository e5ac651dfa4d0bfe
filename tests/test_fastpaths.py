"""Each speed trick agrees with the plain formula beside it, plain mode turns every one off,
and the allocator call is explicit.

The helpers are compared pair by pair (fast mode forced, so the comparison means something
whatever LORA_NP_PLAIN says); every op with a fast path is then run in both modes in float64
and must give the same value and gradients, and plain mode must reach each plain twin.
"""

import numpy as np
import pytest

import lora_np as ln
from lora_np import autograd, backend, fastpaths, lora, nn
from lora_np import functional as F


@pytest.fixture(autouse=True)
def fast_mode():
    """The pair tests call the fast helpers themselves: in plain mode they would answer with
    their plain twins and compare a formula with itself."""
    with fastpaths.plain(False):
        yield


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


# ------------------------------------------------------------------------ the switch
def test_plain_mode_switch_context_and_errors():
    assert not ln.is_plain()  # the fixture's fast mode
    with ln.plain():
        assert ln.is_plain() and fastpaths.is_plain()
        with ln.plain(False):
            assert not ln.is_plain()
        assert ln.is_plain()
    assert not ln.is_plain()
    with pytest.raises(RuntimeError), ln.plain():
        raise RuntimeError("the mode is restored after an error")
    assert not ln.is_plain()
    with pytest.raises(TypeError, match="True or False, got 'yes'"):
        ln.set_plain("yes")
    assert not ln.is_plain()  # a refused value changes nothing


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("0", False), ("1", True), (" TRUE ", True), ("off", False)],
)
def test_the_environment_variable_is_read(monkeypatch, value, expected):
    monkeypatch.setenv(fastpaths.PLAIN_ENV, value)
    assert fastpaths._plain_from_environment() is expected


def test_a_bad_environment_value_names_it(monkeypatch):
    monkeypatch.setenv(fastpaths.PLAIN_ENV, "fast")
    with pytest.raises(ValueError, match=r"LORA_NP_PLAIN='fast'.*expected 1 .* or 0"):
        fastpaths._plain_from_environment()


# ------------------------------------------------------------------------ every op, both modes
def _leaf(rng, *shape):
    return ln.Tensor(rng.standard_normal(shape), requires_grad=True)


def _lora_layer(rng, dropout):
    ln.manual_seed(5)  # W0 and A are drawn from the library's generator
    base = nn.Linear(5, 6, dtype="float64")
    layer = lora.LoRALinear(base, r=2, alpha=3.0, dropout=dropout)
    layer.B.data = backend.xp.asarray(rng.standard_normal((6, 2)))  # B = 0 would hide the side path
    return layer


def _case(name, rng):
    """(output, leaves) of one op with a fast path, on float64 inputs drawn from ``rng``."""
    if name == "power":  # small whole exponents: int_power
        x = _leaf(rng, 3, 4)
        return x**1 + x**2 + x**3 - x**4, [x]
    if name == "matmul batch by matrix":  # one 2-D product on the rows
        a, b = _leaf(rng, 2, 3, 4), _leaf(rng, 4, 5)
        return a @ b, [a, b]
    if name == "linear":  # 120 rows >= 8 x 6 outputs: W^T copied row-major; bias as sum_rows
        x, w, b = _leaf(rng, 2, 60, 5), _leaf(rng, 6, 5), _leaf(rng, 6)
        return F.linear(x, w, b), [x, w, b]
    if name == "lora_linear":  # the fused op
        x, w, b, A, B = (_leaf(rng, *s) for s in [(2, 30, 5), (6, 5), (6,), (2, 5), (6, 2)])
        return F.lora_linear(x, w, b, A, B, 1.7), [x, w, b, A, B]
    if name == "embedding":  # the one-hot gradient
        w = _leaf(rng, 5, 3)
        return F.embedding(rng.integers(0, 5, (3, 4)), w), [w]
    if name == "layer_norm":  # sums as BLAS products
        x, w, b = _leaf(rng, 4, 7), _leaf(rng, 7), _leaf(rng, 7)
        return F.layer_norm(x, w, b), [x, w, b]
    if name == "gelu":  # in place, slope in the forward
        x = ln.Tensor(rng.standard_normal((3, 8)) * 3, requires_grad=True)
        return F.gelu(x), [x]
    if name == "attention":  # k^T and v^T copied with the scale; row sums
        q, k, v = (_leaf(rng, 1, 2, 5, 4) for _ in range(3))
        return F.scaled_dot_product_attention(q, k, v), [q, k, v]
    if name == "cross_entropy":  # the softmax's row sums
        logits = _leaf(rng, 6, 5)
        return F.cross_entropy(logits, np.array([0, 4, -100, 2, 2, 1])), [logits]
    layer = _lora_layer(rng, dropout=0.3 if name == "LoRALinear, dropout" else 0.0)
    x = _leaf(rng, 2, 30, 5)
    ln.manual_seed(7)  # the same dropout mask in both modes
    return layer(x), [x, layer.A, layer.B]


CASES = {
    # name: the plain twins plain mode must reach
    "power": set(),
    "matmul batch by matrix": set(),
    "linear": {"plain_sum_rows"},
    "lora_linear": {"plain_sum_rows"},
    "embedding": {"plain_embedding_grad"},
    "layer_norm": {"plain_sum_last", "plain_weighted_sum_last", "plain_sum_rows"},
    "gelu": {"plain_gelu_and_slope"},
    "attention": {"plain_transposed_copy", "plain_sum_last"},
    "cross_entropy": {"plain_sum_last"},
    "LoRALinear": set(),
    "LoRALinear, dropout": set(),
}


def _run(name, plain_mode):
    """The op's output and every leaf's gradient, computed in one mode."""
    with fastpaths.plain(plain_mode):
        out, leaves = _case(name, np.random.default_rng(3))
        g = np.random.default_rng(4).standard_normal(out.shape)
        out.backward(g)
    return [backend.to_numpy(a) for a in [out.data] + [t.grad for t in leaves]]


@pytest.mark.parametrize("name", CASES)
def test_each_fast_path_equals_its_plain_formula_in_value_and_gradient(name, backend_name):
    fast, plain = _run(name, False), _run(name, True)
    for which, (f, p) in enumerate(zip(fast, plain, strict=True)):
        label = "the output" if which == 0 else f"the gradient of input {which}"
        assert f.shape == p.shape and f.dtype == p.dtype == np.float64, label
        np.testing.assert_allclose(f, p, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {label}")


@pytest.mark.parametrize("name", CASES)
def test_plain_mode_reaches_every_plain_twin_and_fast_mode_none(monkeypatch, name):
    called = set()
    for twin in [n for n in vars(fastpaths) if n.startswith("plain_")]:
        real = getattr(fastpaths, twin)
        monkeypatch.setattr(
            fastpaths, twin, lambda *a, _n=twin, _f=real, **k: called.add(_n) or _f(*a, **k)
        )
    _run(name, plain_mode=False)
    assert called == set(), f"{name}: the fast mode ran plain twins {sorted(called)}"
    _run(name, plain_mode=True)
    assert called == CASES[name]


def test_the_op_level_fast_paths_step_aside_in_plain_mode(monkeypatch):
    """The fast paths that are a shape of the op, not a helper: a whole power by products, a
    batch times a matrix as one 2-D product, LoRALinear through the fused op."""
    seen = {"int_power": 0, "mm_ndim": [], "lora_linear": 0}
    real_int_power, real_lora_linear = fastpaths.int_power, F.lora_linear

    def int_power(*args):
        seen["int_power"] += 1
        return real_int_power(*args)

    def lora_linear(*args):
        seen["lora_linear"] += 1
        return real_lora_linear(*args)

    monkeypatch.setattr(fastpaths, "int_power", int_power)
    monkeypatch.setattr(F, "lora_linear", lora_linear)
    monkeypatch.setattr(
        autograd, "_matrix_product", lambda a, b: seen["mm_ndim"].append(a.ndim) or a @ b
    )
    for plain_mode in (False, True):
        for name in ("power", "matmul batch by matrix", "LoRALinear"):
            _run(name, plain_mode)
    # fast: int_power forward and backward, 2-D products; plain: none of them
    assert seen["int_power"] > 0 and seen["lora_linear"] == 1
    assert seen["mm_ndim"] == [2, 2, 2, 3, 3, 3]  # forward, then the two gradients


def test_every_fast_function_names_its_plain_twin():
    """A new speed trick must say which formula it equals (and that formula must exist)."""
    import inspect

    not_ops = {"is_plain", "set_plain", "plain", "tune_allocator"}
    functions = {
        name: f
        for name, f in vars(fastpaths).items()
        if inspect.isfunction(f) and f.__module__ == fastpaths.__name__ and name[0] != "_"
    }
    twins = {name for name in functions if name.startswith("plain_")}
    named = set()
    for name, f in functions.items():
        if name in twins or name in not_ops:
            continue
        doc = inspect.getdoc(f) or ""
        mentioned = {t for t in twins if f":func:`{t}`" in doc}
        assert mentioned or "Plain twin" in doc, f"fastpaths.{name} does not name its plain twin"
        named |= mentioned
    assert named == twins, f"plain formulas no fast path names: {sorted(twins - named)}"
