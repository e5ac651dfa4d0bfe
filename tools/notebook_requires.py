"""Notebooks that need packages `make install` does not bring (09 needs torch, transformers and
PEFT). A notebook lists them in its metadata, ``{"lora_np": {"requires": ["torch", ...]}}``;
the course runner, the strict run, the editions and the site leave it out, saying so in one
line, where one is missing. ``make crosscheck`` installs them and runs such notebooks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HOW = "`make crosscheck` installs them and runs it under strict nbval"


def requirements(path: Path) -> list[str]:
    """The packages a notebook's metadata says it needs (none for most)."""
    metadata = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {})
    return list(metadata.get("lora_np", {}).get("requires", []))


def missing(path: Path) -> list[str]:
    return [name for name in requirements(path) if importlib.util.find_spec(name) is None]


def runnable(paths: list[Path], say=print) -> list[Path]:
    """``paths`` without the notebooks whose packages are missing; one line for each left out."""
    kept = []
    for path in paths:
        lacking = missing(path)
        if lacking:
            say(f"{Path(path).name} skipped: it needs {', '.join(lacking)}; {HOW}")
        else:
            kept.append(path)
    return kept
