"""Reading and writing the editions' files safely (used by tools/editions.py).

A notebook or record that is empty, cut short or not what it should be is an ``EditionError``
in one line naming the file, never a traceback; every write is atomic, so an interrupted run
leaves each file whole, old or new.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nbformat


class EditionError(ValueError):
    """A notebook does not follow the exercise convention; the message names notebook and cell."""


def read_notebook(path: Path):
    """The notebook at ``path`` (nbformat 4), or an EditionError in one line when the file is
    empty, cut short or not a notebook (a traceback would bury the file's name)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except json.JSONDecodeError as err:
        raise EditionError(
            f"{path.name}: not a readable notebook ({_json_problem(err)}); restore it, "
            "e.g. `git checkout -- <file>`"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise EditionError(f"{path.name}: not a readable notebook ({err})") from None
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as err:  # nbformat's many ways of saying "not a notebook"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EditionError(f"{path.name}: not a readable notebook ({first})") from None


def _json_problem(err: json.JSONDecodeError) -> str:
    if not err.doc.strip():
        return "the file is empty"
    if err.pos >= len(err.doc.rstrip()) or not err.doc.rstrip().endswith("}"):
        return f"the file is cut short: its JSON stops at line {err.doc.count(chr(10)) + 1}"
    return f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: Path) -> dict[str, list[str]]:
    """{notebook name: digests of the versions this tool wrote} from the student edition's
    record; {} when there is none. A damaged record is an EditionError: guessing would either
    overwrite a learner's work or keep a stale notebook."""
    if not path.exists():
        return {}
    problem = None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        problem, record = _json_problem(err), None
    except (OSError, UnicodeDecodeError) as err:
        problem, record = str(err), None
    if problem is None and not (
        isinstance(record, dict)
        and all(isinstance(v, str | list) for v in record.values())
        and all(isinstance(d, str) for v in record.values() if isinstance(v, list) for d in v)
    ):
        problem = f"expected {{notebook: digest}}, found {type(record).__name__}"
    if problem is not None:
        raise EditionError(
            f"{path}: not a readable record of the student edition ({problem}); delete it "
            "(every notebook there is then kept as yours) or run `make student FORCE=1`"
        )
    return {name: [v] if isinstance(v, str) else list(v) for name, v in record.items()}


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` all or nothing: into a hidden file beside it, flushed to
    disk, then renamed over it. An interrupted write leaves the old file (or none), never half
    of the new one, and no temporary file unless the process itself is killed."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def save_manifest(path: Path, manifest: dict[str, list[str]]) -> None:
    record = {
        name: digests[0] if len(digests) == 1 else digests for name, digests in manifest.items()
    }
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
