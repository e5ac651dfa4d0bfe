r"""Finding the layers to adapt and wrapping them: ``inject`` (PEFT's target_modules rule),
``mark_only_lora_as_trainable`` (loralib's), and counting what trains.

The one targeting rule (PEFT's ``target_modules``), for ``inject``, ``add_adapter`` and
``load_adapter`` alike: a string is a regular expression that must match the whole dotted
module name (``re.fullmatch``); each entry of a list matches a name equal to it or ending in
"." + entry. So ``["q"]`` selects every ``blocks.<i>.attn.q``, and so does ``r".*\.q"``;
the string ``"q"`` selects only a module named exactly ``q``.
"""

from __future__ import annotations

import re

from .. import nn
from ..quantized import QuantizedLinear
from .dora import DoRALinear
from .layer import LoRALinear
from .validation import (
    DEFAULT_ADAPTER,
    check_adapter_name,
    check_alpha,
    check_options,
    check_rank,
)


def lora_layers(model: nn.Module) -> list:
    """(dotted name, LoRALinear) for every LoRA layer in ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_layers_or_error(model: nn.Module) -> list:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers; call lora.inject(model, ...) first")
    return layers


matches = nn.name_matches  # PEFT's rule for one entry of a target_modules list


def selects(name: str, targets) -> bool:
    """Whether ``targets`` (a regex string, or a list of names) select module ``name``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(matches(name, t) for t in targets)


def check_pattern(pattern: str) -> None:
    """Refuse a string target that is not a valid regular expression, naming it."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"target {pattern!r} is not a valid regular expression: {err}") from None


def _matched(modules: dict, targets) -> list:
    """(target, [names it selects]) for a regex string, or for each entry of a list."""
    if isinstance(targets, str):
        check_pattern(targets)
        return [(targets, [n for n in modules if n and selects(n, targets)])]
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"targets must be a regex string or a non-empty list of names, got {targets!r}"
        )
    return [(t, [n for n in modules if n and matches(n, t)]) for t in targets]


def _inside_lora(name: str, lora_names: list) -> bool:
    return any(name.startswith(prefix + ".") for prefix in lora_names)


def find_targets(model: nn.Module, targets) -> list:
    """The dotted names of the Linear modules (float or quantised) that ``targets`` select (model
    order), checked as ``inject`` does.

    ``targets``: a regex string for the whole name, or a list of names or dotted tails (see
    the module docstring). ``"all-linear"`` (PEFT's shorthand) selects every Linear but the
    model's output layer, the one its ``output_layer_name`` attribute names (the GPT's
    ``head``): a model without one is refused, as PEFT refuses models that do not name their
    output embeddings.

    Raises ValueError when a target matches nothing (listing the Linear names that exist) or
    matches a module that is not a Linear, when a match already carries LoRA, and when a
    string is not a valid regular expression.
    """
    if targets == ALL_LINEAR:
        targets = _all_linear(model)
    modules = dict(model.named_modules())
    lora_names = [n for n, m in modules.items() if isinstance(m, LoRALinear)]
    linear_names = [
        n
        for n, m in modules.items()
        if isinstance(m, nn.Linear | QuantizedLinear) and not _inside_lora(n, lora_names)
    ]
    selected = []
    for target, matched in _matched(modules, targets):
        if not matched:
            rule = (
                " (a string is a regular expression for the whole module name, as PEFT's "
                f"target_modules; a list, e.g. [{target!r}], also matches dotted tails)"
                if isinstance(targets, str)
                else ""
            )
            raise ValueError(
                f"target {target!r} matches no module{rule}; the Linear layers are: "
                f"{linear_names or 'none'}"
            )
        for name in matched:
            module = modules[name]
            if isinstance(module, LoRALinear) or _inside_lora(name, lora_names):
                raise ValueError(
                    f"target {target!r} matches {name!r}, which already has LoRA (injecting twice); "
                    "add another adapter with lora.add_adapter(model, name, ...)"
                )
            if not isinstance(module, nn.Linear | QuantizedLinear):
                raise ValueError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not a Linear; "
                    f"the Linear layers are: {linear_names}"
                )
            if name not in selected:
                selected.append(name)
    order = list(modules)
    return sorted(selected, key=order.index)  # model order, whatever the order of targets


ALL_LINEAR = "all-linear"


def _all_linear(model: nn.Module) -> list:
    """The full names of every Linear (float or quantised) except the output layer."""
    output = getattr(model, "output_layer_name", None)
    if not isinstance(output, str):
        raise ValueError(
            f"'all-linear' leaves out the model's output layer, but this {type(model).__name__} "
            "does not name one: give it an output_layer_name attribute, or list the targets"
        )
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | QuantizedLinear) and n and not matches(n, output)
    ]
    if not names:
        raise ValueError(f"'all-linear': the model has no Linear layer besides {output!r}")
    return names


def inject(model: nn.Module, targets, r: int, alpha: float, **lora_kwargs) -> list:
    r"""Wrap every Linear that ``targets`` select in a LoRALinear, in place; return their names.

    ``targets`` follow PEFT's ``target_modules`` rule: a list entry matches a module whose
    dotted name equals it or ends with "." + entry (["q"] selects every
    ``blocks.<i>.attn.q``, ["blocks.0.attn.q"] only that one); a string is a regular
    expression for the whole name (r"blocks\.0\.attn\.(q|v)"). Afterwards only LoRA
    parameters are trainable (``mark_only_lora_as_trainable``), as after PEFT's
    ``get_peft_model``.

    Args:
        model: any Module.
        targets: a list of names, a regex string, or "all-linear" (every Linear but the
            output layer).
        r, alpha, lora_kwargs: passed to every ``LoRALinear`` (rslora, init, dropout, adapter_name);
            ``use_dora=True`` makes them ``DoRALinear`` layers instead (PEFT's flag).
    Returns:
        The dotted names of the replaced layers, in model order.
    """
    names = find_targets(model, targets)
    modules = dict(model.named_modules())
    # Validate every argument on every layer before replacing anything.
    for name in names:
        base = modules[name]
        check_rank(r, base.out_features, base.in_features)
    check_alpha(alpha)
    use_dora = lora_kwargs.pop("use_dora", False)
    if not isinstance(use_dora, bool):
        raise TypeError(f"use_dora must be True or False, got {use_dora!r}")
    known = {"rslora", "init", "dropout", "adapter_name"}
    unknown = sorted(set(lora_kwargs) - known)
    if unknown:
        raise TypeError(f"inject got unknown arguments {unknown}; expected some of {sorted(known)}")
    check_options(
        lora_kwargs.get("init", "kaiming"),
        lora_kwargs.get("dropout", 0.0),
        lora_kwargs.get("rslora", False),
    )
    check_adapter_name(lora_kwargs.get("adapter_name", DEFAULT_ADAPTER))
    if use_dora and lora_kwargs.get("init") == "pissa":
        raise ValueError("use_dora=True takes init 'kaiming' or 'gaussian', not 'pissa'")
    kind = DoRALinear if use_dora else LoRALinear
    if use_dora:  # DoRA needs the float weight to take its norm
        quantised = [n for n in names if type(modules[n]) is not nn.Linear]
        if quantised:
            raise ValueError(f"use_dora=True needs float nn.Linear layers; {quantised} are not")
    for name in names:
        model.set_submodule(name, kind(modules[name], r, alpha, **lora_kwargs))
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
    layers = lora_layers_or_error(model)  # without LoRA, freezing would leave nothing to train
    model.requires_grad_(False)
    for _, layer in layers:
        layer.active.requires_grad_(True)
        if bias == "lora_only" and layer.base.bias is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for name, p in model.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                p.requires_grad_(True)


def freeze_base(model: nn.Module) -> None:
    """Freeze every parameter that is not a LoRA adapter's A or B, leaving the adapters' flags
    as they are (what PEFT does to a model it loads an adapter into)."""
    adapter_params = {id(p) for _, layer in lora_layers(model) for p in layer.adapters.parameters()}
    for p in model.parameters():
        if id(p) not in adapter_params:
            p.requires_grad_(False)


def lora_parameters(model: nn.Module, adapter_name: str | None = None) -> list:
    """The A and B Parameters of one adapter (default: each layer's active one), layer by layer."""
    params = []
    for _, layer in lora_layers_or_error(model):
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
