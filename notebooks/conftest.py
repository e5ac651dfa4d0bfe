"""nbval in `make test` and the test matrix: notebooks that need packages the environment lacks
(09 needs torch, transformers and PEFT) are not collected; `make crosscheck` names 09 itself
and runs it. Their metadata lists the packages (tools/notebook_requires.py)."""

import importlib.util
import json
from pathlib import Path


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.suffix != ".ipynb":
        return None
    metadata = json.loads(collection_path.read_text(encoding="utf-8")).get("metadata", {})
    needs = metadata.get("lora_np", {}).get("requires", [])
    if any(importlib.util.find_spec(name) is None for name in needs):
        return True
    return None
