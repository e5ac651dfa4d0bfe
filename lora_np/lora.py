"""LoRA: low-rank adaptation of a frozen ``Linear`` layer, and the tools around it.

The idea (Hu et al. 2021, Eq. 3): keep the pretrained weight W0 (d, k) frozen and learn a
low-rank update ΔW = B A, with A (r, k) and B (d, r), r much smaller than min(d, k):

    h = W0 x + b + s · B A x,        s = alpha / r   (or alpha / sqrt(r) with rsLoRA)

A starts random and B starts at zero, so ΔW = 0 and the adapted model starts exactly where the
pretrained one was. Only A and B get gradients and optimiser state.

What is in this file, in reading order:

1. ``LoRAAdapter``: one adapter's A, B and its settings (r, alpha, scaling, dropout).
2. ``LoRALinear``: a Linear with one or more named adapters; merge / unmerge; disable.
3. Model-level tools, named as in loralib and PEFT: ``inject``, ``mark_only_lora_as_trainable``,
   ``count_parameters`` / ``trainable_summary``, ``add_adapter`` / ``set_adapter`` /
   ``delete_adapter`` / ``disable_adapters``, ``merge_adapter`` / ``unmerge_adapter`` /
   ``merge_and_unload`` / ``unload``, ``combine_adapters``.

Saving and loading adapters in PEFT's file layout lives in :mod:`lora_np.io`
(``save_adapter`` / ``load_adapter``, also importable from here).

The rules, in one place:

* **Merging.** ``merge()`` adds s·B·A of the active adapter into the base weight in place; the
  layer then costs exactly one Linear. ``unmerge()`` subtracts the same s·B·A again. Merging a
  merged layer or unmerging an unmerged one is a RuntimeError, never a silent double update.
  While merged, the adapters are locked: switching, disabling, deleting the merged adapter and
  combining raise a RuntimeError that says to ``unmerge()`` first (the paper's recipe for
  switching tasks: subtract B A, add B' A').
* **Several adapters.** A layer holds named adapters; one is *active* (used in forward and the
  only one whose A and B require a gradient). ``add_adapter`` adds a frozen, inactive adapter;
  ``set_adapter`` makes one active and trainable (as PEFT does). Deleting the active adapter
  activates the first remaining one; the last adapter cannot be deleted (use ``unload``).
* **Errors leave nothing changed.** Every check runs before the first change.
"""

from __future__ import annotations

import contextlib
import math
import numbers

from . import backend, nn
from . import functional as F
from .autograd import Tensor, no_grad

INITS = ("kaiming", "gaussian", "pissa")
"""Valid values of ``init``. For experiments with other starts (both zero, both random), set
``layer.A.data`` and ``layer.B.data`` by hand after construction."""

DEFAULT_ADAPTER = "default"
_RESERVED_NAMES = ("training",)  # attribute names a Module already uses


# ============================================================================ validation


def _check_rank(r, d: int, k: int) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r} ({type(r).__name__})")
    if not 1 <= r <= min(d, k):
        raise ValueError(
            f"LoRA rank r must be between 1 and min(d, k) = min({d}, {k}) = {min(d, k)} for this "
            f"layer, got r={r}"
        )
    return int(r)


def _check_alpha(alpha) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"lora alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _check_options(init, dropout, rslora) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(map(repr, INITS))}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"lora dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(rslora, bool):
        raise ValueError(f"rslora must be True or False, got {rslora!r}")


def _check_adapter_name(name) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "." in name
        or name.startswith("_")
        or name in _RESERVED_NAMES
    ):
        raise ValueError(
            f"adapter name must be a non-empty string without dots, not starting with '_' and "
            f"not {_RESERVED_NAMES}; got {name!r}"
        )
    return name


# ============================================================================ one adapter


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
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

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


def _initial_weights(weight, r: int, scaling: float, init: str):
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
    root = xp.sqrt(S[:r] / scaling)  # (r,)
    A64 = root[:, None] * Vt[:r]  # (r, k)
    B64 = U[:, :r] * root[None, :]  # (d, r)
    residual = W64 - scaling * (B64 @ A64)  # (d, k)
    return A64.astype(dtype), B64.astype(dtype), residual.astype(dtype)


# ============================================================================ the layer


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus low-rank adapters: h = W0 x + b + s · B A dropout(x).

    Args:
        base: the ``nn.Linear`` to adapt; its weight W0 (d, k) = (out, in) and bias are frozen.
        r: rank, an integer 1 <= r <= min(d, k).
        alpha: scale constant > 0; the update is multiplied by s = alpha / r.
        rslora: use s = alpha / sqrt(r) (rank-stabilised LoRA, PEFT's ``use_rslora``).
        init: "kaiming" (default, as PEFT/loralib), "gaussian" or "pissa"; see ``INITS``.
        dropout: dropout probability on the adapter's input (training mode only).
        adapter_name: the first adapter's name.

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
    ):
        if isinstance(base, LoRALinear):
            raise TypeError(
                "this layer is already a LoRALinear; add another adapter with add_adapter()"
            )
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__()
        self.base = base
        self.adapters = _AdapterDict()
        self.active_adapter = None
        self.merged = False
        self._disabled = False
        self.add_adapter(adapter_name, r, alpha, rslora=rslora, init=init, dropout=dropout)
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
        """x: (..., k) -> (..., d)"""
        if self.merged or self._disabled:
            return self.base(x)  # W0 x + b (with s·B A inside W0 when merged)
        adapter, base = self.active, self.base
        if adapter.dropout and self.training:  # the side path sees a dropped-out input
            low = F.linear(F.dropout(x, adapter.dropout), adapter.A) * adapter.scaling  # (..., r)
            return base(x) + F.linear(low, adapter.B)  # (..., d): W0 x + b + s · B A x'
        # The same sum as one op: W0 x + b + s · B (A x), s applied to the r-wide activation
        return F.lora_linear(x, base.weight, base.bias, adapter.A, adapter.B, adapter.scaling)

    def delta_weight(self, adapter_name: str | None = None):
        """ΔW = s · B A of an adapter (default: the active one), an array of shape (d, k)."""
        name = self.active_adapter if adapter_name is None else adapter_name
        return self.adapters[name].delta_weight()

    # ------------------------------------------------------------------ merge / unmerge
    def merge(self) -> None:
        """W0 <- W0 + s·B A, in place. Afterwards forward costs exactly one Linear."""
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

    def set_scale(self, factor: float, adapter_name: str | None = None) -> None:
        """Dial an adapter's strength: s = factor · alpha / r (PEFT's ``set_scale``).

        factor 0 gives the base layer's outputs, 1 the trained adapter. Refused while merged:
        unmerge() must subtract exactly the s·B·A that merge() added.
        """
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise ValueError(f"scale factor must be a real number, got {factor!r}")
        if not math.isfinite(factor):
            raise ValueError(f"scale factor must be finite, got {factor!r}")
        adapter = self.adapters[self.active_adapter if adapter_name is None else adapter_name]
        self._require_unmerged("change an adapter's scale")
        adapter.scaling = float(factor) * adapter.trained_scaling

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
    ) -> LoRAAdapter:
        """Add a new adapter (frozen and inactive until ``set_adapter(name)``).

        "pissa" rewrites the base weight, so it is only allowed while the layer is unmerged.
        """
        self._check_new_adapter(name, r, alpha, rslora, init, dropout)
        if init == "pissa":
            self._require_unmerged("add a 'pissa' adapter")
        r, alpha = int(r), float(alpha)
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        A, B, residual = _initial_weights(self.base.weight.data, r, scaling, init)
        adapter = LoRAAdapter(A, B, alpha, rslora, float(dropout), init)
        adapter.requires_grad_(False)
        if residual is not None:
            self.base.weight.data = residual
        setattr(self.adapters, name, adapter)
        return adapter

    def _check_new_adapter(self, name, r, alpha, rslora, init, dropout) -> None:
        _check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        _check_rank(r, self.base.out_features, self.base.in_features)
        _check_alpha(alpha)
        _check_options(init, dropout, rslora)

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the active adapter: used in forward, the only one that trains."""
        self.adapters[name]  # KeyError listing the names if unknown
        if name != self.active_adapter:
            self._require_unmerged(f"switch to adapter {name!r}")
        for other_name, adapter in self.adapters.named_children():
            adapter.requires_grad_(other_name == name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter. Deleting the active one activates the first remaining adapter."""
        self.adapters[name]
        if len(self.adapters) == 1:
            raise ValueError(
                f"{name!r} is this layer's only adapter; a LoRALinear needs one. "
                "Use lora.unload(model) to remove LoRA altogether"
            )
        if name == self.active_adapter:
            self._require_unmerged(f"delete the active adapter {name!r}")
        delattr(self.adapters, name)
        if name == self.active_adapter:
            self.set_adapter(self.adapters.names()[0])

    @contextlib.contextmanager
    def disable_adapters(self):
        """Inside this block the layer computes exactly its base Linear (no adapter)."""
        self._require_unmerged("disable adapters")
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


# ============================================================================ model tools


def lora_layers(model: nn.Module) -> list:
    """(dotted name, LoRALinear) for every LoRA layer in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _lora_layers_or_error(model: nn.Module) -> list:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers; call lora.inject(model, ...) first")
    return layers


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a target_modules entry: the whole name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def _inside_lora(name: str, lora_names: list) -> bool:
    return any(name.startswith(prefix + ".") for prefix in lora_names)


def find_targets(model: nn.Module, targets) -> list:
    """The dotted names of the Linear modules that ``targets`` select (model order), checked as
    ``inject`` does.

    Raises ValueError when a target matches nothing (listing the Linear names that exist) or
    matches a module that is not a Linear, and when a match already carries LoRA.
    """
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a non-empty list of module names, got {targets!r}")
    modules = dict(model.named_modules())
    lora_names = [n for n, m in modules.items() if isinstance(m, LoRALinear)]
    linear_names = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.Linear) and not _inside_lora(n, lora_names)
    ]
    selected = []
    for target in targets:
        matched = [n for n in modules if n and _matches(n, target)]
        if not matched:
            raise ValueError(
                f"target {target!r} matches no module; the Linear layers are: {linear_names or 'none'}"
            )
        for name in matched:
            module = modules[name]
            if isinstance(module, LoRALinear) or _inside_lora(name, lora_names):
                raise ValueError(
                    f"target {target!r} matches {name!r}, which already has LoRA (injecting twice); "
                    "add another adapter with lora.add_adapter(model, name, ...)"
                )
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not a Linear; "
                    f"the Linear layers are: {linear_names}"
                )
            if name not in selected:
                selected.append(name)
    order = list(modules)
    return sorted(selected, key=order.index)  # model order, whatever the order of targets


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def inject(model: nn.Module, targets, r: int, alpha: float, **lora_kwargs) -> list:
    """Wrap every Linear that ``targets`` select in a LoRALinear, in place; return their names.

    A target matches a module whose dotted name equals it or ends with "." + target, as PEFT
    matches ``target_modules``: "q" selects every ``blocks.<i>.attn.q``, "blocks.0.attn.q" only
    that one. Afterwards only LoRA parameters are trainable (``mark_only_lora_as_trainable``),
    as after PEFT's ``get_peft_model``.

    Args:
        model: any Module.
        targets: a name or a list of names.
        r, alpha, lora_kwargs: passed to every ``LoRALinear`` (rslora, init, dropout, adapter_name).
    Returns:
        The dotted names of the replaced layers, in model order.
    """
    names = find_targets(model, targets)
    modules = dict(model.named_modules())
    # Validate every argument on every layer before replacing anything.
    for name in names:
        base = modules[name]
        _check_rank(r, base.out_features, base.in_features)
    _check_alpha(alpha)
    known = {"rslora", "init", "dropout", "adapter_name"}
    unknown = sorted(set(lora_kwargs) - known)
    if unknown:
        raise TypeError(f"inject got unknown arguments {unknown}; expected some of {sorted(known)}")
    _check_options(
        lora_kwargs.get("init", "kaiming"),
        lora_kwargs.get("dropout", 0.0),
        lora_kwargs.get("rslora", False),
    )
    _check_adapter_name(lora_kwargs.get("adapter_name", DEFAULT_ADAPTER))
    for name in names:
        _set_submodule(model, name, LoRALinear(modules[name], r, alpha, **lora_kwargs))
    mark_only_lora_as_trainable(model)
    return names


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except the active adapters' A and B (loralib's function).

    Args:
        bias: "none" (every bias frozen), "all" (every bias trains) or "lora_only" (the biases
            of LoRA-wrapped layers train), as in loralib.
    """
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    model.requires_grad_(False)
    for _, layer in lora_layers(model):
        layer.active.requires_grad_(True)
        if bias == "lora_only" and layer.base.bias is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for name, p in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                p.requires_grad_(True)


def lora_parameters(model: nn.Module, adapter_name: str | None = None) -> list:
    """The A and B Parameters of one adapter (default: each layer's active one), layer by layer."""
    params = []
    for _, layer in _lora_layers_or_error(model):
        adapter = layer.active if adapter_name is None else layer.adapters[adapter_name]
        params += [adapter.A, adapter.B]
    return params


def count_parameters(model: nn.Module) -> tuple:
    """(trainable, total) numbers of parameter entries; total includes the LoRA ones (as PEFT)."""
    params = model.parameters()
    return sum(p.size for p in params if p.requires_grad), sum(p.size for p in params)


def trainable_summary(model: nn.Module) -> str:
    """PEFT's ``print_trainable_parameters`` line:
    "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7321"."""
    trainable, total = count_parameters(model)
    share = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}"


# ---------------------------------------------------------------------------- adapters, model-wide


def _select_layers(model: nn.Module, targets) -> list:
    layers = _lora_layers_or_error(model)
    if targets is None:
        return layers
    targets = [targets] if isinstance(targets, str) else list(targets)
    chosen = [(n, layer) for n, layer in layers if any(_matches(n, t) for t in targets)]
    if not chosen:
        raise ValueError(
            f"targets {targets} match no LoRA layer; they are: {[n for n, _ in layers]}"
        )
    return chosen


def add_adapter(
    model: nn.Module, name: str, r: int, alpha: float, targets=None, **lora_kwargs
) -> list:
    """Add adapter ``name`` to every LoRA layer (or those ``targets`` select); returns their names.

    The new adapter is frozen and inactive until ``set_adapter(model, name)``. Checked on every
    layer before any layer changes.
    """
    layers = _select_layers(model, targets)
    options = {"rslora": False, "init": "kaiming", "dropout": 0.0} | lora_kwargs
    if set(options) != {"rslora", "init", "dropout"}:
        raise TypeError(f"unknown arguments {sorted(set(options) - {'rslora', 'init', 'dropout'})}")
    for layer_name, layer in layers:
        try:
            layer._check_new_adapter(name, r, alpha, **options)
            if options["init"] == "pissa":
                layer._require_unmerged("add a 'pissa' adapter")
        except (ValueError, RuntimeError) as err:
            raise type(err)(f"{layer_name}: {err}") from None
    for _, layer in layers:
        layer.add_adapter(name, r, alpha, **options)
    return [n for n, _ in layers]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` active (and the only trainable adapter) in every LoRA layer."""
    layers = _lora_layers_or_error(model)
    for layer_name, layer in layers:
        if name not in layer.adapters:
            raise KeyError(
                f"no adapter named {name!r} in {layer_name!r}; it has {layer.adapter_names}"
            )
        if layer.merged and layer.active_adapter != name:
            layer._require_unmerged(f"switch {layer_name!r} to adapter {name!r}")
    for _, layer in layers:
        layer.set_adapter(name)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every LoRA layer that has it."""
    layers = [(n, layer) for n, layer in _lora_layers_or_error(model) if name in layer.adapters]
    if not layers:
        names = sorted({a for _, layer in lora_layers(model) for a in layer.adapter_names})
        raise KeyError(f"no adapter named {name!r}; the model has {names}")
    for layer_name, layer in layers:
        if len(layer.adapters) == 1:
            raise ValueError(
                f"{name!r} is the only adapter of {layer_name!r}; use lora.unload(model)"
            )
        if layer.active_adapter == name:
            layer._require_unmerged(f"delete the active adapter {name!r} of {layer_name!r}")
    for _, layer in layers:
        layer.delete_adapter(name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Inside this block every LoRA layer computes its base Linear: the base model, exactly."""
    layers = _lora_layers_or_error(model)
    for layer_name, layer in layers:
        if layer.merged:
            raise RuntimeError(f"cannot disable adapters: {layer_name!r} is merged; unmerge first")
    with contextlib.ExitStack() as stack:
        for _, layer in layers:
            stack.enter_context(layer.disable_adapters())
        yield model


def merge_adapter(model: nn.Module) -> None:
    """Merge the active adapter into the base weight of every (unmerged) LoRA layer."""
    for _, layer in _lora_layers_or_error(model):
        if not layer.merged:
            layer.merge()


def unmerge_adapter(model: nn.Module) -> None:
    """Undo ``merge_adapter``: unmerge every merged LoRA layer."""
    for _, layer in _lora_layers_or_error(model):
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and put the plain Linear layers back (PEFT's name): a model of
    the original architecture computing W0 + s·B A, to deploy with no extra latency."""
    for name, layer in _lora_layers_or_error(model):
        if not layer.merged:
            layer.merge()
        _set_submodule(model, name, layer.base)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Drop every adapter and put the base Linear layers back unchanged (unmerging first).

    A "pissa" adapter has changed the base weight to the residual; unload leaves that residual.
    """
    for name, layer in _lora_layers_or_error(model):
        if layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base)
    return model


# ---------------------------------------------------------------------------- combining adapters


def _combined_weights(layer: LoRALinear, names, weights, how: str, rank):
    """(A, B) of the combination on one layer; the new adapter has scaling 1 (alpha = r)."""
    xp = backend.xp
    adapters = [layer.adapters[n] for n in names]
    if how == "cat":
        # [B_1 ... B_n] [w_1 s_1 A_1; ...; w_n s_n A_n] = sum_i w_i s_i B_i A_i: exact.
        A = xp.concatenate([w * a.scaling * a.A.data for a, w in zip(adapters, weights)], axis=0)
        B = xp.concatenate([a.B.data for a in adapters], axis=1)
        return A, B
    if how == "linear":
        # Average the factors (PEFT's "linear"): not the average of the updates, because
        # (sum B_i)(sum A_j) has cross terms B_i A_j.
        roots = [math.sqrt(w * a.scaling) for a, w in zip(adapters, weights)]
        A = sum(c * a.A.data for a, c in zip(adapters, roots))
        B = sum(c * a.B.data for a, c in zip(adapters, roots))
        return A, B
    # "svd": the best rank-`rank` approximation of the weighted sum of updates.
    delta = sum(w * a.delta_weight().astype("float64") for a, w in zip(adapters, weights))
    U, S, Vt = xp.linalg.svd(delta, full_matrices=False)
    root = xp.sqrt(S[:rank])
    dtype = adapters[0].A.dtype
    return (root[:, None] * Vt[:rank]).astype(dtype), (U[:, :rank] * root).astype(dtype)


def combine_adapters(
    target, names, weights, how: str = "cat", new_name: str = "combined", rank=None
) -> list:
    """Add a new adapter ``new_name`` built from existing ones (PEFT's ``add_weighted_adapter``).

    how:
        "cat": rank = sum of ranks; ΔW_new = sum_i w_i s_i B_i A_i exactly.
        "linear": needs equal ranks; A = sum_i sqrt(w_i s_i) A_i and B likewise; weights >= 0.
            Not exact: B_new A_new also holds the cross terms B_i A_j.
        "svd": the weighted sum of updates truncated to ``rank`` (default: the largest rank),
            the best approximation of that rank (Eckart–Young).
    The new adapter has alpha = r (scaling 1), is added inactive (``set_adapter`` to use it).

    Args:
        target: a LoRALinear or a model (every LoRA layer must hold all ``names``).
    Returns:
        The names of the layers changed ("" for a single layer).
    """
    layers = [("", target)] if isinstance(target, LoRALinear) else _lora_layers_or_error(target)
    names, weights = list(names), [float(w) for w in weights]
    if not names or len(names) != len(weights):
        raise ValueError(f"need one weight per adapter, got names {names} and weights {weights}")
    if how not in ("cat", "linear", "svd"):
        raise ValueError(f"how must be 'cat', 'linear' or 'svd', got {how!r}")
    if how == "linear" and any(w < 0 for w in weights):
        raise ValueError(
            f"'linear' takes square roots of the weights; they must be >= 0, got {weights}"
        )
    _check_adapter_name(new_name)
    plans = []
    for layer_name, layer in layers:
        ranks = [layer.adapters[n].r for n in names]  # KeyError if missing
        if new_name in layer.adapters:
            raise ValueError(
                f"{layer_name or 'the layer'} already has an adapter named {new_name!r}"
            )
        if how == "linear" and len(set(ranks)) != 1:
            raise ValueError(f"'linear' needs adapters of equal rank, got ranks {ranks}")
        new_rank = {"cat": sum(ranks), "linear": ranks[0], "svd": rank or max(ranks)}[how]
        _check_rank(new_rank, layer.out_features, layer.in_features)
        plans.append((layer, new_rank))
    for layer, new_rank in plans:
        A, B = _combined_weights(layer, names, weights, how, new_rank)
        adapter = layer.add_adapter(new_name, new_rank, float(new_rank))  # alpha = r: scaling 1
        adapter.A.data, adapter.B.data = A.astype(adapter.A.dtype), B.astype(adapter.B.dtype)
    return [n for n, _ in layers]


def save_adapter(model, path, adapter_name: str = DEFAULT_ADAPTER):
    """See :func:`lora_np.io.save_adapter`."""
    from .io import save_adapter as _save

    return _save(model, path, adapter_name=adapter_name)


def load_adapter(model, path, adapter_name: str = DEFAULT_ADAPTER):
    """See :func:`lora_np.io.load_adapter`."""
    from .io import load_adapter as _load

    return _load(model, path, adapter_name=adapter_name)
