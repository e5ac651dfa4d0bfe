"""One adapter (``LoRAAdapter``), its initialisations, and the layer that holds adapters
(``LoRALinear``): h = W0 x + b + s · B A x.
"""

from __future__ import annotations

import contextlib
import math
import numbers

from .. import backend, fastpaths, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..quantized import QuantizedLinear
from .validation import (
    DEFAULT_ADAPTER,
    check_adapter_name,
    check_alpha,
    check_options,
    check_rank,
    scaling,
)


class LoRAAdapter(nn.Module):
    """One low-rank update s · B A for a layer with weight W0 of shape (d, k).

    Attributes:
        A: Parameter (r, k), the "down" projection (starts random).
        B: Parameter (d, r), the "up" projection (starts at zero).
        r, alpha, rslora, dropout, init: the settings it was made with.
        scaling: s = alpha / r, or alpha / sqrt(r) when ``rslora``.
    """

    def __init__(self, A, B, alpha: float, rslora: bool, dropout: float, init: str):
        super().__init__()
        self.r = A.shape[0]
        self.alpha, self.rslora, self.dropout, self.init = alpha, rslora, dropout, init
        self.scaling = self.trained_scaling  # set_scale() may change it later
        self.A = nn.Parameter(A)  # (r, k)
        self.B = nn.Parameter(B)  # (d, r)

    @property
    def trained_scaling(self) -> float:
        """alpha / r (or alpha / sqrt(r)): the scale the adapter was made and trained with."""
        return scaling(self.alpha, self.r, self.rslora)

    def delta_weight(self):
        """s · B A as an array (d, k), in the adapter's dtype, outside any graph."""
        return self.scaling * (self.B.data @ self.A.data)  # (d, r) @ (r, k)

    def __repr__(self) -> str:
        extra = ", rslora=True" if self.rslora else ""
        return f"LoRAAdapter(r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}{extra}, init={self.init!r})"


class _AdapterDict(nn.Module):
    """Named adapters as attributes, so parameters are named ``adapters.<name>.A``."""

    def __getitem__(self, name: str) -> LoRAAdapter:
        adapter = vars(self).get(name)
        if not isinstance(adapter, LoRAAdapter):
            raise KeyError(f"no adapter named {name!r}; this layer has {self.names()}")
        return adapter

    def __contains__(self, name) -> bool:
        return isinstance(vars(self).get(name), LoRAAdapter)

    def names(self) -> list:
        return [name for name, _ in self.named_children()]

    def __len__(self) -> int:
        return len(self.names())


def _initial_weights(weight, r: int, s: float, init: str):
    """(A, B, new W0 or None) for an initialisation; ``weight`` is the base's (d, k) array.

    * "kaiming": A ~ U(-1/sqrt(k), 1/sqrt(k)), which is PyTorch's kaiming_uniform_ with
      a = sqrt(5) on an (r, k) tensor (what loralib and PEFT's default do); B = 0.
    * "gaussian": A ~ N(0, (1/r)^2), B = 0. The paper says "random Gaussian" without a scale;
      this is PEFT's ``init_lora_weights="gaussian"``, std 1/r.
    * "pissa" (Meng et al. 2024, as PEFT implements it): with W0 = U S V^T, take the top r
      directions: A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s), so s · B A = U_r S_r V_r^T,
      W0's best rank-r part. That part is subtracted from the frozen weight (the "residual"),
      so the layer's output is unchanged at step 0, up to rounding.
    """
    xp = backend.xp
    d, k = weight.shape
    dtype = weight.dtype
    if init == "kaiming":
        bound = 1.0 / math.sqrt(k)
        A = backend.rng().uniform(-bound, bound, size=(r, k)).astype(dtype)
        return A, xp.zeros((d, r), dtype=dtype), None
    if init == "gaussian":
        A = (backend.rng().standard_normal((r, k)) / r).astype(dtype)
        return A, xp.zeros((d, r), dtype=dtype), None
    # pissa: the SVD in float64 so the residual is as exact as the base's dtype allows
    W64 = weight.astype("float64")
    U, S, Vt = xp.linalg.svd(W64, full_matrices=False)
    root = xp.sqrt(S[:r] / s)  # (r,)
    A64 = root[:, None] * Vt[:r]  # (r, k)
    B64 = U[:, :r] * root[None, :]  # (d, r)
    residual = W64 - s * (B64 @ A64)  # (d, k)
    return A64.astype(dtype), B64.astype(dtype), residual.astype(dtype)


# ============================================================================ the layer


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus low-rank adapters: h = W0 x + b + s · B A dropout(x).

    Args:
        base: the ``nn.Linear`` to adapt; its weight W0 (d, k) = (out, in) and bias are frozen.
            A ``quantized.QuantizedLinear`` works too (QLoRA: adapters on a 4-bit base, which
            is dequantised on every forward); it cannot be merged into or take "pissa".
        r: rank, an integer 1 <= r <= min(d, k).
        alpha: scale constant > 0; the update is multiplied by s = alpha / r.
        rslora: use s = alpha / sqrt(r) (rank-stabilised LoRA, PEFT's ``use_rslora``).
        init: "kaiming" (default, as PEFT/loralib), "gaussian" or "pissa"; see ``INITS``.
        dropout: dropout probability on the adapter's input (training mode only).
        adapter_name: the first adapter's name.
        weights: ``(A, B)`` arrays of shapes (r, k) and (d, r) to start from instead of ``init``
            (loading a saved adapter): then no random number is drawn.

    Attributes:
        base: the wrapped Linear. A, B, r, alpha, scaling: the active adapter's.
        adapters: every adapter by name. active_adapter: the active one's name.
        merged: True while the active adapter is added into ``base.weight``.

    ``pissa`` changes ``base.weight`` (it becomes the residual W0 - s·B A).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        rslora: bool = False,
        init: str = "kaiming",
        dropout: float = 0.0,
        adapter_name: str = DEFAULT_ADAPTER,
        *,
        weights: tuple | None = None,
    ):
        if isinstance(base, LoRALinear):
            raise TypeError(
                "this layer is already a LoRALinear; add another adapter with add_adapter()"
            )
        if not isinstance(base, nn.Linear | QuantizedLinear):
            raise TypeError(
                f"LoRALinear wraps an nn.Linear, got {type(base).__name__} (a quantised base, "
                "quantized.QuantizedLinear, works too)"
            )
        super().__init__()
        self.base = base
        self.adapters = _AdapterDict()
        self.active_adapter = None
        self.merged = False
        self._disabled = False
        self.add_adapter(
            adapter_name, r, alpha, rslora=rslora, init=init, dropout=dropout, weights=weights
        )
        base.requires_grad_(False)  # after add_adapter: a bad argument leaves base untouched
        self.set_adapter(adapter_name)

    # ------------------------------------------------------------------ the active adapter
    @property
    def active(self) -> LoRAAdapter:
        return self.adapters[self.active_adapter]

    @property
    def A(self) -> nn.Parameter:
        """The active adapter's A, shape (r, k)."""
        return self.active.A

    @property
    def B(self) -> nn.Parameter:
        """The active adapter's B, shape (d, r)."""
        return self.active.B

    @property
    def r(self) -> int:
        return self.active.r

    @property
    def alpha(self) -> float:
        return self.active.alpha

    @property
    def scaling(self) -> float:
        return self.active.scaling

    @property
    def adapter_names(self) -> list:
        return self.adapters.names()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """h = base(x) + s · (x' Aᵀ) Bᵀ: x (..., k) -> h (..., d), x' = dropout(x) while
        training (x itself otherwise).

        In plain mode (``lora_np.plain()``) this is computed as written; otherwise by
        :meth:`_fast_forward`, its fast path, which gives the same numbers to rounding.
        """
        if self.merged or self._disabled:
            return self.base(x)  # W0 x + b (with s·B A inside W0 when merged)
        if not fastpaths.is_plain():
            return self._fast_forward(x)
        adapter = self.active
        x_side = F.dropout(x, adapter.dropout, self.training)  # (..., k)
        return self.base(x) + adapter.scaling * F.linear(F.linear(x_side, adapter.A), adapter.B)

    def _fast_forward(self, x: Tensor) -> Tensor:
        """Fast path of :meth:`forward` (its plain twin): the same sum with s applied to the
        r-wide ``x' Aᵀ`` instead of the d-wide output, and without dropout as one fused op,
        ``F.lora_linear`` (one op instead of five; no W0 gradient formed)."""
        adapter, base = self.active, self.base
        if adapter.dropout and self.training:  # the side path sees a dropped-out input
            low = F.linear(F.dropout(x, adapter.dropout), adapter.A) * adapter.scaling  # (..., r)
            return base(x) + F.linear(low, adapter.B)  # (..., d): W0 x + b + s · B A x'
        return F.lora_linear(x, base.weight, base.bias, adapter.A, adapter.B, adapter.scaling)

    def delta_weight(self, adapter_name: str | None = None):
        """ΔW = s · B A of an adapter (default: the active one), an array of shape (d, k)."""
        name = self.active_adapter if adapter_name is None else adapter_name
        return self.adapters[name].delta_weight()

    # ------------------------------------------------------------------ merge / unmerge
    def merge(self) -> None:
        """W0 <- W0 + s·B A, in place. Afterwards forward costs exactly one Linear."""
        self._check_merge()
        if self.merged:
            raise RuntimeError(
                f"adapter {self.active_adapter!r} is already merged; merging again would add "
                "s·B·A twice. Call unmerge() first"
            )
        with no_grad():
            self.base.weight.data += self.delta_weight()
        self.merged = True

    def unmerge(self) -> None:
        """W0 <- W0 - s·B A: the base weight again, up to float rounding.

        The subtraction recomputes the same s·B A that merge() added, so the only error is the
        rounding of the two additions: elementwise |W_unmerged - W0| <= eps · (|W0| + |ΔW|),
        eps the dtype's machine epsilon (tested).
        """
        if not self.merged:
            raise RuntimeError("this layer is not merged; there is nothing to unmerge")
        with no_grad():
            self.base.weight.data -= self.delta_weight()
        self.merged = False

    def set_scale(self, adapter: str, scale: float) -> None:
        """Dial adapter ``adapter``'s strength: s = scale · alpha / r (PEFT's
        ``LoraLayer.set_scale(adapter, scale)``, same order).

        scale 0 gives the base layer's outputs, 1 the trained adapter. Refused while merged:
        unmerge() must subtract exactly the s·B·A that merge() added. An unknown adapter is a
        KeyError (PEFT skips it silently: a typo would change nothing, unnoticed).
        """
        if not isinstance(adapter, str):
            raise TypeError(
                f"set_scale(adapter, scale) takes the adapter's name first, as PEFT's does; got "
                f"adapter={adapter!r}. For the active adapter: "
                f"layer.set_scale(layer.active_adapter, {adapter!r})"
            )
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ValueError(f"scale factor must be a real number, got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale factor must be finite, got {scale!r}")
        chosen = self.adapters[adapter]
        self._require_unmerged("change an adapter's scale")
        chosen.scaling = float(scale) * chosen.trained_scaling

    def _check_merge(self) -> None:
        if isinstance(self.base, QuantizedLinear):
            # W0 + s·B A quantised again would round most of the small update away (PEFT warns
            # the same for 4-bit bases); merging into the dequantised float weight keeps it.
            raise RuntimeError(
                f"cannot merge into a quantised base ({self.base.kind}, {self.base.bits} bits): "
                "its weight is stored as codes. Dequantise it first "
                "(quantized.dequantize_model(model)), then merge"
            )

    def _require_unmerged(self, action: str) -> None:
        if self.merged:
            raise RuntimeError(
                f"cannot {action} while adapter {self.active_adapter!r} is merged into the base "
                "weight; call unmerge() first"
            )

    # ------------------------------------------------------------------ several adapters
    def add_adapter(
        self,
        name: str,
        r: int,
        alpha: float,
        rslora: bool = False,
        init: str = "kaiming",
        dropout: float = 0.0,
        *,
        weights: tuple | None = None,
    ) -> LoRAAdapter:
        """Add a new adapter (frozen and inactive until ``set_adapter(name)``).

        "pissa" rewrites the base weight, so it is only allowed as the layer's first adapter.
        ``weights``: ``(A, B)`` to start from, shapes (r, k) and (d, r), copied in the base's
        dtype; ``init`` is then only recorded, and no random number is drawn.
        """
        self._check_new_adapter(name, r, alpha, rslora, init, dropout)
        r, alpha = int(r), float(alpha)
        if weights is None:
            A, B, residual = _initial_weights(
                self.base.weight.data, r, scaling(alpha, r, rslora), init
            )
        else:
            A, B = self._given_weights(name, r, weights, init)
            residual = None
        adapter = LoRAAdapter(A, B, alpha, rslora, float(dropout), init)
        adapter.requires_grad_(False)
        if residual is not None:
            self.base.weight.data = residual
        setattr(self.adapters, name, adapter)
        return adapter

    def _given_weights(self, name: str, r: int, weights, init: str) -> tuple:
        """``weights`` as (A, B) arrays of the base's dtype, shapes checked."""
        if init == "pissa":
            raise ValueError("init='pissa' computes A and B from the base weight; give no weights")
        if not (isinstance(weights, tuple | list) and len(weights) == 2):
            raise ValueError(f"weights must be a pair (A, B), got {type(weights).__name__}")
        dtype = self.base.weight.data.dtype
        A, B = (backend.xp.array(w, dtype=dtype, copy=True) for w in weights)  # never aliased
        expected = {"A": (r, self.in_features), "B": (self.out_features, r)}
        for which, array in (("A", A), ("B", B)):
            if tuple(array.shape) != expected[which]:
                raise ValueError(
                    f"weights for adapter {name!r}: {which} of shape {expected[which]} expected "
                    f"(r={r}), got {tuple(array.shape)}"
                )
        return A, B

    def _check_new_adapter(self, name, r, alpha, rslora, init, dropout) -> None:
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        check_rank(r, self.base.out_features, self.base.in_features)
        check_alpha(alpha)
        check_options(init, dropout, rslora)
        if init == "pissa":
            if isinstance(self.base, QuantizedLinear):
                raise ValueError(
                    "init='pissa' rewrites the base weight into its residual, but this base is "
                    "quantised (read-only codes); use init='kaiming' or 'gaussian'"
                )
            self._require_unmerged("add a 'pissa' adapter")
            if len(self.adapters):
                # PiSSA moves W0's top-r part from the base weight into A and B; with other
                # adapters present that would change what every one of them computes.
                raise ValueError(
                    f"a 'pissa' adapter rewrites the base weight into its residual, which would "
                    f"change the outputs of the adapters already here ({self.adapters.names()}); "
                    "'pissa' can only be a layer's first adapter (LoRALinear or inject with "
                    "init='pissa')"
                )

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the active adapter: used in forward, the only one that trains."""
        self._check_set_adapter(name)
        for other_name, adapter in self.adapters.named_children():
            adapter.requires_grad_(other_name == name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter. Deleting the active one activates the first remaining adapter."""
        self._check_delete_adapter(name)
        delattr(self.adapters, name)
        if name == self.active_adapter:
            self.set_adapter(self.adapters.names()[0])

    # ------------------------------------------------------------------ the checks
    # One check per operation: the layer's method runs it before changing anything, and the
    # model-wide functions run it on every layer first (validation.check_each).
    def _check_set_adapter(self, name: str) -> None:
        self.adapters[name]  # KeyError listing the names if unknown
        if name != self.active_adapter:
            self._require_unmerged(f"switch to adapter {name!r}")

    def _check_delete_adapter(self, name: str) -> None:
        self.adapters[name]
        if len(self.adapters) == 1:
            raise ValueError(
                f"{name!r} is this layer's only adapter; a LoRALinear needs one. "
                "Use lora.unload(model) to remove LoRA altogether"
            )
        if name == self.active_adapter:
            self._require_unmerged(f"delete the active adapter {name!r}")

    def _check_disable(self) -> None:
        self._require_unmerged("disable adapters")

    @contextlib.contextmanager
    def disable_adapters(self):
        """Inside this block the layer computes exactly its base Linear (no adapter)."""
        self._check_disable()
        previous, self._disabled = self._disabled, True
        try:
            yield self
        finally:
            self._disabled = previous

    def __repr__(self) -> str:
        state = ", merged" if self.merged else ""
        return (
            f"LoRALinear({self.base!r}, active={self.active_adapter!r}, "
            f"adapters={self.adapters.names()}{state})"
        )
