"""Checker for notebook 08's adapter file: an adapter saved in PEFT's folder layout, by you.

``fn(weights, r, alpha, folder)`` gets ``weights``, a dict ``{layer name: (A (r, k), B (d, r))}``
of host arrays (the layer names of the shipped tiny GPT, e.g. ``"blocks.0.attn.q"``), and writes
into ``folder`` (created if needed):

* ``adapter_config.json``: at least ``"peft_type": "LORA"``, ``"r"``, ``"lora_alpha"`` (alpha
  itself, not the scale alpha / r) and ``"target_modules"`` (the layers' names, or their last
  parts as PEFT writes them);
* ``adapter_model.safetensors``: ``base_model.model.<name>.lora_A.weight`` = A and
  ``...lora_B.weight`` = B, in their own dtype.

The checker writes into a temporary folder it owns, reads both files, names the classic
mistakes (no ``base_model.model.`` prefix, A and B swapped, alpha missing or the scale stored
instead), then loads the folder with :func:`lora_np.lora.load_adapter` into a fresh base and
compares its logits with those of the same adapter saved by the library
(:func:`save_adapter_reference`). A file that was in the folder before must be left as it was.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

from .. import backend, data, serialization, transformer
from .. import lora as lora_lib
from ..autograd import no_grad
from ..lora.peft_format import CONFIG_NAME, PREFIX, WEIGHTS_NAME
from ._harness import ExerciseError, call, describe, exercise, np, passed
from .finetune import _own_random_stream

__all__ = ["check_save_adapter", "save_adapter_reference"]


def save_adapter_reference(weights, r, alpha, folder) -> Path:
    """Write ``weights`` ({layer name: (A (r, k), B (d, r))}) as a PEFT adapter folder.

    The config names every layer in full (PEFT's rule: an entry matches a module whose name
    equals it or ends with "." + it); both files are written as one pair by the library's
    writer (:func:`lora_np.serialization.write_pair`). Returns the folder's path.
    """
    config = {
        "bias": "none",
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "peft_type": "LORA",
        "r": r,
        "target_modules": sorted(weights),
        "task_type": None,
    }
    tensors = {}
    for name, (A, B) in weights.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = np.asarray(A)  # (r, k)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = np.asarray(B)  # (d, r)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    serialization.write_pair(
        folder, WEIGHTS_NAME, tensors, {"format": "pt"}, CONFIG_NAME, text.encode()
    )
    return folder


# (layers, r, alpha, folder: "new" Path, "existing" Path holding a file, or "str", description)
_CASES = [
    (("q", "v"), 8, 16, "new", "LoRA r = 8, alpha 16 on q and v of the 4 blocks, a new folder"),
    (
        ("fc",),
        2,
        3.0,
        "existing",
        "r = 2, alpha 3 on fc (A (2, 128), B (512, 2)), a folder that exists",
    ),
    (("q", "k", "v", "o"), 4, 6, "str", "r = 4, alpha 6 on q, k, v, o, the folder given as a str"),
]
_NOTE = "notes.txt"  # a file already in the existing folder: the save must leave it alone


def _inputs():
    rng = np.random.default_rng(20260808)
    shapes = {"q": (128, 128), "k": (128, 128), "v": (128, 128), "o": (128, 128), "fc": (512, 128)}
    where = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "fc": "mlp"}
    for layers, r, alpha, kind, description in _CASES:
        weights = {}
        for block in range(4):
            for layer in layers:
                d, k = shapes[layer]
                A = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
                B = (rng.standard_normal((d, r)) * 0.2).astype(np.float32)
                weights[f"blocks.{block}.{where[layer]}.{layer}"] = (A, B)
        yield (weights, r, alpha, kind), description


def _logits(folder: Path, idx):
    with _own_random_stream():
        model = transformer.load_pretrained()
    lora_lib.load_adapter(model, folder)
    # one BLAS thread: small products, where a second thread only waits on a busy machine
    with no_grad(), threadpool_limits(limits=1, user_api="blas"):
        return backend.to_numpy(model(idx)[0].data)


def _read_config(name: str, case: str, folder: Path, r, alpha) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ExerciseError(f"{name} wrote no {CONFIG_NAME} into the folder on {case}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ExerciseError(f"{name}: {CONFIG_NAME} is not valid JSON on {case} ({err})") from None
    if not isinstance(config, dict):
        raise ExerciseError(
            f"{name}: {CONFIG_NAME} holds {describe(config)} on {case}; expected a JSON object"
        )
    if "lora_alpha" not in config:
        raise ExerciseError(
            f"{name}: alpha is missing from {CONFIG_NAME} on {case}: PEFT reads it as "
            f'"lora_alpha" and computes the scale alpha / r itself'
        )
    stored = config["lora_alpha"]
    if isinstance(stored, int | float) and not isinstance(stored, bool):
        if stored != alpha and np.isclose(stored, alpha / r):
            raise ExerciseError(
                f"{name}: {CONFIG_NAME} stores the scale alpha / r = {alpha / r:g} as lora_alpha "
                f"on {case}: store alpha itself ({alpha:g}); the loader divides by r"
            )
    if stored != alpha or isinstance(stored, bool):
        raise ExerciseError(
            f"{name}: lora_alpha is {stored!r} on {case}; expected alpha = {alpha!r}"
        )
    if config.get("r") != r or isinstance(config.get("r"), bool):
        raise ExerciseError(
            f"{name}: r is {config.get('r')!r} in {CONFIG_NAME} on {case}; expected {r}"
        )
    if config.get("peft_type") != "LORA":
        raise ExerciseError(
            f'{name}: {CONFIG_NAME} needs "peft_type": "LORA" (on {case}, it is '
            f"{config.get('peft_type')!r}): PEFT reads it to know which kind of adapter this is"
        )
    if "target_modules" not in config:
        raise ExerciseError(
            f"{name}: {CONFIG_NAME} has no target_modules on {case}: list the adapted layers' "
            'names (or their last parts, e.g. ["q", "v"])'
        )
    return config


def _check_tensors(name: str, case: str, folder: Path, weights: dict) -> None:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise ExerciseError(f"{name} wrote no {WEIGHTS_NAME} into the folder on {case}")
    try:
        tensors = serialization.read_safetensors(path)
    except (ValueError, OSError) as err:
        raise ExerciseError(f"{name}: {WEIGHTS_NAME} cannot be read on {case}: {err}") from None
    expected = {}
    for layer, (A, B) in weights.items():
        expected[f"{PREFIX}{layer}.lora_A.weight"] = A
        expected[f"{PREFIX}{layer}.lora_B.weight"] = B
    if set(tensors) != set(expected):
        unprefixed = {PREFIX + key for key in tensors if not key.startswith(PREFIX)}
        if unprefixed and unprefixed <= set(expected):
            raise ExerciseError(
                f"{name}: the keys in {WEIGHTS_NAME} lack the prefix {PREFIX!r} on {case} "
                f"(yours: {sorted(tensors)[0]!r}): PEFT names every weight from the wrapped model, "
                f"{PREFIX}<layer>.lora_A.weight"
            )
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ExerciseError(
            f"{name}: wrong keys in {WEIGHTS_NAME} on {case} ({what}); expected "
            f"{PREFIX}<layer>.lora_A.weight and .lora_B.weight for every layer"
        )
    for layer, (A, B) in weights.items():
        got_A = tensors[f"{PREFIX}{layer}.lora_A.weight"]
        got_B = tensors[f"{PREFIX}{layer}.lora_B.weight"]
        if np.array_equal(got_A, B) and np.array_equal(got_B, A):
            raise ExerciseError(
                f"{name}: A and B are swapped in {WEIGHTS_NAME} on {case} (layer {layer}): "
                "lora_A is A (r, k), the matrix that meets the input first; lora_B is B (d, r)"
            )
        for key, got, want in (("lora_A", got_A, A), ("lora_B", got_B, B)):
            if got.shape != want.shape or not np.array_equal(
                got.astype(np.float64), want.astype(np.float64)
            ):
                raise ExerciseError(
                    f"{name}: {layer}.{key}.weight in {WEIGHTS_NAME} is not the given "
                    f"{'A' if key == 'lora_A' else 'B'} on {case} (shape {got.shape}, expected "
                    f"{want.shape}; values stored exactly)"
                )
            if got.dtype != want.dtype:
                raise ExerciseError(
                    f"{name}: {layer}.{key}.weight is stored as {got.dtype} on {case}; store "
                    f"each array in its own dtype ({want.dtype})"
                )


@exercise("save_adapter", save_adapter_reference)
def check_save_adapter(fn, *, quiet: bool = False) -> None:
    """Check ``fn(weights, r, alpha, folder)``: a PEFT adapter folder load_adapter reads back."""
    name = "save_adapter"
    n_cases = 0
    idx, _ = data.encode_examples(data.make_examples("swp", 4, seed=5))
    for (weights, r, alpha, kind), case in _inputs():
        exists = kind == "existing"
        with tempfile.TemporaryDirectory(prefix="lora_np_check_") as tmp:
            want = _logits(save_adapter_reference(weights, r, alpha, Path(tmp) / "ref"), idx)
            folder = Path(tmp) / "adapter"
            note = b"the learner's own notes\n"
            if exists:
                folder.mkdir()
                (folder / _NOTE).write_bytes(note)
            given = {k: (A.copy(), B.copy()) for k, (A, B) in weights.items()}
            target = str(folder) if kind == "str" else folder
            got = call(fn, name, case, given, r, alpha, target)
            if got is not None and not (isinstance(got, str | Path) and Path(got) == folder):
                raise ExerciseError(
                    f"{name} returned {describe(got)} on {case}; return nothing (or the folder)"
                )
            if set(given) != set(weights) or any(
                not (np.array_equal(given[k][0], A) and np.array_equal(given[k][1], B))
                for k, (A, B) in weights.items()
            ):
                raise ExerciseError(
                    f"{name} changed its input weights on {case}: leave them as given"
                )
            if not folder.is_dir():
                raise ExerciseError(
                    f"{name} did not create the folder {folder.name!r} on {case}: make it "
                    "(Path(folder).mkdir(parents=True, exist_ok=True)) and write both files there"
                )
            if exists and (not (folder / _NOTE).is_file() or (folder / _NOTE).read_bytes() != note):
                raise ExerciseError(
                    f"{name} removed or changed {_NOTE}, a file that was already in the folder, "
                    f"on {case}: a save touches only the files it writes"
                )
            _read_config(name, case, folder, r, alpha)
            _check_tensors(name, case, folder, weights)
            try:
                logits = _logits(folder, idx)
            except (ValueError, KeyError, TypeError) as err:
                raise ExerciseError(
                    f"{name}: lora_np.lora.load_adapter cannot load your folder on {case}: {err}"
                ) from None
            if not np.allclose(logits, want, rtol=1e-5, atol=1e-5):
                raise ExerciseError(
                    f"{name}: your adapter, loaded into a fresh base on {case}, gives other "
                    "logits than the same weights saved by the library"
                )
        n_cases += 1
    passed(name, n_cases, quiet)
