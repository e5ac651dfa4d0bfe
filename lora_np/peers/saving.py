"""Saving what PEFT has no format for (adapter layers, prefix tuning) in lora_np's own layout.

One safetensors file (atomic, no pickle: :mod:`lora_np.serialization`) holding only the
method's trained tensors under their names in the adapted model, and in its metadata the
method and its settings, so :func:`load_peer` can rebuild it on a plain base GPT:

    method "adapter_layers": kind, r, activation; tensors blocks.<i>.{attn,mlp}.adapter.*
                             (and blocks.<i>.ln_1/ln_2.* for Adapter^H, which trains them)
    method "prefix":         mode, n_prefix; tensor "prefix" (l_p, C) or (L, l_p, C)

This is not PEFT's layout: PEFT's adapter-layer methods and its prefix tuning (which stores
per-layer keys and values) are other designs. DoRA is saved by ``lora.save_adapter``.
BitFit trains the model's own biases: save the model (``GPT.save``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .. import backend, serialization
from .adapters import AdaptedSublayer, add_adapter_layers
from .prefix import PrefixTuning

FORMAT = "lora_np.peers"


def _describe(model) -> tuple[dict, dict]:
    """(settings, tensors) of the peer method in ``model``, or a ValueError."""
    if isinstance(model, PrefixTuning):
        settings = {"method": "prefix", "mode": model.mode, "n_prefix": model.n_prefix}
        return settings, {"prefix": model.prefix.data}
    adapted = [m for _, m in model.named_modules() if isinstance(m, AdaptedSublayer)]
    if not adapted:
        raise ValueError(
            f"{type(model).__name__} has neither adapter layers nor a prefix to save "
            "(LoRA and DoRA: lora.save_adapter; BitFit: GPT.save)"
        )
    first = adapted[0].adapter
    settings = {
        "method": "adapter_layers",
        "kind": "lin" if first.norm is not None else "houlsby",
        "r": first.down.out_features,
        "activation": first.activation,
    }
    tensors = {n: p.data for n, p in model.named_parameters() if p.requires_grad}
    return settings, tensors


def save_peer(model, path) -> Path:
    """Write the adapter layers or the prefix of ``model`` (see the module doc) to ``path``."""
    settings, tensors = _describe(model)
    meta = {"format": FORMAT, "settings": json.dumps(settings, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    serialization.atomic_write(path, serialization.safetensors_bytes(tensors, meta))
    return path


def _build(model, settings: dict):
    """The model with the saved method attached (in place for adapter layers)."""
    if settings["method"] == "prefix":
        return PrefixTuning(model, settings["n_prefix"], settings["mode"])
    add_adapter_layers(model, settings["kind"], settings["r"], settings["activation"])
    return model


def load_peer(model, path):
    """Attach the method saved at ``path`` to the plain GPT ``model`` and load its tensors;
    return the adapted model (``model`` itself for adapter layers, a PrefixTuning around it
    for a prefix). Names and shapes are checked on a copy first: on any error ``model`` is
    left as it was."""
    header, meta = serialization.read_header(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lora_np peers file (format {meta.get('format')!r})")
    try:
        settings = json.loads(meta["settings"])
        trial = _build(copy.deepcopy(model), settings)  # raises on a model that does not fit
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"cannot load {path} into this model: {err}") from None
    tensors = serialization.read_safetensors(path)
    expected = {n: tuple(p.shape) for n, p in trial.named_parameters() if p.requires_grad}
    found = {n: tuple(a.shape) for n, a in tensors.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or [
            f"{n}: {found[n]} in the file, {expected[n]} expected"
            for n in found
            if found[n] != expected[n]
        ]
        raise ValueError(f"cannot load {path} into this model: {', '.join(map(str, wrong[:6]))}")
    adapted = _build(model, settings)
    params = dict(adapted.named_parameters())
    for name, array in tensors.items():
        target = params[name]
        target.data = backend.xp.asarray(array, dtype=target.data.dtype)
    return adapted
