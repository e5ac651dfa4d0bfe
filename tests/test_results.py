"""lora_np.results: the committed experiment results, found through the installed package."""

from __future__ import annotations

import pytest

from lora_np import results


def test_path_finds_files_and_folders():
    assert results.path("07_finetune.json").is_file()
    assert results.path("08_adapters", "swp").is_dir()
    assert results.path("08_adapters", "swp") == results.FOLDER / "08_adapters" / "swp"
    assert results.FOLDER.parent.name == "lora_np"  # inside the package, not the repository


def test_load_json():
    assert results.load_json("08_adapters", "scores.json")["matrix"]["swp"]["swp"] >= 0.9
    assert results.load_json("07_finetune.json")["complete"] is True


def test_missing_result_names_what_is_there():
    with pytest.raises(FileNotFoundError, match=r"'07_finetune\.jsn'.*07_finetune\.json"):
        results.path("07_finetune.jsn")
    with pytest.raises(FileNotFoundError, match="'nope/x.json'"):
        results.path("nope", "x.json")


@pytest.mark.parametrize(
    "parts", [(), ("",), ("..", "checkpoints"), ("/etc/passwd",), ("08_adapters", None)]
)
def test_bad_names_are_refused(parts):
    with pytest.raises(ValueError, match="results"):
        results.path(*parts)
