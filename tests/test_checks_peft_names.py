"""The notebook 09 checkers accept correct solutions and name each classic mistake."""

import re

import numpy as np
import pytest

from lora_np import checks
from lora_np.checks import ExerciseError

_OPT = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.out_proj",
    "mlp.fc": "fc1",
    "mlp.proj": "fc2",
}


def _opt_layer(layer):
    if layer == "head":
        return "lm_head"
    i, part = re.fullmatch(r"blocks\.(\d+)\.(.+)", layer).groups()
    return f"model.decoder.layers.{i}.{_OPT[part]}"


# ---------------------------------------------------------------- peft_key


def key_split(name):
    layer, _, rest = name.partition(".adapters.")
    which = rest.rpartition(".")[2]
    return f"base_model.model.{_opt_layer(layer)}.lora_{which}.weight"


def key_regex(name):
    from lora_np import hf

    layer, which = re.fullmatch(r"(.+)\.adapters\.\w+\.([AB])", name).groups()
    return "base_model.model." + hf.to_opt(layer) + ".lora_" + which + ".weight"


@pytest.mark.parametrize("fn", [key_split, key_regex])
def test_peft_key_accepts_correct_solutions(fn, capsys):
    checks.check_peft_key(fn)
    assert "peft_key: all" in capsys.readouterr().out


_KEY_MISTAKES = {
    "prefix": (lambda n: key_split(n).removeprefix("base_model.model."), "prefix"),
    "swapped": (
        lambda n: (
            key_split(n).replace("lora_A", "X").replace("lora_B", "lora_A").replace("X", "lora_B")
        ),
        "swapped",
    ),
    "suffix": (lambda n: key_split(n).removesuffix(".weight"), "suffix"),
    "adapter name": (
        lambda n: key_split(n).replace(".weight", "." + n.split(".")[-2] + ".weight"),
        "adapter name",
    ),
    "o_proj": (lambda n: key_split(n).replace("out_proj", "o_proj"), "out_proj"),
    "lora_np names": (
        lambda n: "base_model.model." + n.partition(".adapters.")[0] + ".lora_" + n[-1] + ".weight",
        "lora_np's name",
    ),
}


@pytest.mark.parametrize("mistake", sorted(_KEY_MISTAKES))
def test_peft_key_names_each_mistake(mistake):
    fn, words = _KEY_MISTAKES[mistake]
    with pytest.raises(ExerciseError, match=re.escape(words)):
        checks.check_peft_key(fn)


# ---------------------------------------------------------------- opt_positions


def positions_concat(pos):
    return np.concatenate([np.zeros((2, pos.shape[1]), pos.dtype), pos])


def positions_fill(pos):
    out = np.zeros((pos.shape[0] + 2, pos.shape[1]), dtype=pos.dtype)
    out[2:] = pos  # OPT reads row position + 2
    return out


@pytest.mark.parametrize("fn", [positions_concat, positions_fill])
def test_opt_positions_accepts_correct_solutions(fn, capsys):
    checks.check_opt_positions(fn)
    assert "opt_positions: all" in capsys.readouterr().out


def _positions_in_place(pos):
    out = positions_fill(pos)
    pos[:] = 0  # clears the learner's input
    return out


_POSITION_MISTAKES = {
    "no offset": (lambda pos: pos.copy(), "no offset"),
    "at the end": (
        lambda pos: np.concatenate([pos, np.zeros((2, pos.shape[1]), pos.dtype)]),
        "at the end",
    ),
    "offset 1": (
        lambda pos: np.concatenate([np.zeros((1, pos.shape[1]), pos.dtype), pos]),
        "offset of 1",
    ),
    "offset 1 padded": (
        lambda pos: np.pad(pos, ((1, 1), (0, 0))),
        "starts at row 1",
    ),
    "float64": (lambda pos: positions_fill(pos).astype(np.float64), "dtype"),
    "in place": (_positions_in_place, "changed"),
}


@pytest.mark.parametrize("mistake", sorted(_POSITION_MISTAKES))
def test_opt_positions_names_each_mistake(mistake):
    fn, words = _POSITION_MISTAKES[mistake]
    with pytest.raises(ExerciseError, match=re.escape(words)):
        checks.check_opt_positions(fn)


# ---------------------------------------------------------------- peft_lora_config


def config_full_names(layers, rslora):
    """Every layer named in full; the most common r and alpha as defaults, patterns for the rest."""
    ranks = [r for r, _ in layers.values()]
    alphas = [a for _, a in layers.values()]
    r = max(set(ranks), key=ranks.count)
    alpha = max(set(alphas), key=alphas.count)
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(_opt_layer(n) for n in layers),
        "rank_pattern": {_opt_layer(n): lr for n, (lr, _) in layers.items() if lr != r},
        "alpha_pattern": {_opt_layer(n): la for n, (_, la) in layers.items() if la != alpha},
        "use_rslora": rslora,
    }


def config_first_layer(layers, rslora):
    """Defaults from the first layer, a regex target, escaped full-name patterns for every layer."""
    first_r, first_alpha = next(iter(layers.values()))
    full = [_opt_layer(n) for n in layers]
    return {
        "peft_type": "LORA",
        "r": first_r,
        "lora_alpha": first_alpha,
        "target_modules": "|".join(re.escape(n) for n in full),
        "rank_pattern": {re.escape(o): r for o, (r, _) in zip(full, layers.values())},
        "alpha_pattern": {re.escape(o): a for o, (_, a) in zip(full, layers.values())},
        "use_rslora": bool(rslora),
        "bias": "none",
    }


@pytest.mark.parametrize("fn", [config_full_names, config_first_layer])
def test_peft_lora_config_accepts_correct_solutions(fn, capsys):
    checks.check_peft_lora_config(fn)
    assert "peft_lora_config: all" in capsys.readouterr().out


def _scale_for_alpha(layers, rslora):
    config = config_full_names(layers, rslora)
    config["lora_alpha"] = config["lora_alpha"] / config["r"]
    config["alpha_pattern"] = {_opt_layer(n): a / r for n, (r, a) in layers.items()}
    return config


_CONFIG_MISTAKES = {
    "scale for alpha": (_scale_for_alpha, "scale"),
    "lora_np spelling": (
        lambda layers, rslora: {
            **config_full_names(layers, rslora),
            "target_modules": sorted(layers),
        },
        "lora_np's spelling",
    ),
    "rslora missing": (
        lambda layers, rslora: {
            k: v for k, v in config_full_names(layers, rslora).items() if k != "use_rslora"
        },
        "rsLoRA flag",
    ),
    "no rank_pattern": (
        lambda layers, rslora: {**config_full_names(layers, rslora), "rank_pattern": {}},
        "rank_pattern",
    ),
    "no alpha_pattern": (
        lambda layers, rslora: {**config_full_names(layers, rslora), "alpha_pattern": {}},
        "alpha_pattern",
    ),
}


@pytest.mark.parametrize("mistake", sorted(_CONFIG_MISTAKES))
def test_peft_lora_config_names_each_mistake(mistake):
    fn, words = _CONFIG_MISTAKES[mistake]
    with pytest.raises(ExerciseError, match=re.escape(words)):
        checks.check_peft_lora_config(fn)


def test_reference_config_is_what_hf_export_writes():
    config = checks.peft_names.reference_peft_lora_config(
        {"blocks.0.attn.q": (4, 8), "head": (2, 8)}, True
    )
    assert config["rank_pattern"] == {"lm_head": 2} and config["use_rslora"] is True


def test_reference_config_takes_layers_of_a_deeper_model():
    """Notebook 09 hands the reference the shipped GPT's layers (4 blocks), not the checker's 2."""
    layers = {"blocks.3.attn.q": (4, 8), "blocks.3.attn.v": (4, 8), "blocks.2.mlp.proj": (2, 8)}
    config = checks.peft_names.reference_peft_lora_config(layers, False)
    assert config["r"] == 4 and config["rank_pattern"] == {"model.decoder.layers.2.fc2": 2}
    assert config["target_modules"] == [
        "model.decoder.layers.2.fc2",
        "model.decoder.layers.3.self_attn.q_proj",
        "model.decoder.layers.3.self_attn.v_proj",
    ]
