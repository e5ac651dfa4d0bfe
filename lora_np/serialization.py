"""Files: atomic writes, safetensors read and write, whole-model weights, file pairs. No pickle.

Every file is written to a temporary name beside its target (``.<name>.<hex>.tmp``) and then
renamed onto it (``os.replace``), so a crash never leaves half a file under the real name. A
write goes through a symlink to the file it points at (as ``open()``, ``torch.save`` and PEFT
do), keeps an existing file's permission bits and gives a new file the umask's.

Reading parses the safetensors header first and checks it against the file's size (as the
safetensors library does) before any tensor is read, so a header that lies, or gigabytes of
bytes after the tensors, are refused without reading them. No code is ever loaded.

Two files that belong together (an adapter's weights and its config, a checkpoint and its JSON
card) are written by :func:`write_pair` and read by :func:`read_pair`, which never hands back
one save's weights with another save's config (see :func:`write_pair`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import struct
from contextlib import contextmanager
from pathlib import Path

from safetensors.numpy import save as _save_safetensors

from . import backend, nn

try:
    import fcntl
except ImportError:  # Windows: saves into one folder do not take turns there
    fcntl = None

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


# ================================================================================ writing
def _target(path: Path) -> Path:
    """Where a write to ``path`` lands: through symlinks to the file they name."""
    return Path(os.path.realpath(path))


def _check_not_a_folder(target: Path, path) -> None:
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder, expected a file")


def _temp_name(target: Path, token: str) -> Path:
    return target.parent / f".{target.name}.{token}.tmp"


def _is_own_temp(name: str, target_name: str) -> bool:
    """Whether ``name`` is one of this module's temporary names for ``target_name``: 16 random
    hex digits, or a 64-digit sha256 (a staged partner file, see write_pair)."""
    pattern = rf"\.{re.escape(target_name)}\.([0-9a-f]{{16}}|[0-9a-f]{{64}})\.tmp"
    return re.fullmatch(pattern, name) is not None


def _write_temp(target: Path, data: bytes, token: str | None = None) -> Path:
    """``data`` in a new temporary file beside ``target`` (flushed to disk) -> its path.

    The file is created with mode 0o666 minus the umask, as ``open()`` would; when ``target``
    exists, it gets ``target``'s permission bits instead, so that replacing a file keeps them.
    """
    temp = _temp_name(target, token or secrets.token_hex(8))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            try:
                os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
            except FileNotFoundError:
                pass
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        _discard(temp)
        raise
    return temp


def _discard(*paths) -> None:
    for path in paths:
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a crash) never sees a half-written file: the rename is atomic. A symlink is
    written through; an existing file keeps its mode; a folder at ``path`` is an error.
    """
    target = _target(Path(path))
    _check_not_a_folder(target, path)
    temp = _write_temp(target, data)
    try:
        os.replace(temp, target)
    except BaseException:
        _discard(temp)
        raise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _folder_lock(folder: Path, shared: bool = False):
    """Saves into one folder take turns, and reads of a pair wait for a save to finish
    (``flock`` on the folder itself: no lock file is left behind, and a killed process's lock
    goes with it)."""
    try:
        fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    except OSError:  # a folder we may enter but not list: go on without the lock
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            except OSError:  # a file system without locks (some network mounts): go on without
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _keep_old(target: Path):
    """A second name (hard link, or a copy where links are not allowed) for the file at
    ``target``, so that a failed save can put it back; None when there is no such file."""
    if not target.exists():
        return None
    backup = _temp_name(target, secrets.token_hex(8))
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def _remove_stale_temps(target: Path) -> None:
    """Delete what killed saves left beside ``target``: only names matching _is_own_temp."""
    for entry in target.parent.iterdir():
        if _is_own_temp(entry.name, target.name):
            _discard(entry)


def write_pair(
    folder, weights_name: str, arrays: dict, metadata: dict, partner_name: str, partner: bytes
) -> Path:
    """Write a safetensors file and its partner file (say, a JSON config) into ``folder`` so
    that :func:`read_pair` always gets a pair from one save, and a failed save changes nothing.

    Two renames cannot happen at once, so the new partner first goes to a name derived from
    the new weights' sha256 (``.<partner_name>.<sha256>.tmp``); then the weights are renamed
    into place, then the partner. Readers wait while a save runs (it holds a lock on the
    folder); a process killed between the two renames leaves the new weights with their
    partner findable by their digest, so the folder reads as the old pair or the new one,
    never a mix and never nothing. When a rename fails, what was there is put back. The next
    save removes the temporary files a killed save left (only names of this module's
    pattern). No other entry of ``folder`` is read, changed or removed.

    Returns:
        The weights file's path.
    """
    folder = Path(folder)
    weights = _target(folder / weights_name)
    second = _target(folder / partner_name)
    for target, name in ((weights, weights_name), (second, partner_name)):
        _check_not_a_folder(target, folder / name)
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    data = safetensors_bytes(arrays, header)
    with _folder_lock(folder):
        staged = _temp_name(second, sha256(data))  # where a reader of these weights looks
        previous = staged.read_bytes() if staged.is_file() else None  # from a killed save
        temp = _write_temp(second, partner)
        new = backup = None
        try:
            os.replace(temp, staged)
            new = _write_temp(weights, data)
            backup = _keep_old(weights)
            os.replace(new, weights)
        except BaseException:
            _discard(temp, new, backup)
            _put_back(staged, previous)
            raise
        try:
            os.replace(staged, second)
        except BaseException:
            if backup is not None:
                os.replace(backup, weights)
            else:
                os.unlink(weights)
            _put_back(staged, previous)
            raise
        _discard(backup)
        _remove_stale_temps(weights)
        _remove_stale_temps(second)
    return folder / weights_name


def _put_back(staged: Path, previous) -> None:
    """Leave ``staged`` as it was before a failed save: absent, or with ``previous``."""
    if previous is None:
        _discard(staged)
    else:
        atomic_write(staged, previous)


def safetensors_bytes(arrays: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a safetensors file holding ``arrays`` (name -> array, any backend)."""
    host = {name: backend.np.ascontiguousarray(backend.to_numpy(a)) for name, a in arrays.items()}
    return _save_safetensors(host, metadata=metadata)


# ================================================================================ reading
_DTYPES = {  # safetensors' dtype names -> little-endian NumPy dtypes (BF16: see _array)
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")


def _corrupt(path, why: str) -> ValueError:
    return ValueError(f"{path} is truncated or corrupt, not a readable safetensors file ({why})")


def _parse_header(path, stream, size: int) -> tuple[dict, dict, int]:
    """``({name: (dtype, shape, begin, end)}, metadata, where the data starts)``, every entry
    checked against the others and against the file's ``size``, before any data is read."""
    if size < 8:
        raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", stream.read(8))
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise _corrupt(path, f"a header of {length} bytes in a file of {size}")
    try:
        header = json.loads(stream.read(length))
    except (ValueError, UnicodeDecodeError) as err:
        raise _corrupt(path, f"the header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _corrupt(path, "__metadata__ must map names to strings")
    entries, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: _offsets(path, kv)):
        dtype, shape, (begin, stop) = info["dtype"], info["shape"], _offsets(path, (name, info))
        if dtype not in _DTYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {dtype!r}, which lora_np does not read"
            )
        if begin != end:
            raise _corrupt(path, f"tensor {name!r} starts at byte {begin}, expected {end}")
        count = 1
        for n in shape:
            count *= n
        if stop - begin != count * backend.np.dtype(_DTYPES[dtype]).itemsize:
            raise _corrupt(path, f"tensor {name!r} of shape {shape} holds {stop - begin} bytes")
        entries[name], end = (dtype, tuple(shape), begin, stop), stop
    data_bytes = size - 8 - length
    if end < data_bytes:
        raise ValueError(
            f"{path} holds {data_bytes - end} bytes after the tensors its header describes; "
            "not a safetensors file as written (refused without reading them)"
        )
    if end > data_bytes:
        raise _corrupt(
            path, f"the header describes {end} bytes of tensors, the file has {data_bytes}"
        )
    return entries, metadata, 8 + length


def _offsets(path, item) -> tuple:
    name, info = item
    ok = isinstance(info, dict) and isinstance(info.get("dtype"), str)
    shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
    ok = ok and isinstance(shape, list) and all(_natural(n) for n in shape)
    ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
    if not ok or offsets[0] > offsets[1]:
        raise _corrupt(path, f"tensor {name!r} has no valid dtype, shape and data_offsets")
    return tuple(offsets)


def _natural(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _array(body, dtype: str, shape: tuple, begin: int, stop: int):
    """One tensor as a host array of its own; bf16 (which NumPy lacks) becomes float32 exactly,
    its 16 bits being the top half of a float32's."""
    np = backend.np
    if stop == begin:  # an empty tensor: frombuffer refuses an offset at the buffer's end
        return np.zeros(shape, np.float32 if dtype == "BF16" else _DTYPES[dtype])
    flat = np.frombuffer(
        body,
        dtype=_DTYPES[dtype],
        count=(stop - begin) // np.dtype(_DTYPES[dtype]).itemsize,
        offset=begin,
    )
    if dtype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return flat.reshape(shape).copy()


def read_header(path) -> tuple[dict, dict]:
    """``({name: (dtype name, shape)}, metadata)`` of a safetensors file, reading only its
    header (checked against the file's size), never its tensors."""
    path = Path(path)
    _check_is_file(path)
    with open(path, "rb") as stream:
        entries, metadata, _ = _parse_header(path, stream, os.fstat(stream.fileno()).st_size)
    return {name: entry[:2] for name, entry in entries.items()}, metadata


def read_weights(path) -> tuple[dict, dict]:
    """``({name: host array}, metadata)`` from a safetensors file, without pickle.

    The header is checked against the file's size before any tensor is read. bf16 tensors come
    back as float32 (exactly). A missing file raises FileNotFoundError, a folder
    IsADirectoryError, a truncated or corrupt file a ValueError that names it.
    """
    tensors, metadata, _ = _read_weights(Path(path))
    return tensors, metadata


def _read_weights(path: Path) -> tuple[dict, dict, str]:
    """read_weights, and the sha256 of the file's bytes."""
    _check_is_file(path)
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        entries, metadata, start = _parse_header(path, stream, size)
        stream.seek(0)
        blob = stream.read(size)
    if len(blob) != size:
        raise _corrupt(path, "the file shrank while it was read")
    body = memoryview(blob)[start:]
    tensors = {name: _array(body, *entry) for name, entry in entries.items()}
    return tensors, metadata, sha256(blob)


def read_safetensors(path) -> dict:
    """name -> host NumPy array (see :func:`read_weights`)."""
    return read_weights(path)[0]


def _read_file(path: Path) -> bytes:
    _check_is_file(path)
    return path.read_bytes()


def read_pair(folder, weights_name: str, partner_name: str) -> tuple[dict, dict, bytes]:
    """``(tensors, metadata, partner bytes)`` of a pair written by :func:`write_pair`, from
    one save, even while another process saves into ``folder``.

    The two files are read under a shared lock on ``folder``, which a save holds exclusively,
    so never halfway through a save. When a partner is staged under the weights' digest, a
    save was killed between its two renames: that partner is the one these weights belong
    to. Otherwise the partner beside the weights is theirs (edited by hand, perhaps, as PEFT
    users do; or written by PEFT).
    """
    folder = Path(folder)
    partner_path = folder / partner_name
    with _folder_lock(folder, shared=True):
        partner = _read_file(partner_path)
        tensors, metadata, digest = _read_weights(folder / weights_name)
        staged = _temp_name(_target(partner_path), digest)
        if staged.is_file():
            partner = staged.read_bytes()
    return tensors, metadata, partner


# ================================================================================ whole models
def _check_savable(model: nn.Module, path) -> None:
    modules = list(model.named_modules())
    outside = [n for n, m in modules if not getattr(m, "weights_are_parameters", True)]
    if outside:  # quantised layers: their codes are not parameters, so the file would miss them
        raise ValueError(
            f"cannot save {path}: {', '.join(outside)} keep their weights outside the parameters "
            "(quantised codes). Save the float model and quantise it after loading "
            "(quantize_model is deterministic); save adapters with lora.save_adapter"
        )
    merged = [n for n, m in modules if getattr(m, "merged", False) is True]
    if merged:  # base.weight holds W0 + s·BA beside A and B: loaded unmerged, s·BA counts twice
        raise ValueError(
            f"cannot save {path}: {', '.join(merged)} hold a merged LoRA adapter (W0 + s·B·A in "
            "base.weight, beside A and B); a model that loads this file unmerged would add "
            "s·B·A twice. Unmerge first (lora.unmerge_adapter) to save W0 and the adapter apart, "
            "or lora.merge_and_unload to save a plain model with the update built in"
        )


def save_weights(model: nn.Module, path, metadata: dict | None = None, partner=None) -> Path:
    """Write every parameter of ``model`` to one safetensors file (atomically), keyed by name.

    ``metadata`` (str -> str) goes into the file's header beside ``"format"``. ``partner``,
    a ``(file name, bytes)`` pair, is written beside it as a pair (:func:`write_pair`): both
    new, or both as they were. A model with quantised or merged LoRA layers is refused.
    """
    path = Path(path)
    _check_savable(model, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "lora_np", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    if partner is not None:
        return write_pair(path.parent, path.name, model.state_dict(), header, *partner)
    atomic_write(path, safetensors_bytes(model.state_dict(), header))
    return path


def load_weights(model: nn.Module, path, strict: bool = True) -> None:
    """Load a file written by :func:`save_weights` into ``model``.

    Missing or unexpected names (when ``strict``) and shape mismatches are all reported in one
    error before any parameter changes (``Module.load_state_dict``). A model with a merged
    LoRA layer is refused (its base weight holds s·B·A, which the file's would not).
    """
    merged = [n for n, m in model.named_modules() if getattr(m, "merged", False) is True]
    if merged:
        raise ValueError(
            f"cannot load {path} into a model whose {', '.join(merged)} hold a merged LoRA "
            "adapter: unmerge first (lora.unmerge_adapter)"
        )
    model.load_state_dict(read_safetensors(Path(path)), strict=strict)
