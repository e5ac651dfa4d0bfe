"""Adapters across a whole model: add, switch, delete, disable, merge, unload (PEFT's names).

Each function checks every LoRA layer before it changes any, so an error leaves the model as
it was.
"""

from __future__ import annotations

import contextlib

from .. import nn
from .targeting import check_pattern, lora_layers, lora_layers_or_error, selects
from .validation import check_each


def _select_layers(model: nn.Module, targets) -> list:
    layers = lora_layers_or_error(model)
    if targets is None:
        return layers
    if isinstance(targets, str):  # PEFT's rule, as inject's: a regex for the whole name
        check_pattern(targets)
    else:
        targets = list(targets)
    chosen = [(n, layer) for n, layer in layers if selects(n, targets)]
    if not chosen:
        raise ValueError(
            f"targets {targets} match no LoRA layer; they are: {[n for n, _ in layers]}"
        )
    return chosen


def add_adapter(
    model: nn.Module, name: str, r: int, alpha: float, targets=None, **lora_kwargs
) -> list:
    """Add adapter ``name`` to every LoRA layer (or those ``targets`` select: a regex string
    or a list of names, inject's rule); returns their names.

    The new adapter is frozen and inactive until ``set_adapter(model, name)``. Checked on every
    layer before any layer changes.
    """
    layers = _select_layers(model, targets)
    options = {"rslora": False, "init": "kaiming", "dropout": 0.0} | lora_kwargs
    if set(options) != {"rslora", "init", "dropout"}:
        raise TypeError(f"unknown arguments {sorted(set(options) - {'rslora', 'init', 'dropout'})}")
    check_each(layers, lambda layer: layer._check_new_adapter(name, r, alpha, **options))
    for _, layer in layers:
        layer.add_adapter(name, r, alpha, **options)
    return [n for n, _ in layers]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` active (and the only trainable adapter) in every LoRA layer."""
    layers = lora_layers_or_error(model)
    check_each(layers, lambda layer: layer._check_set_adapter(name))
    for _, layer in layers:
        layer.set_adapter(name)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every LoRA layer that has it."""
    layers = [(n, layer) for n, layer in lora_layers_or_error(model) if name in layer.adapters]
    if not layers:
        names = sorted({a for _, layer in lora_layers(model) for a in layer.adapter_names})
        raise KeyError(f"no adapter named {name!r}; the model has {names}")
    check_each(layers, lambda layer: layer._check_delete_adapter(name))
    for _, layer in layers:
        layer.delete_adapter(name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Inside this block every LoRA layer computes its base Linear: the base model, exactly."""
    layers = lora_layers_or_error(model)
    check_each(layers, lambda layer: layer._check_disable())
    with contextlib.ExitStack() as stack:
        for _, layer in layers:
            stack.enter_context(layer.disable_adapters())
        yield model


def merge_adapter(model: nn.Module) -> None:
    """Merge the active adapter into the base weight of every (unmerged) LoRA layer."""
    layers = lora_layers_or_error(model)
    check_each([(n, la) for n, la in layers if not la.merged], lambda la: la._check_merge())
    for _, layer in layers:
        if not layer.merged:
            layer.merge()


def unmerge_adapter(model: nn.Module) -> None:
    """Undo ``merge_adapter``: unmerge every merged LoRA layer."""
    for _, layer in lora_layers_or_error(model):
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and put the plain Linear layers back (PEFT's name): a model of
    the original architecture computing W0 + s·B A, to deploy with no extra latency."""
    layers = lora_layers_or_error(model)
    check_each([(n, la) for n, la in layers if not la.merged], lambda la: la._check_merge())
    for name, layer in layers:
        if not layer.merged:
            layer.merge()
        model.set_submodule(name, layer.base)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Drop every adapter and put the base Linear layers back unchanged (unmerging first).

    A "pissa" adapter has changed the base weight to the residual; unload leaves that residual.
    """
    for name, layer in lora_layers_or_error(model):
        if layer.merged:
            layer.unmerge()
        model.set_submodule(name, layer.base)
    return model
