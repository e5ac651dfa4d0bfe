"""Optimisers: SGD with momentum, Adam, AdamW; and gradient-norm clipping.

State (momentum buffers, Adam's two moments) is created lazily, the first time a parameter
has a gradient, and only for parameters that require one. A frozen weight therefore costs
no optimiser memory: with Adam that is two extra copies of every trained weight, which is
the largest share of what LoRA saves.

The update rules and defaults follow ``torch.optim`` so a trajectory can be compared step by
step.
"""

from __future__ import annotations

import math
import numbers

from . import backend


def _is_number(value) -> bool:
    """A real number (Python's or NumPy's scalar types), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_learning_rate(lr) -> float:
    """``lr`` itself, or a ValueError: a learning rate is a finite number >= 0.

    NumPy scalars are kept as they are (not turned into Python floats): NumPy types
    ``float32_array * np.float64(lr)`` differently from ``float32_array * lr``, and a
    run should not change its last bits because its rate passed through here.
    """
    if not (_is_number(lr) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"learning rate must be a finite number >= 0, got {lr!r}")
    return lr


def _check_weight_decay(weight_decay) -> float:
    if not (_is_number(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    return weight_decay


class Optimizer:
    """Keeps the parameters to update and their per-parameter state.

    ``lr`` may be changed between steps (a schedule does); every new value is checked, so a
    NaN or negative learning rate never reaches the weights.
    """

    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimiser got an empty parameter list")
        self.lr = lr
        self.state: dict[int, dict] = {}  # id(param) -> its state arrays
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The learning rate the next :meth:`step` uses."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = check_learning_rate(value)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (set it to None)."""
        for p in self.params:
            p.grad = None

    def _trained(self):
        """Parameters that require a gradient and received one."""
        return [p for p in self.params if p.requires_grad and p.grad is not None]

    def state_bytes(self) -> int:
        """Bytes held by optimiser state (momentum or Adam moments)."""
        return sum(
            a.nbytes for s in self.state.values() for a in s.values() if hasattr(a, "nbytes")
        )

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + g (PyTorch's form); plain SGD when momentum = 0."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (_is_number(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.momentum, self.weight_decay = momentum, _check_weight_decay(weight_decay)

    def step(self) -> None:
        self.step_count += 1
        for p in self._trained():
            g = p.grad if self.weight_decay == 0 else p.grad + self.weight_decay * p.data
            if self.momentum:
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = {"momentum": g.copy()}
                else:
                    state["momentum"] *= self.momentum
                    state["momentum"] += g
                g = state["momentum"]
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` adds L2 to the gradient."""

    decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        if not (
            isinstance(betas, tuple | list)
            and len(betas) == 2
            and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not (_is_number(eps) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        self.betas, self.eps = betas, eps
        self.weight_decay = _check_weight_decay(weight_decay)

    def step(self) -> None:
        xp = backend.xp
        beta1, beta2 = self.betas
        self.step_count += 1
        for p in self._trained():
            state = self.state.get(id(p))
            if state is None:
                state = self.state[id(p)] = {
                    "step": 0,
                    "exp_avg": xp.zeros_like(p.data),
                    "exp_avg_sq": xp.zeros_like(p.data),
                }
            state["step"] += 1
            t = state["step"]
            g = p.grad
            if self.weight_decay and self.decoupled:
                p.data *= 1 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p.data
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            g_sq = g * g
            g_sq *= 1 - beta2
            v += g_sq
            # PyTorch's arrangement: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), computed
            # in one scratch array: temporaries of the parameter's size are the cost here.
            update = xp.sqrt(v, out=g_sq)
            update /= math.sqrt(1 - beta2**t)
            update += self.eps
            xp.divide(m, update, out=update)
            update *= self.lr / (1 - beta1**t)
            p.data -= update


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam step."""

    decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (as PyTorch does). ``max_norm`` must be > 0: a negative
    one would flip every gradient's sign, and 0 would stop learning.
    """
    if not (_is_number(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a number > 0, got {max_norm!r}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= scale
    return total
