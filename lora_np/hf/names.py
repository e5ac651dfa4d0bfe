"""The tiny GPT in OPT's layout: module names, parameter shapes and the config, both ways.

transformers' ``OPTForCausalLM`` with ``do_layer_norm_before=True`` is the same computation as
lora_np's GPT: learned token and position embeddings, pre-norm blocks (layer norm, attention
with biased q, k, v, o projections, layer norm, a 4x MLP with the tanh GELU), a final layer
norm and an untied head. Only the names differ, and OPT keeps two extra position rows in front
(its position ids start at 2, a left-over of fairseq's padding scheme)::

    lora_np                      OPT (OPTForCausalLM)
    tok_emb                      model.decoder.embed_tokens
    pos_emb (T, C)               model.decoder.embed_positions (T + 2, C), rows 2..T+1
    blocks.{i}.ln_1              model.decoder.layers.{i}.self_attn_layer_norm
    blocks.{i}.attn.{q,k,v,o}    model.decoder.layers.{i}.self_attn.{q,k,v,out}_proj
    blocks.{i}.ln_2              model.decoder.layers.{i}.final_layer_norm
    blocks.{i}.mlp.{fc,proj}     model.decoder.layers.{i}.{fc1,fc2}
    ln_f                         model.decoder.final_layer_norm
    head                         lm_head
"""

from __future__ import annotations

import re

from ..transformer import GPTConfig

OFFSET = 2
"""Rows OPT keeps in front of the learned positions (``OPTLearnedPositionalEmbedding.offset``)."""

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
"""transformers' names for GELU in its tanh form, the one lora_np's ``F.gelu`` computes."""

_TOP = {
    "tok_emb": "model.decoder.embed_tokens",
    "pos_emb": "model.decoder.embed_positions",
    "ln_f": "model.decoder.final_layer_norm",
    "head": "lm_head",
}
_BLOCK = {
    "ln_1": "self_attn_layer_norm",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.out_proj",
    "ln_2": "final_layer_norm",
    "mlp.fc": "fc1",
    "mlp.proj": "fc2",
}
_LINEAR_PARTS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")


def to_opt(name: str) -> str:
    """A lora_np module name ("blocks.0.attn.q") -> OPT's ("model.decoder.layers.0.self_attn.q_proj")."""
    if name in _TOP:
        return _TOP[name]
    found = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if found and found[2] in _BLOCK:
        return f"model.decoder.layers.{found[1]}.{_BLOCK[found[2]]}"
    raise ValueError(f"{name!r} is not a module of lora_np's GPT; OPT has no counterpart for it")


def from_opt(name: str) -> str:
    """An OPT module name -> lora_np's; ValueError for a module the tiny GPT does not have."""
    for ours, theirs in _TOP.items():
        if name == theirs:
            return ours
    found = re.fullmatch(r"model\.decoder\.layers\.(\d+)\.(.+)", name)
    if found:
        for ours, theirs in _BLOCK.items():
            if found[2] == theirs:
                return f"blocks.{found[1]}.{ours}"
    raise ValueError(f"{name!r} is not a module that lora_np's GPT has")


def parameter_shapes(config: GPTConfig) -> dict:
    """{lora_np parameter name: shape} of ``GPT(config)``, in model order, without building it."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (config.block_size, C)}
    for i in range(config.n_layer):
        p = f"blocks.{i}."
        for norm in ("ln_1", "ln_2"):
            shapes |= {f"{p}{norm}.weight": (C,), f"{p}{norm}.bias": (C,)}
        for part in ("attn.q", "attn.k", "attn.v", "attn.o"):
            shapes |= {f"{p}{part}.weight": (C, C), f"{p}{part}.bias": (C,)}
        shapes |= {f"{p}mlp.fc.weight": (4 * C, C), f"{p}mlp.fc.bias": (4 * C,)}
        shapes |= {f"{p}mlp.proj.weight": (C, 4 * C), f"{p}mlp.proj.bias": (C,)}
    return shapes | {"ln_f.weight": (C,), "ln_f.bias": (C,), "head.weight": (V, C)}


def linear_names(config: GPTConfig) -> list:
    """The lora_np names of every Linear of ``GPT(config)`` (the layers LoRA can adapt)."""
    blocks = [f"blocks.{i}.{part}" for i in range(config.n_layer) for part in _LINEAR_PARTS]
    return blocks + ["head"]


def opt_module_names(config: GPTConfig) -> list:
    """Every module name of ``OPTForCausalLM`` for this config (what a PEFT target can match)."""
    names = ["model", "model.decoder", "model.decoder.layers"]
    names += [to_opt(n) for n in ("tok_emb", "pos_emb", "ln_f", "head")]
    for i in range(config.n_layer):
        layer = f"model.decoder.layers.{i}"
        names += [layer, f"{layer}.self_attn", f"{layer}.activation_fn"]
        names += [f"{layer}.{part}" for part in _BLOCK.values()]
    return names


def opt_config(config: GPTConfig, dtype: str) -> dict:
    """config.json of the OPTForCausalLM that computes ``GPT(config)`` (weights in ``dtype``)."""
    return {
        "_remove_final_layer_norm": False,
        "activation_dropout": 0.0,
        "activation_function": "gelu_new",  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": None,  # the course's tokenizer is not a transformers one: no special ids
        "do_layer_norm_before": True,  # pre-norm blocks, and the final layer norm
        "dropout": 0.0,
        "dtype": dtype,
        "enable_bias": True,
        "eos_token_id": None,
        "ffn_dim": 4 * config.n_embd,
        "hidden_size": config.n_embd,
        "layer_norm_elementwise_affine": True,
        "layerdrop": 0.0,
        "max_position_embeddings": config.block_size,
        "model_type": "opt",
        "num_attention_heads": config.n_head,
        "num_hidden_layers": config.n_layer,
        "pad_token_id": None,
        "tie_word_embeddings": False,  # lora_np's head is its own matrix
        "vocab_size": config.vocab_size,
        "word_embed_proj_dim": config.n_embd,  # no project_in / project_out
    }


# What every other key must hold for the GPT to compute the same function. Keys missing from
# config.json take transformers' OPTConfig defaults (given here), except tie_word_embeddings,
# which transformers defaults to true.
_REQUIRED = {
    "model_type": ("opt", "opt"),
    "do_layer_norm_before": (True, True),
    "_remove_final_layer_norm": (False, False),
    "enable_bias": (True, True),
    "layer_norm_elementwise_affine": (True, True),
    "tie_word_embeddings": (False, True),
    "dropout": (0.0, 0.1),
    "attention_dropout": (0.0, 0.0),
    "activation_dropout": (0.0, 0.0),
    "layerdrop": (0.0, 0.0),
}


def _same(value, wanted) -> bool:
    """JSON equality that tells true from 1 and "0" from 0."""
    if isinstance(wanted, bool | str):
        return type(value) is type(wanted) and value == wanted
    return isinstance(value, int | float) and not isinstance(value, bool) and value == wanted


def gpt_config(opt: dict, where: str) -> GPTConfig:
    """The GPTConfig for an OPT config.json dict, or a ValueError naming every entry lora_np's
    GPT cannot express."""
    problems = []
    for key, (wanted, default) in _REQUIRED.items():
        value = opt.get(key, default)
        if not _same(value, wanted):
            problems.append(f"{key}={value!r} (lora_np's GPT needs {wanted!r})")
    if "OPTForCausalLM" not in (opt.get("architectures") or ["OPTForCausalLM"]):
        problems.append(f"architectures={opt.get('architectures')!r} (expected OPTForCausalLM)")
    act = opt.get("activation_function", "relu")
    if act not in ACTIVATIONS:
        problems.append(
            f"activation_function={act!r} (lora_np's GPT uses GELU, tanh form: gelu_new)"
        )
    sizes = {k: opt.get(k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers")}
    sizes |= {k: opt.get(k) for k in ("vocab_size", "max_position_embeddings")}
    missing = [k for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool)]
    if missing:
        problems.append(f"{', '.join(missing)} missing or not whole numbers")
    else:
        C = sizes["hidden_size"]
        if opt.get("word_embed_proj_dim", C) != C:
            problems.append(
                f"word_embed_proj_dim={opt['word_embed_proj_dim']} differs from hidden_size={C} "
                "(project_in/project_out layers, which lora_np's GPT does not have)"
            )
        if opt.get("ffn_dim") != 4 * C:
            problems.append(
                f"ffn_dim={opt.get('ffn_dim')!r} (lora_np's MLP is 4 x hidden_size = {4 * C})"
            )
    if problems:
        raise ValueError(
            f"{where} describes a model lora_np's GPT cannot express: " + "; ".join(problems)
        )
    try:
        return GPTConfig(
            vocab_size=sizes["vocab_size"],
            block_size=sizes["max_position_embeddings"],
            n_embd=sizes["hidden_size"],
            n_head=sizes["num_attention_heads"],
            n_layer=sizes["num_hidden_layers"],
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
