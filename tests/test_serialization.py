"""Files: adapters in PEFT's layout (lora.save_adapter / load_adapter, strict config), whole-model
weights and atomic writes (serialization). No pickle anywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lora_np as ln
from lora_np import lora, nn, serialization


class Net(nn.Module):
    """blocks.{0,1}.{q,v} (16 -> 16), head (16 -> 5): about 1,200 weights."""

    def __init__(self, c=16):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(), nn.Sequential()])
        for block in self.blocks:
            block.q, block.v = nn.Linear(c, c), nn.Linear(c, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        for block in self.blocks:
            x = x + block.q(x) * block.v(x)
        return self.head(x)


def make_net(seed=0):
    ln.manual_seed(seed)
    return Net()


def adapted_net(targets=("q", "v"), r=2, alpha=4, **kwargs):
    model = make_net()
    lora.inject(model, list(targets), r=r, alpha=alpha, **kwargs)
    rng = np.random.default_rng(9)
    for _, layer in lora.lora_layers(model):
        layer.B.data = rng.standard_normal(layer.B.shape).astype(np.float32)
    return model


def x_batch():
    return ln.Tensor(np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32))


def snapshot(model):
    return (
        [(n, type(m).__name__) for n, m in model.named_modules()],
        {n: p.data.copy() for n, p in model.named_parameters()},
    )


def assert_unchanged(before, model):
    modules, params = snapshot(model)
    assert modules == before[0]
    assert params.keys() == before[1].keys()
    assert all(np.array_equal(params[n], before[1][n]) for n in params)


# ----------------------------------------------------------------------------- save


def test_save_writes_peft_layout(tmp_path):
    model = adapted_net()
    folder = lora.save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    tensors = load_file(folder / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(
        f"base_model.model.blocks.{i}.{m}.lora_{w}.weight"
        for i in range(2)
        for m in "qv"
        for w in "AB"
    )
    assert tensors["base_model.model.blocks.0.q.lora_A.weight"].shape == (2, 16)
    assert tensors["base_model.model.blocks.0.q.lora_B.weight"].shape == (16, 2)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    assert config["target_modules"] == ["q", "v"]
    assert config["use_rslora"] is False and config["init_lora_weights"] is True
    assert config["bias"] == "none" and config["lora_dropout"] == 0.0
    # kilobytes: far smaller than the model it adapts
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    model_path = serialization.save_weights(model, tmp_path / "model.safetensors")
    assert adapter_bytes < 2048 and adapter_bytes < model_path.stat().st_size / 3
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_target_modules_use_full_names_when_leaf_names_would_select_more(tmp_path):
    model = make_net()
    lora.inject(model, ["blocks.0.q"], r=2, alpha=2, init="gaussian", rslora=True)
    config = lora.adapter_config(model)
    assert config["target_modules"] == ["blocks.0.q"]
    assert config["init_lora_weights"] == "gaussian" and config["use_rslora"] is True


def test_round_trip_gives_the_same_outputs(tmp_path):
    model = adapted_net(targets=("q", "head"), r=3, alpha=6, rslora=True)
    x = x_batch()
    expected = model(x).data.copy()
    lora.save_adapter(model, tmp_path / "a")
    fresh = make_net()
    assert lora.load_adapter(fresh, tmp_path / "a") == ["blocks.0.q", "blocks.1.q", "head"]
    assert np.array_equal(fresh(x).data, expected)
    layer = fresh.get_submodule("head")
    assert layer.scaling == pytest.approx(6 / np.sqrt(3))
    assert not layer.A.requires_grad  # as PEFT: trains only when loaded with is_trainable=True
    assert not layer.base.weight.requires_grad


def test_rank_and_alpha_patterns_round_trip(tmp_path):
    # a model whose layers carry different ranks: r=2 on three layers, r=4 on one
    varied = make_net()
    lora.inject(varied, ["blocks.0.q", "blocks.0.v", "blocks.1.q"], r=2, alpha=4)
    lora.inject(varied, ["blocks.1.v"], r=4, alpha=8)
    config = lora.adapter_config(varied)
    assert config["r"] == 2 and config["rank_pattern"] == {"blocks.1.v": 4}
    assert config["alpha_pattern"] == {"blocks.1.v": 8}
    lora.save_adapter(varied, tmp_path / "varied")
    fresh = make_net()
    lora.load_adapter(fresh, tmp_path / "varied")
    assert fresh.get_submodule("blocks.1.v").r == 4 and fresh.get_submodule("blocks.0.v").r == 2


def test_load_as_a_second_adapter(tmp_path):
    model = adapted_net()
    x = x_batch()
    expected = model(x).data.copy()
    lora.save_adapter(model, tmp_path / "a")
    other = make_net()
    lora.inject(other, ["q", "v"], r=1, alpha=1)
    lora.load_adapter(other, tmp_path / "a", adapter_name="task")
    assert other.get_submodule("blocks.0.q").adapter_names == ["default", "task"]
    assert np.array_equal(other(x).data, expected)  # the loaded adapter is active
    with pytest.raises(ValueError, match="already has an adapter named 'task'"):
        lora.load_adapter(other, tmp_path / "a", adapter_name="task")


def test_unknown_adapter_name_on_save(tmp_path):
    with pytest.raises(KeyError, match=r"no adapter named 'x' in the model; it has \['default'\]"):
        lora.save_adapter(adapted_net(), tmp_path / "a", adapter_name="x")


# ----------------------------------------------------------------------------- bad files


def _saved(tmp_path, **kwargs):
    return lora.save_adapter(adapted_net(**kwargs), tmp_path / "saved")


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    folder = _saved(tmp_path, r=2)
    model = make_net()
    before = snapshot(model)
    # a model of another width: every shape differs
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.blocks.0.q.lora_A.weight"] = np.zeros((2, 15), np.float32)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"blocks\.0\.q\.lora_A\.weight has shape \(2, 15\) in the file but the model expects \(2, 16\)",
    ):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


def test_rank_in_config_and_file_must_agree(tmp_path):
    folder = _saved(tmp_path, r=2)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 3
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model = make_net()
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"shape \(2, 16\) in the file but the model expects \(3, 16\)"
    ):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


def test_adapter_for_other_modules(tmp_path):
    folder = _saved(tmp_path)

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(16, 16)

    model = Other()
    before = snapshot(model)
    with pytest.raises(ValueError, match="match no Linear layer"):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


def test_missing_and_unexpected_keys(tmp_path):
    folder = _saved(tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    del tensors["base_model.model.blocks.1.v.lora_B.weight"]
    tensors["base_model.model.blocks.7.q.lora_A.weight"] = np.zeros((2, 16), np.float32)
    save_file(tensors, folder / "adapter_model.safetensors")
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        lora.load_adapter(model, folder)
    message = str(info.value)
    assert "missing keys: base_model.model.blocks.1.v.lora_B.weight" in message
    assert (
        "unexpected keys (no such Linear in the model): base_model.model.blocks.7.q.lora_A.weight"
        in message
    )
    assert_unchanged(before, model)


def test_a_targeted_layer_without_weights_is_missing(tmp_path):
    folder = _saved(tmp_path, targets=("q",))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q", "head"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing keys: base_model.model.head.lora_A.weight"):
        lora.load_adapter(make_net(), folder)


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_weights_file(tmp_path, cut):
    folder = _saved(tmp_path)
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is truncated or corrupt"):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


def test_corrupt_or_foreign_config(tmp_path):
    folder = _saved(tmp_path)
    config_path = folder / "adapter_config.json"
    text = config_path.read_text()
    config_path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"adapter_config\.json is truncated or corrupt"):
        lora.load_adapter(make_net(), folder)
    config = json.loads(text)
    config_path.write_text(json.dumps(config | {"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="expected 'LORA'"):
        lora.load_adapter(make_net(), folder)
    config_path.write_text(json.dumps(config | {"bias": "all"}))
    with pytest.raises(ValueError, match="does not support"):
        lora.load_adapter(make_net(), folder)
    # DoRA is supported, so a DoRA config without the magnitude vectors names what is missing
    config_path.write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(ValueError, match="missing keys: .*lora_magnitude_vector"):
        lora.load_adapter(make_net(), folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lora.load_adapter(make_net(), tmp_path / "nowhere")
    (folder / "adapter_model.safetensors").unlink()
    config_path.write_text(text)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors does not exist"):
        lora.load_adapter(make_net(), folder)


def test_loading_into_a_merged_layer_is_refused(tmp_path):
    folder = _saved(tmp_path)
    model = adapted_net()
    lora.merge_adapter(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="is merged"):
        lora.load_adapter(model, folder, adapter_name="second")
    assert_unchanged(before, model)


# ----------------------------------------------------------------------------- whole models


def test_save_and_load_weights(tmp_path):
    model = make_net(seed=0)
    path = serialization.save_weights(model, tmp_path / "deep" / "model.safetensors")
    other = make_net(seed=1)
    serialization.load_weights(other, path)
    x = x_batch()
    assert np.array_equal(other(x).data, model(x).data)
    path.write_bytes(path.read_bytes()[:50])
    before = snapshot(other)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        serialization.load_weights(other, path)
    assert_unchanged(before, other)


def test_load_weights_reports_mismatches(tmp_path):
    path = serialization.save_weights(make_net(), tmp_path / "m.safetensors")

    class Wider(Net):
        def __init__(self):
            super().__init__(c=8)

    wider = Wider()
    before = snapshot(wider)
    with pytest.raises(KeyError, match="shape mismatches"):
        serialization.load_weights(wider, path)
    assert_unchanged(before, wider)


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = adapted_net()
    folder = lora.save_adapter(model, tmp_path / "a")
    old = (folder / "adapter_model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        lora.save_adapter(adapted_net(r=3), folder)
    assert (folder / "adapter_model.safetensors").read_bytes() == old
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_lora_module_reexports_save_and_load(tmp_path):
    model = adapted_net()
    lora.save_adapter(model, tmp_path / "b")
    fresh = make_net()
    lora.load_adapter(fresh, tmp_path / "b")
    assert np.array_equal(fresh(x_batch()).data, model(x_batch()).data)


def test_save_figure_writes_a_png_atomically(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lora_np import plotting

    plotting.use_style()
    assert matplotlib.rcParams["axes.spines.top"] is False
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0], label="line")
    path = plotting.save_figure(fig, "01_test", folder=tmp_path / "figures")
    plt.close(fig)
    assert path == tmp_path / "figures" / "01_test.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["01_test.png"]  # no temp file left
    with pytest.raises(ValueError, match="plain file name"):
        plotting.save_figure(fig, "../escape", folder=tmp_path)


# ----------------------------------------------------------------------------- strict config
def _with_config(tmp_path, **changes):
    folder = _saved(tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return folder


_DROP = object()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("use_rslora", "false", "use_rslora must be true or false"),
        ("use_rslora", 0, "use_rslora must be true or false"),
        ("inference_mode", "yes", "inference_mode must be true or false"),
        ("target_modules", 5, "target_modules must be"),
        ("target_modules", ["q", 3], "target_modules must be"),
        ("rank_pattern", [1], "rank_pattern must map"),
        ("alpha_pattern", {"q": "big"}, "alpha_pattern"),
        ("r", "2", "'r' must be"),
        ("r", True, "'r' must be"),
        ("lora_alpha", "4", "lora_alpha must be"),
        ("lora_dropout", "0.1", "lora_dropout must be"),
        ("layers_to_transform", "0", "layers_to_transform must be"),
        ("exclude_modules", 3, "exclude_modules must be"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(tmp_path, key, value, message):
    folder = _with_config(tmp_path, **{key: value})
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


@pytest.mark.parametrize(
    ("key", "value", "bad"),
    [
        ("target_modules", "(", "target_modules"),
        ("exclude_modules", "[", "exclude_modules"),
        ("rank_pattern", {"q(": 2}, "rank_pattern"),
    ],
)
def test_a_bad_regex_is_named(tmp_path, key, value, bad):
    folder = _with_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=rf"{bad}.*not a valid regular expression"):
        lora.load_adapter(make_net(), folder)


@pytest.mark.parametrize(
    "changes",
    [
        {"target_modules": ["q"]},  # the file also holds v
        {"exclude_modules": ["v"]},
        {"layers_to_transform": [0]},  # the file also holds block 1
    ],
)
def test_a_config_that_selects_other_layers_than_the_file_holds_is_an_error(tmp_path, changes):
    folder = _with_config(tmp_path, **changes)
    model = make_net()
    before = snapshot(model)
    with pytest.raises(ValueError, match="not selected by the config"):
        lora.load_adapter(model, folder)
    assert_unchanged(before, model)


def test_layers_to_transform_that_agrees_with_the_file_loads(tmp_path):
    model = make_net()
    lora.inject(model, ["blocks.0.q", "blocks.0.v"], r=2, alpha=4)
    folder = lora.save_adapter(model, tmp_path / "a")
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["target_modules"], config["layers_to_transform"] = ["q", "v"], [0]
    path.write_text(json.dumps(config))
    assert lora.load_adapter(make_net(), folder) == ["blocks.0.q", "blocks.0.v"]


def test_a_model_with_a_merged_adapter_is_neither_saved_nor_loaded_into(tmp_path):
    """Its base.weight holds W0 + s·BA beside A and B: loaded into an unmerged model, s·BA
    would count twice. Both directions are refused, with what to do instead."""
    model = adapted_net()
    path = tmp_path / "m.safetensors"
    lora.merge_adapter(model)
    with pytest.raises(ValueError, match=r"blocks\.0\.q, .*merged LoRA adapter.*unmerge"):
        serialization.save_weights(model, path)
    assert not path.exists()
    lora.unmerge_adapter(model)
    serialization.save_weights(model, path)
    lora.merge_adapter(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="merged LoRA adapter: unmerge first"):
        serialization.load_weights(model, path)
    assert_unchanged(before, model)
    lora.unmerge_adapter(model)
    fresh = adapted_net()
    serialization.load_weights(fresh, path)
    np.testing.assert_array_equal(fresh(x_batch()).data, model(x_batch()).data)


def _raw_safetensors(path, header: dict, body: bytes):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


@pytest.mark.parametrize(
    "entry, body, message",
    [
        (
            {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]},
            12,
            r"shape \[2\] holds 12 bytes",
        ),
        (
            {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            12,
            "starts at byte 4, expected 0",
        ),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, 8, "no valid dtype, shape"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, 8, "describes 16 bytes"),
    ],
)
def test_a_header_that_does_not_describe_its_file_is_refused(tmp_path, entry, body, message):
    """The header is checked as safetensors checks it (sizes, offsets without gaps or
    overlaps, the file's length) before any tensor is read: our own reader, so bf16 loads."""
    path = tmp_path / "x.safetensors"
    _raw_safetensors(path, {"x": entry}, b"\0" * body)
    with pytest.raises(ValueError, match="truncated or corrupt.*" + message):
        serialization.read_weights(path)


def test_a_dtype_lora_np_does_not_read_is_named(tmp_path):
    path = tmp_path / "x.safetensors"
    _raw_safetensors(path, {"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"ab")
    with pytest.raises(ValueError, match="dtype 'F8_E4M3', which lora_np does not read"):
        serialization.read_weights(path)
