"""lora-np: LoRA from first principles, on a reverse-mode autodiff engine written in NumPy.

    import lora_np as ln
    x = ln.Tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()        # x.grad == 2 x

Modules, from the bottom up: backend (NumPy or CuPy), autograd (Tensor, backward),
functional (every op with its gradient), gradcheck, nn (layers), optim (optimisers); then
lora (the LoRA layer and its tools), io (safetensors files), analysis (SVD tools),
plotting (one figure style), transformer (the tiny GPT), data (its synthetic tasks) and
train (a training loop).
"""

from . import (
    analysis,
    backend,
    checks,
    data,
    functional,
    io,
    lora,
    nn,
    optim,
    plotting,
    results,
    svd_rank,
    train,
    transformer,
)
from .autograd import Tensor, is_grad_enabled, no_grad
from .backend import manual_seed, set_backend, to_numpy
from .gradcheck import GradcheckError, gradcheck

F = functional

__all__ = [
    "F",
    "GradcheckError",
    "Tensor",
    "analysis",
    "backend",
    "checks",
    "data",
    "functional",
    "gradcheck",
    "io",
    "is_grad_enabled",
    "lora",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "plotting",
    "results",
    "set_backend",
    "svd_rank",
    "to_numpy",
    "train",
    "transformer",
]
__version__ = "0.1.0"
