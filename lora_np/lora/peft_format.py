"""Adapters in PEFT's file layout: ``save_adapter`` / ``load_adapter``.

An adapter is a folder, as PEFT's ``save_pretrained`` writes it::

    my_adapter/
        adapter_config.json          r, lora_alpha, target_modules, use_rslora, ...
        adapter_model.safetensors    base_model.model.<layer>.lora_A.weight  (r, k)
                                     base_model.model.<layer>.lora_B.weight  (d, r)

The keys carry no adapter name (PEFT drops it when saving), so a folder holds one adapter and
can be loaded under any name. Only A and B are stored (and a DoRA adapter's magnitude,
``base_model.model.<layer>.lora_magnitude_vector`` (d,), with ``use_dora: true``): kilobytes
where the model is megabytes.
A folder saved here loads into PEFT for a PyTorch model with the same module names, and one
PEFT saved loads here (``tests/crosscheck/test_lora_peft.py`` checks both ways).

Loading checks everything before it changes the model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from .. import nn
from ..quantized import QuantizedLinear
from ..serialization import read_pair, write_pair
from .dora import DoRALinear, is_dora
from .layer import LoRALinear
from .targeting import freeze_base, lora_layers, matches
from .validation import DEFAULT_ADAPTER, check_adapter_name, check_alpha, check_rank

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
"""What PEFT puts in front of a module's name in a saved adapter."""

_ADAPTABLE = (nn.Linear, QuantizedLinear, LoRALinear)  # layers an adapter file may name

_KEY = re.compile(
    r"^base_model\.model\.(?P<layer>.+)\.(?:lora_(?P<which>[AB])\.weight|lora_(?P<m>magnitude)_vector)$"
)
_MAGNITUDE = "lora_magnitude_vector"  # DoRA's m (d,), PEFT's key (no ".weight", no adapter name)


def _short_targets(model: nn.Module, layer_names: list) -> list:
    """target_modules for the config: the layers' last names ("q", "v") when those select
    exactly these layers in ``model`` (what a PEFT user writes), otherwise the full names."""
    leaves = sorted({name.rpartition(".")[2] for name in layer_names})
    candidates = [n for n, m in model.named_modules() if isinstance(m, _ADAPTABLE)]
    candidates = [
        n for n in candidates if not any(n.startswith(p + ".") for p, _ in lora_layers(model))
    ]
    selected = {n for n in candidates if any(matches(n, leaf) for leaf in leaves)}
    return leaves if selected == set(layer_names) else sorted(layer_names)


def _single(values: list, what: str, adapter_name: str):
    if len(set(values)) > 1:
        raise ValueError(
            f"adapter {adapter_name!r} has different {what} on different layers ({sorted(set(values))}); "
            "PEFT's adapter_config.json holds one value"
        )
    return values[0]


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def adapter_config(model: nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> dict:
    """The adapter_config.json content PEFT would write for this adapter (see save_adapter)."""
    layers = [
        (n, layer.adapters[adapter_name])
        for n, layer in lora_layers(model)
        if adapter_name in layer.adapters
    ]
    if not layers:
        names = sorted({a for _, layer in lora_layers(model) for a in layer.adapter_names})
        raise KeyError(f"no adapter named {adapter_name!r} in the model; it has {names}")
    r = Counter(a.r for _, a in layers).most_common(1)[0][0]
    alpha = Counter(a.alpha for _, a in layers).most_common(1)[0][0]
    init = layers[0][1].init
    return {
        "alpha_pattern": {n: _number(a.alpha) for n, a in layers if a.alpha != alpha},
        "base_model_name_or_path": None,
        "bias": "none",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True if init == "kaiming" else init,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": _number(alpha),
        "lora_bias": False,
        "lora_dropout": _single([a.dropout for _, a in layers], "dropout", adapter_name),
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {n: a.r for n, a in layers if a.r != r},
        "revision": None,
        "target_modules": _short_targets(model, [n for n, _ in layers]),
        "task_type": None,
        "use_dora": _single([is_dora(a) for _, a in layers], "use_dora", adapter_name),
        "use_rslora": _single([a.rslora for _, a in layers], "rslora", adapter_name),
    }


def save_adapter(model: nn.Module, path, adapter_name: str = DEFAULT_ADAPTER) -> Path:
    """Write one adapter as a PEFT folder: adapter_config.json and adapter_model.safetensors.

    Only A and B of each layer are stored, in their own dtype, under PEFT's key names
    (``base_model.model.<layer>.lora_A.weight``), and for a DoRA adapter its magnitude
    (``base_model.model.<layer>.lora_magnitude_vector``, with ``use_dora: true``). Layers with a different rank or alpha from
    the most common one go into ``rank_pattern`` / ``alpha_pattern`` under their full name, as
    PEFT would read them.

    As PEFT's ``save_pretrained``: the folder is created if needed, a path that is a file is
    refused, and only the adapter's two files are written; every other entry of the folder
    (checkpoints, notes, ``.git``, symlinks) is left as it is. The two files are written as a
    pair (``serialization.write_pair``): a load never pairs one save's config with another's
    weights, a failed save leaves the old adapter, and symlinks are written through.

    A "pissa" adapter is stored like any other, but it belongs to the *residual* base weight:
    load it into a model whose base weights are that residual, not the original W0.

    Returns:
        The folder's path.
    """
    config = adapter_config(model, adapter_name)
    tensors = {}
    for name, layer in lora_layers(model):
        if adapter_name in layer.adapters:
            adapter = layer.adapters[adapter_name]
            tensors[f"{PREFIX}{name}.lora_A.weight"] = adapter.A.data  # (r, k)
            tensors[f"{PREFIX}{name}.lora_B.weight"] = adapter.B.data  # (d, r)
            if is_dora(adapter):
                tensors[f"{PREFIX}{name}.{_MAGNITUDE}"] = adapter.magnitude.data  # (d,)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"cannot save an adapter to {folder}: it is a file, and an adapter is a folder "
            f"holding {CONFIG_NAME} and {WEIGHTS_NAME}; choose a folder path"
        )
    folder.mkdir(parents=True, exist_ok=True)
    # Only these two files are written, as a pair: a folder with new weights beside the old
    # config would load without error and match neither adapter (serialization.write_pair).
    write_pair(folder, WEIGHTS_NAME, tensors, {"format": "pt"}, CONFIG_NAME, text.encode())
    return folder


# ============================================================================ adapters: loading


def _read_config(path: Path, raw: bytes) -> dict:
    """The config (``raw``, the bytes of ``path``) as a dict, every entry lora_np reads checked
    for its JSON type."""
    try:
        config = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is truncated or corrupt, not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r} entry")
    try:
        _check_config_types(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    unsupported = {k: config.get(k) for k in ("fan_in_fan_out", "lora_bias") if config.get(k)}
    if config.get("bias", "none") != "none":
        unsupported["bias"] = config["bias"]
    if unsupported:
        raise ValueError(f"{path} uses LoRA options lora_np does not support: {unsupported}")
    return config


def _key(layer: str, part: str) -> str:
    """The file key of a layer's A, B or DoRA magnitude ("m"), as PEFT names it."""
    return f"{PREFIX}{layer}.{_MAGNITUDE}" if part == "m" else f"{PREFIX}{layer}.lora_{part}.weight"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_names(x) -> bool:
    """A regex string, or a list of module names (PEFT's two forms of target_modules)."""
    return isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, str) for t in x))


def _check_regex(pattern: str, key: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{key} {pattern!r} is not a valid regular expression ({err})") from None


def _check_config_types(config: dict) -> None:
    """JSON types as PEFT writes them: bools are true/false (``"false"`` is not False), ranks
    are integers, and every regex compiles. Raises ValueError naming the entry."""
    for key in ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias", "inference_mode"):
        if key in config and not isinstance(config[key], bool):
            raise ValueError(f"{key} must be true or false, got {config[key]!r}")
    if not _is_int(config["r"]):
        raise ValueError(f"'r' must be a whole number, got {config['r']!r}")
    if not _is_number(config["lora_alpha"]):
        raise ValueError(f"lora_alpha must be a number, got {config['lora_alpha']!r}")
    dropout = config.get("lora_dropout")
    if dropout is not None and not _is_number(dropout):
        raise ValueError(f"lora_dropout must be a number, got {dropout!r}")
    for key in ("target_modules", "exclude_modules"):
        value = config.get(key)
        if value is None and key == "exclude_modules":
            continue
        if not _is_names(value) or value == []:
            raise ValueError(
                f"{key} must be a regex string or a non-empty list of module names, got {value!r}"
            )
        if isinstance(value, str):
            _check_regex(value, key)
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        _is_int(layers) or (isinstance(layers, list) and all(_is_int(i) for i in layers))
    ):
        raise ValueError(f"layers_to_transform must be a layer index or a list, got {layers!r}")
    pattern = config.get("layers_pattern")
    if pattern is not None and not _is_names(pattern):
        raise ValueError(f"layers_pattern must be a string or a list, got {pattern!r}")
    for key, valid, what in (
        ("rank_pattern", _is_int, "whole numbers"),
        ("alpha_pattern", _is_number, "numbers"),
    ):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict) or not all(valid(v) for v in patterns.values()):
            raise ValueError(f"{key} must map module names to {what}, got {patterns!r}")
        for name in patterns:
            _check_regex(name, key)


def _pattern_value(patterns: dict, layer_name: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches a layer name or its dotted tail."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", layer_name):
            return value
    return default


def _names_match(name: str, names) -> bool:
    """PEFT's rule: a string is a regex for the whole name; a list entry matches a name that
    equals it or ends with "." + entry."""
    if isinstance(names, str):
        return re.fullmatch(names, name) is not None
    return any(matches(name, t) for t in names)


def _layer_index(name: str, layers_pattern):
    """The block index in ``name`` (the number after ``layers_pattern``, or after any part
    when there is none), as PEFT finds it for ``layers_to_transform``; None if none."""
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
    for part in patterns or [r"[^.]*"]:
        found = re.match(rf"(?:.*\.)?{part}\.(\d+)\.", name)
        if found:
            return int(found.group(1))
    return None


def _selected_by_config(name: str, config: dict) -> bool:
    """Whether the config's target_modules, exclude_modules and layers_to_transform select
    the layer ``name``."""
    if not _names_match(name, config["target_modules"]):
        return False
    excluded = config.get("exclude_modules")
    if excluded is not None and _names_match(name, excluded):
        return False
    layers = config.get("layers_to_transform")
    if layers is not None:
        wanted = [layers] if isinstance(layers, int) else layers
        return _layer_index(name, config.get("layers_pattern")) in wanted
    return True


def _targeted(model: nn.Module, config: dict) -> list:
    """Names of the Linear / LoRALinear layers that the config selects."""
    lora_names = [n for n, _ in lora_layers(model)]
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, _ADAPTABLE) or any(name.startswith(p + ".") for p in lora_names):
            continue
        if _selected_by_config(name, config):
            names.append(name)
    return names


def load_adapter(
    model: nn.Module, path, adapter_name: str = DEFAULT_ADAPTER, is_trainable: bool = False
) -> list:
    """Load a PEFT-layout adapter folder into ``model`` under ``adapter_name``; make it active.

    As PEFT's ``PeftModel.from_pretrained`` / ``load_adapter``: every parameter outside the
    adapters is frozen, and the loaded adapter trains only with ``is_trainable=True``; other
    adapters keep their flags (an inactive one is frozen). No random number is drawn.

    The two files are read as one save's pair, even while another process saves into the
    folder; the weights file's header is checked against its size before its tensors are read;
    bf16 weights load as float32. Plain Linear layers named in the file are wrapped in a
    LoRALinear; layers that already are LoRALinear get a new adapter. Everything is checked
    before anything changes: readable files, a LoRA config, key names, missing keys (a
    targeted layer without weights, or A without B), unexpected keys (a layer the model does not have, or that is not a Linear), target_modules
    that select no layer of the model (as PEFT, even when the keys would fit), shapes (the key
    and both shapes are named), an adapter name already in use, a merged layer.

    Returns:
        The names of the layers that received the adapter, in model order.
    """
    if not isinstance(is_trainable, bool):
        raise TypeError(f"is_trainable must be True or False, got {is_trainable!r}")
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f"{folder} is a file; an adapter is a folder")
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    try:  # one save's pair, even while another process saves into the folder
        tensors, _, raw_config = read_pair(folder, WEIGHTS_NAME, CONFIG_NAME)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err} (an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME})"
        ) from None
    config = _read_config(folder / CONFIG_NAME, raw_config)
    check_adapter_name(adapter_name)
    modules = dict(model.named_modules())
    lora_names = [n for n, _ in lora_layers(model)]

    weights, unexpected = {}, []
    for key, array in tensors.items():
        match = _KEY.match(key)
        module = modules.get(match["layer"]) if match else None
        inside_lora = match is not None and any(
            match["layer"].startswith(p + ".") for p in lora_names
        )
        if module is None or inside_lora or not isinstance(module, _ADAPTABLE):
            unexpected.append(key)
            continue
        weights.setdefault(match["layer"], {})[match["which"] or "m"] = array
    targeted = _targeted(model, config)
    if not targeted:  # as PEFT: "Target modules ... not found", whatever the weights' keys say
        raise ValueError(
            f"{folder}: this adapter is for other modules; target_modules "
            f"{config['target_modules']} match no Linear layer of the model"
        )
    dora = config.get("use_dora", False)
    parts = "ABm" if dora else "AB"  # DoRA adds the magnitude m beside A and B
    missing = [_key(n, w) for n in targeted for w in parts if w not in weights.get(n, {})]
    missing += [
        _key(n, w) for n in weights for w in parts if w not in weights[n] and n not in targeted
    ]
    problems = []
    if not dora:
        unexpected += [_key(n, "m") for n in weights if weights[n].pop("m", None) is not None]
    not_selected = [n for n in weights if n not in targeted and len(weights[n]) == len(parts)]
    if not_selected and targeted:
        problems.append(
            f"the weights file holds layers not selected by the config's target_modules / "
            f"exclude_modules / layers_to_transform: {', '.join(not_selected)}"
        )
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(
            f"unexpected keys (no such Linear in the model): {', '.join(sorted(unexpected))}"
        )

    plan = []  # (layer name, module, r, alpha, A, B, m or None)
    for name in (n for n in modules if n in weights and len(weights[n]) == len(parts)):
        module = modules[name]
        base = module.base if isinstance(module, LoRALinear) else module
        A, B = weights[name]["A"], weights[name]["B"]
        r = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        expected = {"A": (r, base.in_features), "B": (base.out_features, r)}
        expected["m"] = (base.out_features,)
        for which in parts:
            array = weights[name][which]
            if tuple(array.shape) != expected[which]:
                problems.append(
                    f"{_key(name, which)} has shape {tuple(array.shape)} in the file "
                    f"but the model expects {expected[which]}"
                )
            elif array.dtype.kind != "f":
                problems.append(f"{_key(name, which)} has dtype {array.dtype}, not a float")
        if isinstance(module, LoRALinear) and isinstance(module, DoRALinear) != dora:
            problems.append(
                f"{name!r} is a {type(module).__name__}; a {'DoRA' if dora else 'LoRA'} "
                "adapter cannot be added to it"
            )
        elif dora and type(base) is not nn.Linear:
            problems.append(f"{name!r}: DoRA needs a float nn.Linear, not {type(base).__name__}")
        if isinstance(module, LoRALinear):
            if adapter_name in module.adapters:
                problems.append(f"{name!r} already has an adapter named {adapter_name!r}")
            if module.merged:
                problems.append(f"{name!r} is merged; unmerge it before loading another adapter")
        plan.append((name, module, r, alpha, A, B, weights[name].get("m")))
    if problems:
        raise ValueError(f"cannot load {folder} into this model: " + " | ".join(problems))
    for name, module, r, alpha, *_ in plan:
        base = module.base if isinstance(module, LoRALinear) else module
        try:
            check_rank(r, base.out_features, base.in_features)
            check_alpha(alpha)
        except ValueError as err:
            raise ValueError(f"cannot load {folder}: {name}: {err}") from None

    options = {
        "rslora": config.get("use_rslora", False),
        "dropout": float(config.get("lora_dropout", 0.0) or 0.0),
    }
    for name, module, r, alpha, A, B, m in plan:
        given = (A, B) if m is None else (A, B, m)
        if isinstance(module, LoRALinear):
            layer = module
            layer.add_adapter(adapter_name, r, alpha, **options, weights=given)
        else:
            kind = DoRALinear if dora else LoRALinear
            layer = kind(module, r, alpha, adapter_name=adapter_name, **options, weights=given)
            model.set_submodule(name, layer)
        layer.set_adapter(adapter_name)
        layer.adapters[adapter_name].requires_grad_(is_trainable)
    freeze_base(model)
    return [name for name, *_ in plan]
