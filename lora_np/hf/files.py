"""Reading and writing the exported folders: float checks on safetensors headers, and a
whole folder (with subfolders) written all at once or not at all."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from ..serialization import atomic_write, read_safetensors

FLOAT_DTYPES = {"F32": "float32", "F64": "float64"}
"""safetensors dtypes lora_np reads. NumPy has no bfloat16, so BF16 (and F16, to keep one rule)
is refused by name: convert with ``model.float()`` in PyTorch before saving."""


def header(path: Path) -> dict:
    """The JSON header of a safetensors file: {name: {"dtype", "shape", ...}} (no data read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "rb") as stream:
        raw = stream.read(8)
        try:
            (size,) = struct.unpack("<Q", raw)
            found = json.loads(stream.read(size)) if size < 100_000_000 else None
        except (struct.error, ValueError, UnicodeDecodeError):
            found = None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is truncated or corrupt, not a readable safetensors file")
    found.pop("__metadata__", None)
    return found


def read_float_tensors(path: Path) -> dict:
    """name -> NumPy array of a float32/float64 safetensors file; other dtypes are refused by
    name before anything is read."""
    entries = header(path)
    other = {k: v.get("dtype") for k, v in entries.items() if v.get("dtype") not in FLOAT_DTYPES}
    if other:
        listed = ", ".join(f"{k} ({d})" for k, d in sorted(other.items()))
        raise ValueError(
            f"{path} holds tensors that are not float32 or float64: {listed}. lora_np computes "
            "in float32/float64 (NumPy has no bfloat16): convert the model with .float() in "
            "PyTorch and save it again"
        )
    return read_safetensors(path)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is truncated or corrupt, not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _foreign(folder: Path, ours: set, ours_inside: set) -> list:
    """Entries of an existing ``folder`` that an export would not have written."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.name in ours:
            continue
        if entry.is_dir() and all(f.is_file() and f.name in ours_inside for f in entry.iterdir()):
            continue
        foreign.append(entry.name)
    return foreign


def write_folder(folder, files: dict, ours: set, ours_inside: set) -> Path:
    """Make ``folder`` hold exactly ``files`` ({"a/b.json": bytes}), all together or not at all.

    Everything is written into a fresh folder beside ``folder``, which then takes its name by a
    rename; an older ``folder`` steps aside first and is deleted afterwards. A ``folder`` that
    holds anything this module did not write (names outside ``ours`` at the top and
    ``ours_inside`` in subfolders) is refused untouched: replacing it would delete that.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    if folder.is_dir():
        foreign = _foreign(folder, ours, ours_inside)
        if foreign:
            raise ValueError(
                f"{folder} already holds files that export did not write ({', '.join(foreign)}); "
                "choose an empty or new folder"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    retired = None
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; a saved folder should be readable
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.rename(folder, retired / folder.name)
        try:
            os.rename(staging, folder)
        except BaseException:
            if retired is not None:
                os.rename(retired / folder.name, folder)  # put the old folder back
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not (retired / folder.name).exists():
            shutil.rmtree(retired, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return folder
