"""SGD, Adam and AdamW follow torch.optim's trajectory step for step; clip_grad_norm_ too.

The problem: a small two-layer network with a frozen first layer, float64, the same data and
initial weights in both frameworks, 20 steps. Parameters are compared after every step.
"""

from __future__ import annotations

import numpy as np
import pytest

import lora_np as ln
from lora_np import optim

pytestmark = pytest.mark.crosscheck

STEPS = 20


def initial_weights():
    rng = np.random.default_rng(0)
    return {
        "w1": rng.standard_normal((6, 4)) * 0.5,  # frozen
        "w2": rng.standard_normal((3, 6)) * 0.5,
        "b2": rng.standard_normal(3) * 0.1,
        "x": rng.standard_normal((8, 4)),
        "y": rng.standard_normal((8, 3)),
    }


def ours_loss(p, data):
    h = ln.F.linear(ln.Tensor(data["x"]), p["w1"]).tanh()
    return ln.F.mse_loss(ln.F.linear(h, p["w2"], p["b2"]), data["y"])


def theirs_loss(torch, p, data):
    h = torch.tanh(torch.nn.functional.linear(torch.from_numpy(data["x"]), p["w1"]))
    return torch.nn.functional.mse_loss(
        torch.nn.functional.linear(h, p["w2"], p["b2"]), torch.from_numpy(data["y"])
    )


def trajectories(torch, make_ours, make_theirs, clip=None):
    data = initial_weights()
    names = ("w1", "w2", "b2")
    ours = {n: ln.nn.Parameter(data[n].copy(), requires_grad=n != "w1") for n in names}
    theirs = {n: torch.tensor(data[n], requires_grad=n != "w1") for n in names}
    opt_ours = make_ours(list(ours.values()))
    opt_theirs = make_theirs(list(theirs.values()))
    for step in range(STEPS):
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
        loss_ours = ours_loss(ours, data)
        loss_theirs = theirs_loss(torch, theirs, data)
        np.testing.assert_allclose(loss_ours.item(), loss_theirs.item(), rtol=1e-6, atol=1e-6)
        loss_ours.backward()
        loss_theirs.backward()
        if clip is not None:
            norm_ours = optim.clip_grad_norm_(list(ours.values()), clip)
            norm_theirs = torch.nn.utils.clip_grad_norm_(list(theirs.values()), clip)
            np.testing.assert_allclose(norm_ours, norm_theirs.item(), rtol=1e-10)
        opt_ours.step()
        opt_theirs.step()
        for n in names:
            np.testing.assert_allclose(
                ours[n].numpy(),
                theirs[n].detach().numpy(),
                rtol=1e-6,
                atol=1e-6,
                err_msg=f"{n} step {step}",
            )
    np.testing.assert_array_equal(ours["w1"].numpy(), data["w1"])  # frozen: untouched
    assert id(ours["w1"]) not in opt_ours.state
    # and the run did move the trained weights
    assert not np.allclose(ours["w2"].numpy(), data["w2"], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.1}),
        ("SGD", {"lr": 0.1, "momentum": 0.9}),
        ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.05}),
        ("Adam", {"lr": 0.05}),
        ("Adam", {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
        ("AdamW", {"lr": 0.05}),
        ("AdamW", {"lr": 0.05, "weight_decay": 0.2}),
    ],
)
def test_trajectory_matches_torch_optim(torch, name, kwargs):
    """The same class name and arguments in both libraries give the same 20 steps."""
    trajectories(
        torch,
        lambda p: getattr(optim, name)(p, **kwargs),
        lambda p: getattr(torch.optim, name)(p, **kwargs),
    )


def test_adamw_defaults_match_torch(torch):
    ours = optim.AdamW([ln.nn.Parameter(np.zeros(1))])
    theirs = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    assert (ours.lr, tuple(ours.betas), ours.eps, ours.weight_decay) == (
        theirs["lr"],
        tuple(theirs["betas"]),
        theirs["eps"],
        theirs["weight_decay"],
    )


def test_adamw_with_clipping_matches_torch(torch):
    trajectories(
        torch,
        lambda p: optim.AdamW(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
        clip=0.05,
    )


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 100.0])
def test_clip_grad_norm_matches_torch(torch, max_norm):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = [ln.nn.Parameter(np.zeros(g.shape)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = g.copy(), torch.from_numpy(g.copy())
    total = optim.clip_grad_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert total == pytest.approx(expected.item(), rel=1e-12)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12)
