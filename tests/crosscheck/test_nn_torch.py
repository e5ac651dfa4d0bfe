"""nn layers against torch.nn with copied weights: outputs and parameter gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import nn

pytestmark = pytest.mark.crosscheck


def copy_into(torch, theirs, ours):
    """Copy our parameters into the torch module, by the shared names."""
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.from_numpy(dict(ours.named_parameters())[name].numpy().copy()))


def check(torch, ours, theirs, x_ours, x_theirs, dtype, tol):
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    copy_into(torch, theirs, ours)
    out, expected = ours(x_ours), theirs(x_theirs)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=tol, atol=tol)
    upstream = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    expected.backward(torch.from_numpy(upstream))
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=tol, atol=tol, err_msg=name)
    return out


CASES = [(np.float64, 1e-10), (np.float32, 1e-5)]


@pytest.mark.parametrize(("dtype", "tol"), CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(torch, dtype, tol, bias):
    ours = nn.Linear(5, 3, bias=bias, dtype=dtype)
    theirs = torch.nn.Linear(5, 3, bias=bias, dtype=getattr(torch, np.dtype(dtype).name))
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(dtype)
    ours_x = ln.Tensor(x, requires_grad=True)
    theirs_x = torch.from_numpy(x.copy()).requires_grad_(True)
    check(torch, ours, theirs, ours_x, theirs_x, dtype, tol)
    np.testing.assert_allclose(ours_x.grad, theirs_x.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize(("dtype", "tol"), CASES)
def test_layer_norm(torch, dtype, tol):
    ours = nn.LayerNorm(6, dtype=dtype)
    ours.weight.data = ours.weight.data * 1.5 - 0.2  # not the identity init, to test scaling
    ours.bias.data = ours.bias.data + 0.3
    theirs = torch.nn.LayerNorm(6, dtype=getattr(torch, np.dtype(dtype).name))
    x = np.random.default_rng(0).standard_normal((3, 2, 6)).astype(dtype)
    check(torch, ours, theirs, ln.Tensor(x), torch.from_numpy(x.copy()), dtype, tol)


@pytest.mark.parametrize(("dtype", "tol"), CASES)
def test_embedding(torch, dtype, tol):
    ours = nn.Embedding(7, 4, dtype=dtype)
    theirs = torch.nn.Embedding(7, 4, dtype=getattr(torch, np.dtype(dtype).name))
    ids = np.random.default_rng(0).integers(0, 7, (3, 5))
    check(torch, ours, theirs, ids, torch.from_numpy(ids), dtype, tol)


def test_sequential_mlp_names_outputs_and_grads(torch):
    ours = nn.Sequential(
        nn.Linear(4, 8, dtype="float64"), nn.GELU(), nn.Linear(8, 2, dtype="float64")
    )
    theirs = torch.nn.Sequential(
        torch.nn.Linear(4, 8, dtype=torch.float64),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Linear(8, 2, dtype=torch.float64),
    )
    x = np.random.default_rng(0).standard_normal((5, 4))
    check(torch, ours, theirs, ln.Tensor(x), torch.from_numpy(x), np.float64, 1e-10)


def test_linear_init_has_torch_distribution(torch):
    """Both initialise W and b uniform in +-1/sqrt(in): their quantiles agree."""
    torch.manual_seed(0)
    ln.manual_seed(0)
    n_in, n_out = 64, 512
    ours, theirs = nn.Linear(n_in, n_out), torch.nn.Linear(n_in, n_out)
    bound = 1 / math.sqrt(n_in)
    for name in ("weight", "bias"):
        a = np.sort(getattr(ours, name).numpy().ravel())
        b = np.sort(getattr(theirs, name).detach().numpy().ravel())
        assert np.abs(a).max() <= bound and np.abs(b).max() <= bound
        quantiles = np.linspace(0.05, 0.95, 19)
        np.testing.assert_allclose(
            np.quantile(a, quantiles), np.quantile(b, quantiles), atol=0.1 * bound
        )


def test_state_dict_loads_torch_weights(torch):
    theirs = torch.nn.Linear(3, 2, dtype=torch.float64)
    ours = nn.Linear(3, 2, dtype="float64")
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_allclose(
        ours(ln.Tensor(x)).numpy(), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-12
    )
