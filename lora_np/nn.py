"""Layers: ``Module`` and the building blocks of the tiny GPT.

A ``Module`` finds its parameters and sub-modules by looking at its own attributes, in the
order they were set, and names them by attribute path (``blocks.0.attn.q.weight``), as
PyTorch does. That naming is what LoRA's ``inject`` and the saved adapter files key on.
"""

from __future__ import annotations

import math

from . import backend
from . import functional as F
from .autograd import Tensor


class StateDictError(KeyError):
    """A state dict that does not fit the model (a KeyError, printed without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Parameter(Tensor):
    """A Tensor that a Module owns and trains: ``requires_grad=True`` unless told otherwise."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)


def _uniform(shape, bound: float, dtype):
    """U(-bound, bound) from the backend's seeded generator."""
    return backend.rng().uniform(-bound, bound, size=shape).astype(dtype)


def name_matches(name: str, entry: str) -> bool:
    """PEFT's rule for naming modules (``target_modules``, what to skip): ``entry`` is the
    whole dotted name or its last dotted parts (``"q"`` matches ``"blocks.0.attn.q"``)."""
    return name == entry or name.endswith("." + entry)


class Module:
    """Base class: subclasses set Parameters and Modules as attributes and define forward()."""

    def __init__(self):
        self.training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # --------------------------------------------------------------------- traversal
    def named_children(self):
        """(name, module) for each direct sub-module, in the order they were set."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix: str = "", _seen=None):
        """(dotted name, module) for this module ("") and every module below it.

        A module reachable by two paths (shared weights) is listed once, under the first.
        """
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, each module's own first.

        A parameter shared by two modules is listed once, so an optimiser steps it once.
        """
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self):
        """Every Parameter, in named_parameters() order."""
        return [p for _, p in self.named_parameters()]

    def get_submodule(self, target: str) -> Module:
        """The module at a dotted name (``"blocks.0.attn.q"``); "" is this module."""
        module = self
        for part in target.split(".") if target else []:
            child = vars(module).get(part)
            if not isinstance(child, Module):
                raise AttributeError(f"{type(self).__name__} has no sub-module {target!r}")
            module = child
        return module

    def set_submodule(self, target: str, module: Module) -> None:
        """Put ``module`` at a dotted name (``"blocks.0.attn.q"``), replacing what is there."""
        parent_name, _, child = target.rpartition(".")
        setattr(self.get_submodule(parent_name), child, module)

    # --------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active) for this module and all below it."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode (dropout off)."""
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def zero_grad(self) -> None:
        """Forget every parameter's accumulated gradient."""
        for p in self.parameters():
            p.grad = None

    def to(self, dtype) -> Module:
        """Cast every parameter to ``dtype`` (e.g. float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """How many numbers the parameters hold (only trainable ones if asked)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """name -> array (the parameters' own arrays, not copies)."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters of the same names.

        Every problem is found before anything changes: missing names (when ``strict``),
        unexpected names (when ``strict``) and shape mismatches are listed together in one
        error, and the model is left untouched.
        """
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state_dict]
        unexpected = [n for n in state_dict if n not in params]
        mismatched = [
            f"{n}: checkpoint {tuple(state_dict[n].shape)} vs model {params[n].shape}"
            for n in params
            if n in state_dict and tuple(state_dict[n].shape) != params[n].shape
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(
                f"load_state_dict found {len(problems)} problem(s): " + " | ".join(problems)
            )
        converted = {
            n: backend.xp.array(state_dict[n], dtype=params[n].dtype)
            for n in params
            if n in state_dict
        }
        for n, array in converted.items():
            params[n].data = array
            params[n].grad = None


class Linear(Module):
    """y = x W^T + b with W of shape (out_features, in_features), as in PyTorch.

    Initialised as PyTorch does: W and b uniform in +-1/sqrt(in_features) (Kaiming-uniform
    with a = sqrt(5)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype="float32"):
        super().__init__()
        for label, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"Linear: {label} must be a positive int, got {n!r}")
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)"""
        return F.linear(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``, N(0, 1) at start."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype="float32"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(
            backend.rng().standard_normal((num_embeddings, embedding_dim)).astype(dtype)
        )

    def forward(self, idx) -> Tensor:
        """idx: integer array (*S) -> (*S, embedding_dim)"""
        return F.embedding(idx, self.weight)


class LayerNorm(Module):
    """Normalise the last axis, then scale (ones at start) and shift (zeros at start)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype="float32"):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(backend.xp.ones(normalized_shape, dtype=dtype))
        self.bias = Parameter(backend.xp.zeros(normalized_shape, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., C) -> (..., C)"""
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero entries with probability ``p`` while training; the identity in eval mode."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)


class GELU(Module):
    """The GELU activation (tanh form)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class ModuleList(Module):
    """A list of modules named "0", "1", ... so their parameters get names like ``0.weight``."""

    def __init__(self, modules=()):
        super().__init__()
        self._length = 0
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(self._length), module)
        self._length += 1
        return self

    def __getitem__(self, i: int) -> Module:
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} is out of range for a ModuleList of {self._length}")
        return getattr(self, str(i % self._length))

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return (self[i] for i in range(self._length))


class Sequential(ModuleList):
    """Modules applied one after another."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
