"""lora-np: LoRA from first principles, on a reverse-mode autodiff engine written in NumPy.

    import lora_np as ln
    x = ln.Tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()        # x.grad == 2 x

Modules, from the bottom up (each imports only modules above it in this list): backend
(NumPy or CuPy), fastpaths (the speed tricks beside their plain formulas), graph (nodes, the
backward walk, grad mode), autograd (Tensor and its primitive ops), functional (the layer ops
with their gradients), gradcheck, nn (layers), optim (optimisers), serialization (atomic
files, safetensors, model weights), quantization and quantized (4-bit codes, NF4, a
quantised Linear and model), lora (the LoRA package: layer, targeting, adapters,
combining, PEFT's file format), analysis (SVD tools), plotting (one figure style),
transformer (the tiny GPT), data (its synthetic tasks), parallel (a batch's shards on CPU
threads) and train (a training loop).

Plain mode, one switch for the whole engine: ``ln.set_plain(True)``, ``with ln.plain(): ...``
or ``LORA_NP_PLAIN=1`` before the import sends every op through its plain formula instead of
its speed tricks (same numbers to rounding; :mod:`lora_np.fastpaths` lists them).
"""

from . import (
    analysis,
    backend,
    checks,
    data,
    fastpaths,
    functional,
    graph,
    lora,
    nn,
    optim,
    parallel,
    plotting,
    quantization,
    quantized,
    results,
    serialization,
    svd_rank,
    train,
    transformer,
)
from .autograd import Tensor, is_grad_enabled, no_grad
from .backend import manual_seed, set_backend, to_numpy
from .fastpaths import is_plain, plain, set_plain
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
    "fastpaths",
    "functional",
    "gradcheck",
    "graph",
    "is_grad_enabled",
    "is_plain",
    "lora",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "parallel",
    "plain",
    "plotting",
    "quantization",
    "quantized",
    "results",
    "serialization",
    "set_backend",
    "set_plain",
    "svd_rank",
    "to_numpy",
    "train",
    "transformer",
]
__version__ = "0.1.0"
