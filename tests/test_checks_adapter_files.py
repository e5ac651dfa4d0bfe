"""check_save_adapter (notebook 08's adapter file) passes correct savers written any way and
names each classic mistake: no base_model.model. prefix, A and B swapped, alpha missing or the
scale stored instead."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_np import serialization
from lora_np.checks import check_save_adapter
from lora_np.checks._harness import ExerciseError
from lora_np.checks.adapter_files import save_adapter_reference


def save_with_safetensors(
    weights, r, alpha, folder, *, prefix="base_model.model.", swap=False, config_alpha="alpha"
):
    """Correct by default: the safetensors package's numpy writer, short target names."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, (A, B) in weights.items():
        first, second = (B, A) if swap else (A, B)
        tensors[f"{prefix}{name}.lora_A.weight"] = first
        tensors[f"{prefix}{name}.lora_B.weight"] = second
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "target_modules": sorted({n.split(".")[-1] for n in weights}),
    }
    if config_alpha == "alpha":
        config["lora_alpha"] = alpha
    elif config_alpha == "scale":
        config["lora_alpha"] = alpha / r
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def save_with_lora_np(weights, r, alpha, folder):
    """Correct, written differently: lora_np's writer, full layer names, a Path back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, (A, B) in weights.items():
        arrays["base_model.model." + name + ".lora_A.weight"] = A
        arrays["base_model.model." + name + ".lora_B.weight"] = B
    serialization.atomic_write(
        folder / "adapter_model.safetensors", serialization.safetensors_bytes(arrays)
    )
    config = {
        "peft_type": "LORA",
        "r": int(r),
        "lora_alpha": float(alpha),
        "target_modules": list(weights),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_reference_and_independent_savers_pass(capsys):
    check_save_adapter(save_adapter_reference)
    assert "save_adapter: all 3 checks passed" in capsys.readouterr().out
    check_save_adapter(save_with_safetensors, quiet=True)
    check_save_adapter(save_with_lora_np, quiet=True)


@pytest.mark.parametrize(
    "options, phrase",
    [
        (dict(prefix=""), "lack the prefix 'base_model.model.'"),
        (dict(swap=True), "A and B are swapped"),
        (dict(config_alpha="missing"), "alpha is missing"),
        (dict(config_alpha="scale"), "stores the scale alpha / r"),
    ],
)
def test_each_named_mistake_is_rejected(options, phrase):
    def wrong(weights, r, alpha, folder):
        save_with_safetensors(weights, r, alpha, folder, **options)

    with pytest.raises(ExerciseError, match=phrase):
        check_save_adapter(wrong)


def _float64(weights, r, alpha, folder):
    wide = {n: (A.astype(np.float64), B.astype(np.float64)) for n, (A, B) in weights.items()}
    save_with_safetensors(wide, r, alpha, folder)


def _clears_the_folder(weights, r, alpha, folder):
    for entry in Path(folder).glob("*") if Path(folder).exists() else []:
        entry.unlink()
    save_with_safetensors(weights, r, alpha, folder)


def _no_mkdir(weights, r, alpha, folder):
    if not Path(folder).is_dir():
        return None
    save_with_safetensors(weights, r, alpha, folder)


def _transposes(weights, r, alpha, folder):
    for name in list(weights):
        A, B = weights[name]
        weights[name] = (A.T, B.T)
    save_with_safetensors(weights, r, alpha, folder)


def test_other_bad_savers_get_clear_messages():
    with pytest.raises(ExerciseError, match="own dtype"):
        check_save_adapter(_float64)
    with pytest.raises(ExerciseError, match="touches only the files it writes"):
        check_save_adapter(_clears_the_folder)
    with pytest.raises(ExerciseError, match="did not create the folder"):
        check_save_adapter(_no_mkdir)
    with pytest.raises(ExerciseError, match="changed its input weights"):
        check_save_adapter(_transposes)
    with pytest.raises(ExerciseError, match="not written yet"):
        check_save_adapter(lambda *args: (_ for _ in ()).throw(NotImplementedError))
    with pytest.raises(ExerciseError, match="return nothing"):
        check_save_adapter(lambda *args: (save_adapter_reference(*args), 1))


def test_the_reference_writes_only_its_two_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    weights = {"blocks.0.attn.q": (np.ones((2, 128), np.float32), np.zeros((128, 2), np.float32))}
    save_adapter_reference(weights, 2, 4, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "keep.txt",
    ]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_alpha"] == 4
