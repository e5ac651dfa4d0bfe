"""Files: atomic writes, safetensors read and write, and whole-model weights. No pickle.

Every file is written to a temporary name in its folder and then renamed (``os.replace``), so a
crash never leaves half a file under the real name. Reading uses ``safetensors`` (plain arrays,
no code). Everything that saves (models, adapters, figures) builds on this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.numpy import load as _load_safetensors
from safetensors.numpy import save as _save_safetensors

from . import backend, nn


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a crash) never sees a half-written file: the rename is atomic.
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600; a saved file should be readable
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def read_safetensors(path) -> dict:
    """name -> host NumPy array, with a clear error for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return _load_safetensors(path.read_bytes())
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(
            f"{path} is truncated or corrupt, not a readable safetensors file ({err})"
        ) from None


def safetensors_bytes(arrays: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding ``arrays`` (name -> array, any backend)."""
    host = {name: backend.np.ascontiguousarray(backend.to_numpy(a)) for name, a in arrays.items()}
    return _save_safetensors(host, metadata=metadata)


def save_weights(model: nn.Module, path, metadata: dict | None = None) -> Path:
    """Write every parameter of ``model`` to one safetensors file (atomically), keyed by name.

    ``metadata`` (str -> str) goes into the file's header beside ``"format"``.
    """
    path = Path(path)
    modules = model.named_modules()
    outside = [n for n, m in modules if not getattr(m, "weights_are_parameters", True)]
    if outside:  # quantised layers: their codes are not parameters, so the file would miss them
        raise ValueError(
            f"cannot save {path}: {', '.join(outside)} keep their weights outside the parameters "
            "(quantised codes). Save the float model and quantise it after loading "
            "(quantize_model is deterministic); save adapters with lora.save_adapter"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "lora_np", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    atomic_write(path, safetensors_bytes(model.state_dict(), header))
    return path


def read_weights(path) -> tuple[dict, dict]:
    """``({name: host array}, metadata)`` from a safetensors file, without pickle.

    A missing file raises FileNotFoundError; a truncated or corrupt one a ValueError that
    names it. Nothing is returned from a file that fails.
    """
    path = Path(path)
    tensors = read_safetensors(path)
    with safe_open(path, framework="numpy") as handle:  # header only: the data is read above
        metadata = dict(handle.metadata() or {})
    return tensors, metadata


def load_weights(model: nn.Module, path, strict: bool = True) -> None:
    """Load a file written by :func:`save_weights` into ``model``.

    Missing or unexpected names (when ``strict``) and shape mismatches are all reported in one
    error before any parameter changes (``Module.load_state_dict``).
    """
    model.load_state_dict(read_safetensors(Path(path)), strict=strict)


def atomic_write_folder(folder, files: dict) -> Path:
    """Replace the files ``files`` (name -> bytes) in ``folder`` all together, or not at all.

    The new files are written into a fresh temporary folder beside ``folder`` (with copies of
    any other files already in ``folder``, such as a README), and the two folders are then
    swapped by two renames: the old folder steps aside, the new one takes its name, the old
    one is deleted. When anything fails, the old folder is put back, so readers see either
    the old set of files or the new one, never a mix (a folder of an adapter's weights beside
    another adapter's config would load without error and match neither). Only a crash of the
    whole machine between the two renames can leave the old folder under its temporary
    ``.<name>.old-*`` name, complete.

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    retired = None
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; a saved folder should be readable
        if folder.is_dir():
            for existing in folder.iterdir():
                if existing.name not in files and existing.is_file():
                    shutil.copy2(existing, staging / existing.name)
        for name, data in files.items():
            atomic_write(staging / name, data)
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
