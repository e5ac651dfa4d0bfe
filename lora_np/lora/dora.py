"""DoRA (Liu et al. 2024, arXiv:2402.09353): LoRA's update applied to the *direction* of the
weight, with a trainable *magnitude*.

    W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖         m: (d,), one magnitude per output row

The norm runs over the input axis: one norm per row of the (d, k) = (out, in) weight, which is
PEFT's ``torch.linalg.norm(weight, dim=1)`` on a Linear's weight (the paper's ‖·‖_c, "column"
norm of its (k, d) layout). ``m`` starts at ‖W0‖ (B = 0), so the layer starts as the base.

As in PEFT (and the paper's §4.3), the norm is treated as a constant in backward
(``detach_norm=True``): gradients flow to m, A and B through the numerator only, which saves
the memory of differentiating the norm. ``dora_linear(..., detach_norm=False)`` is the full
derivative (gradcheck-able end to end).

Saved in PEFT's layout by ``lora.save_adapter``: ``use_dora: true`` in the config and
``base_model.model.<layer>.lora_magnitude_vector`` (d,) beside lora_A / lora_B.
"""

from __future__ import annotations

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from .layer import LoRAAdapter, LoRALinear


def weight_norm(weight, A, B, scaling: float):
    """‖W0 + s·B A‖ per output row, an array (d,) (outside any graph).

    weight: (d, k); A: (r, k); B: (d, r). Computed in the weight's dtype, as PEFT does.
    """
    combined = weight + scaling * (B @ A)  # (d, k)
    return backend.xp.sqrt((combined * combined).sum(axis=1))  # (d,)


def dora_linear(x, weight, bias, A, B, magnitude, scaling: float, detach_norm: bool = True):
    """h = m / ‖W0 + s·B A‖ ⊙ (W0 x + s·B A x) + b, the DoRA layer's output.

    Args:
        x: (..., k); weight: (d, k) = W0; bias: (d,) or None; A: (r, k); B: (d, r);
        magnitude: (d,) = m; scaling: s.
        detach_norm: treat the norm as a constant in backward (PEFT, the paper's §4.3).
    Returns:
        (..., d). The bias is added after the rescaling: it is not part of the direction.
    """
    if detach_norm:
        norm = weight_norm(weight.data, A.data, B.data, scaling)  # (d,), a constant
    else:
        combined = weight + (B @ A) * scaling  # (d, k), in the graph
        norm = ((combined * combined).sum(axis=1)).sqrt()  # (d,)
    scale = magnitude / norm  # (d,): m / ‖W0 + s·B A‖
    out = F.lora_linear(x, weight, None, A, B, scaling) * scale  # (..., d)
    return out if bias is None else out + bias


class DoRALinear(LoRALinear):
    """A frozen ``Linear`` with DoRA adapters: a LoRALinear whose adapters also carry a
    magnitude ``m`` (d,), trained with A and B.

    Same arguments as :class:`LoRALinear` (the base must be a float ``nn.Linear``). Each
    adapter gets ``adapter.magnitude``, starting at ‖W0 + s·B A‖ row by row (PEFT's start), so
    a fresh layer computes its base's outputs. ``weights=(A, B, m)`` loads a saved adapter.

    merge() writes W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖ into the base weight; unmerge()
    recovers W0 with the norm remembered at merge time (up to rounding).
    """

    def __init__(self, base: nn.Linear, *args, **kwargs):
        if type(base) is not nn.Linear:
            raise TypeError(f"DoRALinear wraps a float nn.Linear, got {type(base).__name__}")
        self._merge_norm = None  # the norm merge() divided by, for unmerge()
        super().__init__(base, *args, **kwargs)

    @property
    def magnitude(self) -> nn.Parameter:
        """The active adapter's magnitude m, shape (d,)."""
        return self.active.magnitude

    def add_adapter(
        self, name, r, alpha, rslora=False, init="kaiming", dropout=0.0, *, weights=None
    ):
        """LoRALinear.add_adapter, then the adapter's magnitude (given as ``weights[2]``, or
        ‖W0 + s·B A‖ row by row)."""
        if init == "pissa":
            raise ValueError("DoRA takes init 'kaiming' or 'gaussian'; 'pissa' is not supported")
        self._require_unmerged("add a DoRA adapter (its magnitude starts from W0)")
        magnitude = None
        if weights is not None:
            if not (isinstance(weights, tuple | list) and len(weights) == 3):
                raise ValueError("weights for a DoRA adapter must be a triple (A, B, magnitude)")
            dtype = self.base.weight.data.dtype
            magnitude = backend.xp.array(weights[2], dtype=dtype, copy=True)
            if tuple(magnitude.shape) != (self.out_features,):
                raise ValueError(
                    f"weights for adapter {name!r}: magnitude of shape ({self.out_features},) "
                    f"expected, got {tuple(magnitude.shape)}"
                )
            weights = tuple(weights[:2])
        adapter = super().add_adapter(
            name, r, alpha, rslora=rslora, init=init, dropout=dropout, weights=weights
        )
        if magnitude is None:
            magnitude = weight_norm(
                self.base.weight.data, adapter.A.data, adapter.B.data, adapter.scaling
            )
        adapter.magnitude = nn.Parameter(magnitude, requires_grad=adapter.A.requires_grad)
        return adapter

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., k) -> (..., d)"""
        if self.merged or self._disabled:
            return self.base(x)
        a, base = self.active, self.base
        if not (a.dropout and self.training):
            return dora_linear(x, base.weight, base.bias, a.A, a.B, a.magnitude, a.scaling)
        # With dropout, PEFT's form: the base sees x, the DoRA part the dropped-out x'.
        # h = W0 x + b + (m/‖·‖ - 1) ⊙ W0 x' + m/‖·‖ ⊙ s·B A x'
        scale = a.magnitude / weight_norm(base.weight.data, a.A.data, a.B.data, a.scaling)  # (d,)
        dropped = F.dropout(x, a.dropout)
        side = F.lora_linear(dropped, base.weight, None, a.A, a.B, a.scaling) * scale
        return base(x) + side - F.linear(dropped, base.weight)

    def delta_weight(self, adapter_name: str | None = None):
        """W' - W0 for an adapter (default: the active one), an array (d, k); it depends on
        W0 (unlike LoRA's s·B A), so it needs the unmerged base."""
        self._require_unmerged("compute a DoRA update from the base weight")
        a = self.adapters[self.active_adapter if adapter_name is None else adapter_name]
        W0 = self.base.weight.data
        norm = weight_norm(W0, a.A.data, a.B.data, a.scaling)  # (d,)
        return (a.magnitude.data / norm)[:, None] * (W0 + a.delta_weight()) - W0

    def merge(self) -> None:
        """W0 <- m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖ in place; forward then costs one Linear."""
        self._check_merge()
        if self.merged:
            raise RuntimeError(
                f"adapter {self.active_adapter!r} is already merged; call unmerge() first"
            )
        a, W0 = self.active, self.base.weight.data
        norm = weight_norm(W0, a.A.data, a.B.data, a.scaling)  # (d,)
        with no_grad():
            self.base.weight.data = (a.magnitude.data / norm)[:, None] * (W0 + a.delta_weight())
        self._merge_norm = norm
        self.merged = True

    def unmerge(self) -> None:
        """W0 <- W' ⊙ ‖·‖ / m - s·B A, with the norm remembered at merge (PEFT's cache)."""
        if not self.merged:
            raise RuntimeError("this layer is not merged; there is nothing to unmerge")
        a = self.active
        with no_grad():
            factor = a.magnitude.data / self._merge_norm  # (d,)
            self.base.weight.data = self.base.weight.data / factor[:, None] - a.delta_weight()
        self._merge_norm = None
        self.merged = False

    def __repr__(self) -> str:
        return "DoRA" + super().__repr__()[4:]


def is_dora(adapter: LoRAAdapter) -> bool:
    """Whether an adapter carries a DoRA magnitude."""
    return isinstance(vars(adapter).get("magnitude"), nn.Parameter)
