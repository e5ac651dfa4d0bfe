"""lora_np.hf without torch: export -> load gives the same model and adapters, the files have
OPT's and PEFT's names, and everything that cannot be mapped is refused before anything is
written or changed. (tests/test_crosscheck_hf.py loads the same folders in transformers/PEFT.)"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lora_np as ln
from lora_np import backend, hf, lora, quantized
from lora_np.transformer import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=16, block_size=8, n_embd=16, n_head=2, n_layer=2)


def small_gpt(seed=0):
    ln.manual_seed(seed)
    model = GPT(CONFIG)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():  # layer norms and biases away from 1 and 0 too
        p.data = (p.data + 0.1 * rng.standard_normal(p.shape)).astype(p.data.dtype)
    return model.eval()


def with_adapters(model):
    """Two adapters on q and v of every block: "default" (rsLoRA, r=4, alpha=8, but r=2 and
    alpha=3 on blocks.1.attn.v: a rank and an alpha pattern) and "b" (r=3, alpha=6); every B
    random so that each adapter changes the outputs."""
    lora.inject(model, ["q", "blocks.0.attn.v"], r=4, alpha=8, rslora=True)
    lora.inject(model, ["blocks.1.attn.v"], r=2, alpha=3, rslora=True)
    lora.add_adapter(model, "b", r=3, alpha=6)
    rng = np.random.default_rng(7)
    for _, layer in lora.lora_layers(model):
        for _, adapter in layer.adapters.named_children():
            adapter.B.data = rng.standard_normal(adapter.B.shape).astype("float32")
    return model


def prompts(n=4, T=8):
    return np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(n, T))


def logits(model, adapter=None):
    if adapter is not None:
        lora.set_adapter(model, adapter)
    return model(prompts())[0].data


def test_export_writes_opt_and_peft_names(tmp_path):
    model = with_adapters(small_gpt())
    hf.export(model, tmp_path / "out")
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert files == [
        "b",
        "b/adapter_config.json",
        "b/adapter_model.safetensors",
        "config.json",
        "default",
        "default/adapter_config.json",
        "default/adapter_model.safetensors",
        "model.safetensors",
    ]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["OPTForCausalLM"] and config["model_type"] == "opt"
    assert config["activation_function"] == "gelu_new" and config["do_layer_norm_before"]
    assert config["tie_word_embeddings"] is False and config["ffn_dim"] == 4 * CONFIG.n_embd
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert weights["model.decoder.embed_positions.weight"].shape == (CONFIG.block_size + 2, 16)
    np.testing.assert_array_equal(
        weights["model.decoder.embed_positions.weight"][2:], hf.base_state(model)["pos_emb.weight"]
    )
    np.testing.assert_array_equal(
        weights["model.decoder.layers.1.self_attn.v_proj.weight"],
        model.get_submodule("blocks.1.attn.v").base.weight.data,
    )
    adapter = json.loads((tmp_path / "out" / "default" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["q_proj", "v_proj"]
    assert adapter["use_rslora"] is True and adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert adapter["rank_pattern"] == {"model.decoder.layers.1.self_attn.v_proj": 2}
    assert adapter["alpha_pattern"] == {"model.decoder.layers.1.self_attn.v_proj": 3}
    b = json.loads((tmp_path / "out" / "b" / "adapter_config.json").read_text())
    assert (b["r"], b["lora_alpha"], b["rank_pattern"], b["use_rslora"]) == (3, 6, {}, False)
    keys = load_file(tmp_path / "out" / "b" / "adapter_model.safetensors")
    assert "base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_A.weight" in keys


def test_adapters_on_the_mlp_and_head_get_full_names_when_leaves_would_select_more(tmp_path):
    model = small_gpt()
    lora.inject(model, ["blocks.0.mlp.fc", "proj", "head"], r=2, alpha=2)
    hf.export(model, tmp_path / "out")
    adapter = json.loads((tmp_path / "out" / "default" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == [
        "lm_head",
        "model.decoder.layers.0.fc1",
        "model.decoder.layers.0.fc2",
        "model.decoder.layers.1.fc2",
    ]
    keys = load_file(tmp_path / "out" / "default" / "adapter_model.safetensors")
    assert "base_model.model.lm_head.lora_B.weight" in keys
    loaded = hf.load(tmp_path / "out")
    assert [n for n, _ in lora.lora_layers(loaded)] == [n for n, _ in lora.lora_layers(model)]


def test_export_then_load_gives_the_same_model_and_adapters(tmp_path):
    model = with_adapters(small_gpt())
    expected = {name: logits(model, name) for name in ("default", "b")}
    with lora.disable_adapters(model):
        expected_base = logits(model)
    hf.export(model, tmp_path / "out")
    loaded = hf.load(tmp_path / "out")
    assert sorted(hf.base_state(loaded)) == sorted(hf.base_state(model))
    for name, array in hf.base_state(model).items():
        np.testing.assert_array_equal(hf.base_state(loaded)[name], array, err_msg=name)
    ours = dict(lora.lora_layers(model))
    theirs = dict(lora.lora_layers(loaded))
    assert sorted(ours) == sorted(theirs)
    for name, layer in ours.items():
        assert set(theirs[name].adapter_names) == set(layer.adapter_names)
        for adapter_name in layer.adapter_names:
            a, b = layer.adapters[adapter_name], theirs[name].adapters[adapter_name]
            assert (a.r, a.alpha, a.rslora, a.scaling) == (b.r, b.alpha, b.rslora, b.scaling)
            np.testing.assert_array_equal(a.A.data, b.A.data)
            np.testing.assert_array_equal(a.B.data, b.B.data)
    for name in ("default", "b"):
        np.testing.assert_array_equal(logits(loaded, name), expected[name])
    with lora.disable_adapters(loaded):
        np.testing.assert_array_equal(logits(loaded), expected_base)


def test_load_follows_peft_trainability_and_draws_no_random_numbers(tmp_path):
    hf.export(with_adapters(small_gpt()), tmp_path / "out")
    ln.manual_seed(3)
    loaded = hf.load(tmp_path / "out")
    after_load = backend.rng().standard_normal(3)
    ln.manual_seed(3)
    np.testing.assert_array_equal(after_load, backend.rng().standard_normal(3))
    assert not any(p.requires_grad for p in loaded.parameters())
    # PEFT's from_pretrained activates the adapter it loads first; load goes in sorted order
    assert {layer.active_adapter for _, layer in lora.lora_layers(loaded)} == {"b"}
    trainable = hf.load(tmp_path / "out", active="b", is_trainable=True)
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all(".adapters.b." in n for n in names)


def test_plain_base_round_trip_and_float64(tmp_path):
    model = small_gpt().to("float64")
    hf.export(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float64"
    loaded = hf.load(tmp_path / "out")
    assert not lora.lora_layers(loaded)
    np.testing.assert_array_equal(logits(loaded), logits(model))
    assert logits(loaded).dtype == np.float64


# ---------------------------------------------------------------- refusals: export


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: GPT(GPTConfig(**{**CONFIG.__dict__, "dropout": 0.1})), "dropout=0.1"),
        (lambda m: (lora.inject(m, ["q"], r=2, alpha=2), lora.merge_adapter(m), m)[-1], "merged"),
        (lambda m: (quantized.quantize_model(m, kind="nf4"), m)[-1], "quantised"),
        (lambda m: ln.nn.Sequential(ln.nn.Linear(2, 2)), "GPT"),
    ],
    ids=["dropout", "merged", "quantised", "not-a-gpt"],
)
def test_export_refuses_what_opt_cannot_express_and_writes_nothing(tmp_path, change, message):
    model = change(small_gpt())
    with pytest.raises((ValueError, TypeError), match=message):
        hf.export(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_adapter_peft_cannot_describe(tmp_path):
    model = small_gpt()
    lora.inject(model, ["blocks.0.attn.q"], r=2, alpha=2, rslora=True)
    lora.inject(model, ["blocks.1.attn.q"], r=2, alpha=2, rslora=False)
    with pytest.raises(ValueError, match="adapter 'default'.*rslora"):
        hf.export(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_folder_with_other_files_and_leaves_it(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        hf.export(small_gpt(), folder)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_export_replaces_its_own_folder_whole(tmp_path):
    model = with_adapters(small_gpt())
    hf.export(model, tmp_path / "out")
    lora.set_adapter(model, "default")
    lora.delete_adapter(model, "b")
    hf.export(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "default",
        "model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_a_failed_write_leaves_the_old_folder_and_no_partial_one(tmp_path, monkeypatch):
    from lora_np.hf import files

    hf.export(small_gpt(seed=1), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    calls = []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, data)

    real = files.atomic_write
    monkeypatch.setattr(files, "atomic_write", failing)
    with pytest.raises(OSError, match="disk full"):
        hf.export(with_adapters(small_gpt(seed=2)), tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    calls.clear()
    with pytest.raises(OSError):
        hf.export(with_adapters(small_gpt(seed=2)), tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- refusals: load


def exported(tmp_path, model=None):
    folder = tmp_path / "out"
    hf.export(model if model is not None else with_adapters(small_gpt()), folder)
    return folder


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"do_layer_norm_before": False}, "do_layer_norm_before=False"),
        ({"activation_function": "relu"}, "activation_function='relu'"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings=True"),
        ({"word_embed_proj_dim": 8}, "word_embed_proj_dim=8"),
        ({"ffn_dim": 20}, "ffn_dim=20"),
        ({"dropout": 0.1}, "dropout=0.1"),
        ({"enable_bias": False}, "enable_bias=False"),
        ({"model_type": "gpt2"}, "model_type='gpt2'"),
    ],
)
def test_load_refuses_a_config_the_gpt_cannot_express(tmp_path, changes, named):
    folder = exported(tmp_path)
    edit_json(folder / "config.json", **changes)
    with pytest.raises(ValueError, match="cannot express") as err:
        hf.load(folder)
    assert named in str(err.value)


def test_load_refuses_bf16_weights_naming_them(tmp_path):
    folder = exported(tmp_path, small_gpt())
    path = folder / "model.safetensors"
    tensors = load_file(path)
    # rewrite one tensor as BF16 by hand (NumPy has no bfloat16): the top 16 bits of float32
    name = "model.decoder.layers.0.fc1.weight"
    bf16 = (tensors[name].view(np.uint32) >> 16).astype(np.uint16)
    tensors[name] = bf16
    save_file(tensors, path)
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header[name]["dtype"] = "BF16"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # data offsets count from the header's end: unchanged
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    with pytest.raises(ValueError, match=rf"{name} \(BF16\)"):
        hf.load(folder)


def test_load_refuses_weights_that_do_not_fit_naming_them(tmp_path):
    folder = exported(tmp_path, small_gpt())
    tensors = load_file(folder / "model.safetensors")
    del tensors["lm_head.weight"]
    tensors["model.decoder.extra.weight"] = np.zeros(2, dtype=np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight.*model.decoder.extra.weight"):
        hf.load(folder)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "all"}, "'bias': 'all'"),
        ({"use_dora": True}, "use_dora"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens.*not a Linear"),
        ({"target_modules": ["q_proj", "c_attn"]}, "'c_attn' matches no module"),
    ],
)
def test_load_peft_adapter_refuses_what_lora_np_lacks_and_changes_nothing(tmp_path, changes, named):
    folder = exported(tmp_path)
    edit_json(folder / "default" / "adapter_config.json", **changes)
    model = small_gpt()
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=named):
        hf.load_peft_adapter(model, folder / "default")
    assert not lora.lora_layers(model)
    assert {n: p.data for n, p in model.named_parameters()}.keys() == before.keys()
    for name, array in before.items():
        np.testing.assert_array_equal(dict(model.named_parameters())[name].data, array)


def test_peft_targeting_rules_are_resolved_on_opt_names(tmp_path):
    """A regex string, layers_to_transform and exclude_modules (PEFT's rules on OPT's names)
    select the same layers in lora_np; rank/alpha patterns follow PEFT's get_pattern_key."""
    model = small_gpt()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    rng = np.random.default_rng(0)
    for _, layer in lora.lora_layers(model):
        layer.B.data = rng.standard_normal(layer.B.shape).astype("float32")
    folder = exported(tmp_path, model)
    config = folder / "default" / "adapter_config.json"
    edit_json(
        config, target_modules=r".*layers\.\d+\.self_attn\.(q|v)_proj", alpha_pattern={"v_proj": 4}
    )
    fresh = small_gpt()
    loaded = hf.load_peft_adapter(fresh, folder / "default")
    assert loaded == ["blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v"]
    np.testing.assert_array_equal(logits(fresh), logits(model))
    # keep layer 1 only: PEFT would then find weights for layers it does not adapt
    edit_json(config, target_modules=["q_proj", "v_proj"], layers_to_transform=[1])
    with pytest.raises(ValueError, match="layers.0.self_attn.q_proj.lora_A"):
        hf.load_peft_adapter(small_gpt(), folder / "default")


def test_load_peft_adapter_needs_the_gpt(tmp_path):
    folder = exported(tmp_path)
    with pytest.raises(TypeError, match="GPT"):
        hf.load_peft_adapter(ln.nn.Sequential(ln.nn.Linear(2, 2)), folder / "default")


def test_names_map_both_ways():
    for name in hf.names.linear_names(CONFIG) + ["tok_emb", "pos_emb", "ln_f", "blocks.1.ln_2"]:
        assert hf.from_opt(hf.to_opt(name)) == name
    assert hf.to_opt("blocks.3.mlp.proj") == "model.decoder.layers.3.fc2"
    with pytest.raises(ValueError, match="blocks.0.attn.x"):
        hf.to_opt("blocks.0.attn.x")


def test_a_saved_head_weight_must_be_the_models(tmp_path):
    """PEFT saves the weight of a targeted lm_head beside the adapter: the same weight as the
    model's loads; another one means another base, refused by name."""
    model = small_gpt()
    lora.inject(model, ["head"], r=2, alpha=2)
    folder = exported(tmp_path, model)
    path = folder / "default" / "adapter_model.safetensors"
    tensors = load_file(path)
    head = hf.base_state(model)["head.weight"]
    save_file({**tensors, "base_model.model.lm_head.base_layer.weight": head}, path)
    assert hf.load_peft_adapter(small_gpt(), folder / "default") == ["head"]
    save_file({**tensors, "base_model.model.lm_head.base_layer.weight": head + 1}, path)
    fresh = small_gpt()
    with pytest.raises(ValueError, match="base weights for head that differ"):
        hf.load_peft_adapter(fresh, folder / "default")
    assert not lora.lora_layers(fresh)
