"""lora-np: LoRA from first principles, on a reverse-mode autodiff engine written in NumPy.

    import lora_np as ln
    x = ln.Tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()        # x.grad == 2 x

Modules, from the bottom up: backend (NumPy or CuPy), autograd (Tensor, backward),
functional (every op with its gradient), gradcheck, nn (layers), optim (optimisers).
"""

from . import backend, functional, nn, optim
from .autograd import Tensor, is_grad_enabled, no_grad
from .backend import manual_seed, set_backend, to_numpy
from .gradcheck import GradcheckError, gradcheck

F = functional

__all__ = [
    "F",
    "GradcheckError",
    "Tensor",
    "backend",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "set_backend",
    "to_numpy",
]
__version__ = "0.1.0"
