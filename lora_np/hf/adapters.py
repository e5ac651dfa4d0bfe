"""LoRA adapters between lora_np's GPT and PEFT on the exported OPT model.

A PEFT adapter folder names layers by their path in the PyTorch model
(``base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight``); lora_np's name
the same layers ``blocks.0.attn.q``. Both directions translate names only: A, B, ranks, alphas
and rsLoRA carry over unchanged. Reading resolves PEFT's targeting rules (a string is a regex
for the whole name, a list matches suffixes; exclude_modules, layers_to_transform,
rank_pattern, alpha_pattern) against the OPT module names first, so lora_np is handed one
explicit entry per layer and never has to re-interpret a pattern written for other names.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

from .. import backend, lora, nn
from ..serialization import safetensors_bytes
from ..transformer import GPT, GPTConfig
from . import files, names

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
# PEFT also saves the weight of a targeted output layer (save_embedding_layers="auto").
_BASE_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.base_layer\.weight$")

# PEFT options lora_np cannot honour: a loaded model would compute something else.
_UNSUPPORTED_TRUE = ("use_dora", "lora_bias", "fan_in_fan_out")
_UNSUPPORTED_SET = ("modules_to_save", "target_parameters", "trainable_token_indices")
_UNSUPPORTED_SET += ("layer_replication", "alora_invocation_tokens")


# ============================================================================ lora_np -> PEFT


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _short_targets(opt_layers: list, all_linear: list) -> list:
    """target_modules as a PEFT user writes them (leaf names: "q_proj", "v_proj") when those
    select exactly ``opt_layers``, else the full names."""
    leaves = sorted({n.rpartition(".")[2] for n in opt_layers})
    selected = {n for n in all_linear if n.rpartition(".")[2] in leaves}
    return leaves if selected == set(opt_layers) else sorted(opt_layers)


def adapter_files(model: nn.Module, adapter_name: str) -> dict:
    """{"adapter_config.json": bytes, "adapter_model.safetensors": bytes} of one adapter of a
    lora_np GPT, for PEFT on the exported OPT model."""
    config = lora.adapter_config(model, adapter_name)  # refuses mixed rsLoRA / dropout
    if config["use_dora"]:  # the import side refuses use_dora too; no half-exported DoRA
        raise ValueError("DoRA adapters (use_dora) are not exported to transformers")
    layers = [
        (names.to_opt(n), layer.adapters[adapter_name])
        for n, layer in lora.lora_layers(model)
        if adapter_name in layer.adapters
    ]
    r = Counter(a.r for _, a in layers).most_common(1)[0][0]
    alpha = Counter(a.alpha for _, a in layers).most_common(1)[0][0]
    all_linear = [names.to_opt(n) for n in names.linear_names(model.config)]
    config |= {
        "r": r,
        "lora_alpha": _number(alpha),
        "rank_pattern": {n: a.r for n, a in layers if a.r != r},
        "alpha_pattern": {n: _number(a.alpha) for n, a in layers if a.alpha != alpha},
        "target_modules": _short_targets([n for n, _ in layers], all_linear),
        # The file holds trained A and B. "pissa" here would make PEFT run PiSSA's SVD again on
        # the exported base, which already is the residual; any other value is overwritten by
        # the file's A and B, so PEFT's default is written.
        "init_lora_weights": True,
    }
    tensors = {}
    for opt_name, adapter in layers:
        tensors[f"{lora.PREFIX}{opt_name}.lora_A.weight"] = adapter.A.data  # (r, k)
        tensors[f"{lora.PREFIX}{opt_name}.lora_B.weight"] = adapter.B.data  # (d, r)
    return {
        lora.CONFIG_NAME: files.json_bytes(config),
        lora.WEIGHTS_NAME: safetensors_bytes(tensors, {"format": "pt"}),
    }


# ============================================================================ PEFT -> lora_np


def _peft_selects(name: str, config: dict) -> bool:
    """PEFT's rule (check_target_module_exists): does the config adapt module ``name``?"""
    excluded = config.get("exclude_modules")
    if isinstance(excluded, str) and re.fullmatch(excluded, name):
        return False
    if isinstance(excluded, list) and any(name == e or name.endswith("." + e) for e in excluded):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    wanted = config.get("layers_to_transform")
    if wanted is None or wanted == []:
        return True
    wanted = [wanted] if isinstance(wanted, int) else wanted
    pattern = config.get("layers_pattern")
    patterns = [pattern] if isinstance(pattern, str) else (pattern or [])
    regexes = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in patterns] or [
        r".*?\.[^.]*\.(?P<idx>\d+)\."
    ]
    for regex in regexes:
        found = re.match(regex, name)
        if found:
            return int(found["idx"]) in wanted
    return False


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's get_pattern_key: the first key that matches the end of ``name`` (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_options(config: dict, where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ValueError(f"{where} has no {key!r} entry")
    unsupported = {k: config[k] for k in _UNSUPPORTED_TRUE if config.get(k)}
    unsupported |= {k: config[k] for k in _UNSUPPORTED_SET if config.get(k) not in (None, [], {})}
    if config.get("bias", "none") != "none":
        unsupported["bias"] = config["bias"]
    if unsupported:
        raise ValueError(
            f"{where} uses PEFT features lora_np cannot load: {unsupported} (lora_np adapts "
            "Linear layers with A and B only: no extra trained modules or biases, no DoRA)"
        )


def _check_targets(config: dict, gpt: GPTConfig, where: Path) -> list:
    """The OPT names of the Linear layers the config adapts; refuses targets outside them."""
    linear = [names.to_opt(n) for n in names.linear_names(gpt)]
    modules = names.opt_module_names(gpt)
    selected = [n for n in linear if _peft_selects(n, config)]
    targets = config["target_modules"]
    entries = [targets] if isinstance(targets, str) else list(targets)
    outside = []
    for entry in entries:
        alone = {**config, "target_modules": entry if isinstance(targets, str) else [entry]}
        alone |= {"exclude_modules": None, "layers_to_transform": None}
        hits = [m for m in modules if _peft_selects(m, alone)]
        if not hits:
            outside.append(f"{entry!r} matches no module of the model")
        elif any(m not in linear for m in hits):
            other = [m for m in hits if m not in linear]
            outside.append(f"{entry!r} selects {', '.join(other)}, which is not a Linear layer")
    if outside or not selected:
        raise ValueError(
            f"{where}: target_modules outside what lora_np's GPT can adapt: "
            + ("; ".join(outside) or "they select no layer")
            + f" (its Linear layers are {sorted({n.rpartition('.')[2] for n in linear})})"
        )
    return selected


def translate(folder, gpt: GPTConfig) -> tuple:
    """(lora_np adapter_config dict, {lora_np key: array}, {lora_np layer: base weight}) for a
    PEFT folder of the OPT model; everything lora_np cannot express raises a ValueError naming
    it. The base weights are those PEFT saved beside the adapter (a targeted ``lm_head``)."""
    folder = Path(folder)
    config = files.read_json(folder / lora.CONFIG_NAME)
    _check_options(config, folder / lora.CONFIG_NAME)
    tensors = files.read_float_tensors(folder / lora.WEIGHTS_NAME)
    selected = _check_targets(config, gpt, folder / lora.CONFIG_NAME)
    renamed, unknown, bases = {}, [], {}
    for key, array in tensors.items():
        found = _KEY.match(key)
        base = _BASE_KEY.match(key)
        if base is not None and base["module"] in selected:
            bases[names.from_opt(base["module"])] = array
            continue
        if found is None or found["module"] not in selected:
            unknown.append(key)
            continue
        renamed[f"{lora.PREFIX}{names.from_opt(found['module'])}.lora_{found['which']}.weight"] = (
            array
        )
    if unknown:
        raise ValueError(
            f"{folder / lora.WEIGHTS_NAME}: keys for no adapted Linear layer of the model: "
            f"{', '.join(sorted(unknown))}"
        )
    r, alpha = config["r"], config["lora_alpha"]
    ranks = {n: _pattern_value(config.get("rank_pattern") or {}, n, r) for n in selected}
    alphas = {n: _pattern_value(config.get("alpha_pattern") or {}, n, alpha) for n in selected}
    ours = {k: v for k, v in config.items() if k not in _UNSUPPORTED_SET}
    ours |= {
        "target_modules": [names.from_opt(n) for n in selected],
        "rank_pattern": {re.escape(names.from_opt(n)): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(names.from_opt(n)): v for n, v in alphas.items() if v != alpha},
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,
        "base_model_name_or_path": None,
    }
    return ours, renamed, bases


def _check_bases(model: GPT, bases: dict, folder: Path) -> None:
    """PEFT's copy of a base weight must be the model's: else the adapter is for another base."""
    modules = dict(model.named_modules())
    differ = []
    for name, array in bases.items():
        layer = modules[name]
        weight = (layer.base if isinstance(layer, lora.LoRALinear) else layer).weight.data
        if (
            tuple(array.shape) != tuple(weight.shape)
            or not (backend.to_numpy(weight) == array).all()
        ):
            differ.append(name)
    if differ:
        raise ValueError(
            f"{folder / lora.WEIGHTS_NAME} holds base weights for {', '.join(differ)} that differ "
            "from this model's: the adapter was trained on another base"
        )


def load_peft_adapter(
    model: nn.Module, folder, adapter_name: str = lora.DEFAULT_ADAPTER, is_trainable: bool = False
) -> list:
    """Load a PEFT adapter trained on the exported OPT model into lora_np's GPT ``model``.

    The adapter becomes the active one. As PEFT's ``from_pretrained``, only the adapter trains
    afterwards when ``is_trainable`` and nothing does otherwise. Returns the lora_np names of
    the adapted layers. Every check runs before the model changes.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"load_peft_adapter needs lora_np's GPT, got {type(model).__name__}")
    folder = Path(folder)
    config, tensors, bases = translate(folder, model.config)
    _check_bases(model, bases, folder)
    with tempfile.TemporaryDirectory(prefix="lora_np-peft-") as tmp:
        staged = Path(tmp) / "adapter"
        staged.mkdir()
        (staged / lora.CONFIG_NAME).write_bytes(files.json_bytes(config))
        (staged / lora.WEIGHTS_NAME).write_bytes(safetensors_bytes(tensors, {"format": "pt"}))
        try:
            loaded = lora.load_adapter(model, staged, adapter_name=adapter_name)
        except (ValueError, KeyError, RuntimeError) as err:
            text = str(err.args[0] if err.args else err).replace(str(staged), str(folder))
            raise type(err)(text) from None
    model.requires_grad_(False)
    if is_trainable:
        for _, layer in lora.lora_layers(model):
            if adapter_name in layer.adapters:
                layer.adapters[adapter_name].requires_grad_(True)
    return loaded
