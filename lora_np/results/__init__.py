"""The committed results of the long experiments that notebooks 05, 07 and 08 study.

Training a full sweep takes minutes to hours (``make experiments`` reruns them all), so its
outputs ship with the package, beside this file, and a notebook reads them from wherever
``lora_np`` is installed, whatever its working folder::

    from lora_np import results
    results.load_json("07_finetune.json")              # the 07 sweep, parsed
    results.path("08_adapters", "swp")                  # a PEFT adapter folder (a Path)

What is here (each file is written by the script ``experiments/<name>.py`` of the repository):

* ``05_svd_rank.json``, ``05_full_ft_*.safetensors``, ``05_lora_*/``, ``05_cross_task_A.safetensors``
  (the cross-task null's adapters, A only): notebook 05;
* ``07_finetune.json``, ``07_which_matrices.json``, ``07_heldout_loss.json``: notebook 07;
* ``08_adapters/``: notebook 08 (adapter folders, ``scores.json``, and ``independent_init.json``,
  the combinations rerun from independently initialised adapters), and ``08_independent_init/``,
  those adapters.
* ``10_peers.json``: notebook 10 (LoRA among its peers; partial until the sweep has finished,
  ``"complete"`` says which).
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
"""The folder holding the results (inside the installed package; the experiments write here)."""


def path(*parts: str) -> Path:
    """The path of a stored result, e.g. ``path("08_adapters", "swp")``; it must exist.

    Args:
        parts: names below the results folder, joined like ``Path(*parts)``; no ``..`` and no
            absolute paths.

    Raises:
        ValueError: when no part is given or a part leaves the results folder.
        FileNotFoundError: when nothing is stored under that name (lists what is).
    """
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"results.path needs one or more non-empty names, got {parts!r}")
    relative = Path(*parts)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"results.path takes names inside the results folder, got {relative.as_posix()!r}"
        )
    target = FOLDER / relative
    if not target.exists():
        stored = (
            sorted(p.name for p in target.parent.iterdir() if not p.name.startswith(("_", ".")))
            if target.parent.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"no stored result {relative.as_posix()!r} in {FOLDER}; "
            f"there: {', '.join(stored) or 'nothing'} (make experiments writes them)"
        )
    return target


def load_json(*parts: str) -> dict:
    """The parsed JSON file ``path(*parts)``, e.g. ``load_json("05_svd_rank.json")``."""
    return json.loads(path(*parts).read_text(encoding="utf-8"))
