"""``export(model, folder)`` and ``load(folder)``: the tiny GPT as a transformers OPT folder.

The folder is what ``save_pretrained`` writes, so ``AutoModelForCausalLM.from_pretrained``
loads it with no custom code, and every adapter of the model sits in its own subfolder, which
``PeftModel.from_pretrained(model, folder / name)`` loads::

    folder/
        config.json                  OPTForCausalLM's config (hf.names.opt_config)
        model.safetensors            the base weights under OPT's names
        <adapter name>/
            adapter_config.json      PEFT's LoRA config for the OPT module names
            adapter_model.safetensors

Writing needs only lora_np's own safetensors writer: no torch.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .. import backend, lora, nn
from ..quantized import QuantizedLinear
from ..serialization import safetensors_bytes
from ..transformer import GPT
from . import adapters, files, names

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_OURS = {CONFIG_FILE, WEIGHTS_FILE}
_OURS_INSIDE = {lora.CONFIG_NAME, lora.WEIGHTS_NAME}


def base_state(model: GPT) -> dict:
    """{lora_np parameter name: array} of the base weights, whether or not LoRA is injected
    (``blocks.0.attn.q.base.weight`` counts as ``blocks.0.attn.q.weight``; A and B are left out)."""
    state = {}
    for name, p in model.named_parameters():
        if ".adapters." in name:
            continue
        state[name.replace(".base.", ".")] = p.data
    return state


def _check_exportable(model) -> None:
    """Everything export refuses, checked before anything is written."""
    if not isinstance(model, GPT):
        raise TypeError(f"export writes lora_np's GPT, got {type(model).__name__}")
    problems = []
    if model.config.dropout:
        problems.append(
            f"dropout={model.config.dropout} (OPT has no dropout after the embeddings; outputs "
            "in eval mode would agree, training would not: export a copy with dropout=0.0)"
        )
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            problems.append(
                f"{name} is quantised (a plain OPT folder holds float weights: "
                "quantized.dequantize_model(model) first)"
            )
        elif isinstance(module, lora.LoRALinear) and module.merged:
            problems.append(f"{name} has its adapter merged (unmerge, or merge_and_unload first)")
        elif isinstance(module, nn.LayerNorm) and getattr(module, "eps", 1e-5) != 1e-5:
            problems.append(f"{name} has eps={module.eps} (OPT's layer norms use 1e-5)")
    state = base_state(model)
    expected = names.parameter_shapes(model.config)
    if set(state) != set(expected):
        extra = sorted(set(state) - set(expected))
        problems.append(f"parameters that OPT has no place for: {extra}")
    dtypes = sorted({str(a.dtype) for a in state.values()})
    if len(dtypes) > 1 or dtypes[0] not in files.FLOAT_DTYPES.values():
        problems.append(f"weights in {dtypes} (export writes one dtype, float32 or float64)")
    if problems:
        raise ValueError("cannot export this model as OPT: " + "; ".join(problems))


def _adapter_names(model) -> list:
    return sorted({a for _, layer in lora.lora_layers(model) for a in layer.adapter_names})


def export(model: GPT, folder) -> Path:
    """Write ``model`` as an OPTForCausalLM folder and each of its adapters as a PEFT
    subfolder named after the adapter; returns the folder.

    Refused before anything is written, with every reason named: a model that is not
    lora_np's GPT, dropout > 0, a quantised or merged layer, mixed dtypes, an adapter PEFT's
    config cannot describe, a folder holding files export did not write. The folder is
    replaced as a whole (an adapter deleted since the last export disappears from it).
    """
    _check_exportable(model)
    state = base_state(model)
    dtype = str(next(iter(state.values())).dtype)
    xp = backend.xp
    tensors = {}
    for name, array in state.items():
        module, _, kind = name.rpartition(".")
        if name == "pos_emb.weight":  # OPT reads row position + 2; rows 0 and 1 are never used
            array = xp.concatenate([xp.zeros((names.OFFSET, array.shape[1]), array.dtype), array])
        tensors[f"{names.to_opt(module)}.{kind}"] = array
    out = {
        CONFIG_FILE: files.json_bytes(names.opt_config(model.config, dtype)),
        WEIGHTS_FILE: safetensors_bytes(tensors, {"format": "pt"}),
    }
    for adapter_name in _adapter_names(model):
        try:
            for file_name, data in adapters.adapter_files(model, adapter_name).items():
                out[f"{adapter_name}/{file_name}"] = data
        except (ValueError, KeyError) as err:
            raise ValueError(f"cannot export adapter {adapter_name!r}: {err}") from None
    return files.write_folder(folder, out, _OURS, _OURS_INSIDE)


@contextlib.contextmanager
def _same_random_state():
    """Building a GPT draws its random initialisation; loading should not move the user's
    random stream, so the generator's state is put back afterwards (where it has one)."""
    generator = getattr(backend.rng(), "bit_generator", None)
    state = generator.state if generator is not None else None
    try:
        yield
    finally:
        if state is not None:
            generator.state = state


def load_base(folder) -> GPT:
    """The GPT in an OPT folder's config.json and model.safetensors (no adapters), in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config = names.gpt_config(files.read_json(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
    tensors = files.read_float_tensors(folder / WEIGHTS_FILE)
    expected = {}
    for name, shape in names.parameter_shapes(config).items():
        module, _, kind = name.rpartition(".")
        if name == "pos_emb.weight":
            shape = (shape[0] + names.OFFSET, shape[1])
        expected[f"{names.to_opt(module)}.{kind}"] = (name, shape)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{key} {tuple(tensors[key].shape)} (expected {shape})"
        for key, (_, shape) in expected.items()
        if key in tensors and tuple(tensors[key].shape) != shape
    ]
    dtypes = sorted({str(a.dtype) for a in tensors.values()})
    problems = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(
        unexpected
    )
    problems += [f"shapes {wrong}"] * bool(wrong) + [f"mixed dtypes {dtypes}"] * (len(dtypes) > 1)
    if problems:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit its config: " + "; ".join(problems))
    state = {}
    for key, (name, _) in expected.items():
        array = tensors[key]
        state[name] = array[names.OFFSET :] if name == "pos_emb.weight" else array
    with _same_random_state():
        model = GPT(config).to(dtypes[0])
    model.load_state_dict({k: backend.xp.asarray(v) for k, v in state.items()})
    return model.eval()


def load(folder, adapters_to_load=None, active=None, is_trainable: bool = False) -> GPT:
    """A lora_np GPT from an OPT folder, with its PEFT adapters: those in subfolders that hold
    an adapter_config.json, or the subfolder names in ``adapters_to_load``.

    ``active`` names the adapter to activate (default: the first name in sorted order, as each
    folder is loaded in that order). As after PEFT's ``from_pretrained``, nothing is trainable
    unless ``is_trainable`` (then the active adapter is). Everything is read and checked before
    the model is returned; an error names the folder and what does not fit.
    """
    with _same_random_state():  # (load_adapter may draw a throw-away initial A)
        return _load(Path(folder), adapters_to_load, active, is_trainable)


def _load(folder: Path, adapters_to_load, active, is_trainable: bool) -> GPT:
    model = load_base(folder)
    if adapters_to_load is None:
        adapters_to_load = sorted(
            p.name for p in folder.iterdir() if (p / lora.CONFIG_NAME).is_file()
        )
    adapters_to_load = list(adapters_to_load)
    for adapter_name in adapters_to_load:
        adapters.load_peft_adapter(model, folder / adapter_name, adapter_name)
    if adapters_to_load:
        chosen = adapters_to_load[0] if active is None else active
        lora.set_adapter(model, chosen)
        model.requires_grad_(False)
        if is_trainable:
            lora.mark_only_lora_as_trainable(model)
    return model
