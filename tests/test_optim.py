"""Optimisers on tiny problems whose updates are worked out by hand, and clip_grad_norm_."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend, optim


def param(values, dtype=np.float64) -> ln.nn.Parameter:
    return ln.nn.Parameter(np.asarray(values, dtype=dtype))


def run(optimizer, p, steps):
    """Minimise sum(p^2) (gradient 2p) for ``steps`` steps; the parameter after each step."""
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        (p * p).sum().backward()
        optimizer.step()
        history.append(p.numpy().copy())
    return np.array(history)


def textbook_adam(p, steps, lr, betas, eps, weight_decay=0.0, decoupled=False):
    """Adam as written in the paper (bias-corrected m_hat, v_hat), for one float, on p^2."""
    m = v = 0.0
    out = []
    for t in range(1, steps + 1):
        g = 2 * p
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g += weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p -= lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(p)
    return out


# ------------------------------------------------------------------------ SGD
def test_sgd_plain():
    p = param([1.0, -2.0])
    np.testing.assert_allclose(run(optim.SGD([p], lr=0.1), p, 2), [[0.8, -1.6], [0.64, -1.28]])


def test_sgd_momentum_by_hand():
    # g = 2p. buf1 = 2, p1 = 0.8; buf2 = 0.9*2 + 1.6 = 3.4, p2 = 0.46;
    # buf3 = 0.9*3.4 + 0.92 = 3.98, p3 = 0.062
    p = param([1.0])
    history = run(optim.SGD([p], lr=0.1, momentum=0.9), p, 3)
    np.testing.assert_allclose(history[:, 0], [0.8, 0.46, 0.062], rtol=1e-12)


def test_sgd_weight_decay_by_hand():
    # g = 2p + 0.5p = 2.5p: p1 = 1 - 0.1*2.5 = 0.75, p2 = 0.75 * 0.75
    p = param([1.0])
    history = run(optim.SGD([p], lr=0.1, weight_decay=0.5), p, 2)
    np.testing.assert_allclose(history[:, 0], [0.75, 0.5625], rtol=1e-12)


# ------------------------------------------------------------------------ Adam and AdamW
def test_adam_by_hand():
    # step 1: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) = 0.1 * 2/(2 + 1e-8)
    p = param([1.0])
    history = run(optim.Adam([p], lr=0.1), p, 3)
    np.testing.assert_allclose(history[0, 0], 1 - 0.1 * 2 / (2 + 1e-8), rtol=1e-14)
    np.testing.assert_allclose(
        history[:, 0], [0.9000000005, 0.80041222869, 0.70158627295], rtol=1e-10
    )
    np.testing.assert_allclose(
        history[:, 0], textbook_adam(1.0, 3, 0.1, (0.9, 0.999), 1e-8), rtol=1e-12
    )


def test_adam_first_step_is_lr_times_sign_per_entry():
    p = param([3.0, -0.001, 50.0])
    history = run(optim.Adam([p], lr=0.01), p, 1)
    np.testing.assert_allclose(history[0], [2.99, -0.001 + 0.01, 49.99], atol=1e-7)  # eps


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adam_with_l2_weight_decay(betas):
    p = param([1.0, -0.5])
    history = run(optim.Adam([p], lr=0.05, betas=betas, eps=1e-6, weight_decay=0.1), p, 5)
    for i, start in enumerate([1.0, -0.5]):
        expected = textbook_adam(start, 5, 0.05, betas, 1e-6, weight_decay=0.1)
        np.testing.assert_allclose(history[:, i], expected, rtol=1e-12)


def test_adamw_by_hand():
    # step 1: p = 1 * (1 - 0.1*0.1) = 0.99, then the Adam step of about lr = 0.1
    p = param([1.0])
    history = run(optim.AdamW([p], lr=0.1, weight_decay=0.1), p, 3)
    np.testing.assert_allclose(history[0, 0], 0.99 - 0.1 * 2 / (2 + 1e-8), rtol=1e-14)
    expected = textbook_adam(1.0, 3, 0.1, (0.9, 0.999), 1e-8, weight_decay=0.1, decoupled=True)
    np.testing.assert_allclose(history[:, 0], expected, rtol=1e-12)


def test_adamw_default_weight_decay_and_difference_from_adam():
    assert optim.AdamW([param([1.0])]).weight_decay == 0.01
    assert optim.Adam([param([1.0])]).weight_decay == 0.0
    a, b = param([1.0]), param([1.0])
    run(optim.Adam([a], lr=0.1, weight_decay=0.5), a, 2)
    run(optim.AdamW([b], lr=0.1, weight_decay=0.5), b, 2)
    assert not np.allclose(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: optim.SGD(ps, lr=0.1),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: optim.Adam(ps, lr=0.1),
        lambda ps: optim.AdamW(ps, lr=0.1),
    ],
)
def test_no_state_and_no_update_for_frozen_params_or_params_without_grad(make):
    trained = param(np.ones((3, 4)))
    frozen = param(np.ones((5, 4))).requires_grad_(False)
    unused = param(np.ones(7))
    opt = make([trained, frozen, unused])
    (trained * trained).sum().backward()
    frozen.grad = np.ones((5, 4))  # a stale gradient on a frozen parameter must be ignored
    opt.step()
    opt.step()
    assert set(opt.state) <= {id(trained)}
    np.testing.assert_array_equal(frozen.numpy(), 1)
    np.testing.assert_array_equal(unused.numpy(), 1)
    assert not np.allclose(trained.numpy(), 1)
    expected_arrays = {"SGD": 1 if opt.state else 0, "Adam": 2, "AdamW": 2}[type(opt).__name__]
    assert opt.state_bytes() == expected_arrays * trained.data.nbytes


def test_float32_parameters_stay_float32():
    p = param(np.ones(3), dtype=np.float32)
    for opt in (optim.SGD([p], lr=0.1, momentum=0.9), optim.AdamW([p], lr=0.1)):
        run(opt, p, 2)
        assert p.dtype == np.float32
        assert all(
            a.dtype == np.float32
            for s in opt.state.values()
            for a in s.values()
            if hasattr(a, "dtype")
        )


def test_zero_grad_clears_every_gradient():
    a, b = param([1.0]), param([2.0])
    opt = optim.SGD([a, b], lr=0.1)
    (a * b).sum().backward()
    opt.zero_grad()
    assert a.grad is None and b.grad is None


# ------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", None])
@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_bad_learning_rate_is_named(cls, bad):
    with pytest.raises(ValueError) as info:
        cls([param([1.0])], lr=bad)
    assert repr(bad) in str(info.value)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([], lr=0.1)
    with pytest.raises(ValueError, match="1.0"):
        optim.SGD([param([1.0])], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"\(0.9, 1.0\)"):
        optim.Adam([param([1.0])], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        optim.Adam([param([1.0])], eps=0.0)


# ------------------------------------------------------------------------ clipping
def test_clip_grad_norm_returns_the_norm_before_clipping_and_clips():
    a, b, c = param([0.0, 0.0]), param([0.0]), param([0.0])
    a.grad, b.grad = np.array([3.0, 4.0]), np.array([12.0])  # global norm 13; c has no grad
    total = optim.clip_grad_norm_([a, b, c], max_norm=6.5)
    assert isinstance(total, float)
    assert total == pytest.approx(13.0, rel=1e-12)
    np.testing.assert_allclose(a.grad, [1.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(b.grad, [6.0], rtol=1e-6)
    new_norm = math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum()))
    assert new_norm == pytest.approx(6.5, rel=1e-6) and new_norm <= 6.5
    assert c.grad is None


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = param([0.0, 0.0])
    a.grad = np.array([0.3, 0.4])
    assert optim.clip_grad_norm_(iter([a]), max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])
    assert optim.clip_grad_norm_([param([1.0])], max_norm=1.0) == 0.0


def test_optimisers_on_every_backend(backend_name):
    p = ln.nn.Parameter(np.ones((2, 3)))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.1)
    history = run(opt, p, 3)
    assert backend.array_module(p.data) == backend_name
    assert all(
        backend.array_module(a) == backend_name
        for s in opt.state.values()
        for a in s.values()
        if hasattr(a, "shape")
    )
    expected = textbook_adam(1.0, 3, 0.1, (0.9, 0.999), 1e-8, weight_decay=0.1, decoupled=True)
    np.testing.assert_allclose(history[:, 0, 0], expected, rtol=1e-12)
    p.grad = backend.xp.full((2, 3), 10.0)
    assert optim.clip_grad_norm_([p], 1.0) == pytest.approx(math.sqrt(600))


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
@pytest.mark.parametrize("lr", [np.float32(0.1), np.float64(0.1), np.int64(1)])
def test_numpy_scalar_learning_rates_are_accepted(cls, lr):
    p = param([1.0, -2.0])
    opt = cls([p], lr=lr)
    assert opt.lr == lr
    run(opt, p, 1)
    assert np.all(np.isfinite(p.data))


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf"), "0.1", True])
@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_bad_weight_decay_is_named(cls, bad):
    with pytest.raises((ValueError, TypeError)) as info:
        cls([param([1.0])], lr=0.1, weight_decay=bad)
    assert "weight_decay" in str(info.value) and repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), -1e-8, "1e-8"])
def test_bad_eps_is_named(bad):
    with pytest.raises((ValueError, TypeError), match="eps"):
        optim.Adam([param([1.0])], eps=bad)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, None])
def test_setting_a_bad_learning_rate_later_is_refused(bad):
    opt = optim.SGD([param([1.0])], lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        opt.lr = bad
    assert opt.lr == 0.1


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan"), "1", None])
def test_clip_max_norm_must_be_positive(bad):
    p = param([3.0, 4.0])
    (p * p).sum().backward()
    grad = p.grad.copy()
    with pytest.raises((ValueError, TypeError), match="max_norm"):
        optim.clip_grad_norm_([p], bad)
    assert np.array_equal(p.grad, grad)
