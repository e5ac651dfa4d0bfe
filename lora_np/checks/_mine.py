"""Your code, carried from one notebook to the next: the folder ``mine/``.

Each notebook runs in its own kernel, so a class you wrote in notebook 02 is gone in notebook
03. When an exercise marked for carrying passes its checker, :func:`save` writes the code that
defines your answer to ``mine/<name>.py`` beside the notebook (the folder is yours: the course
never commits it), and a later notebook gets it back with :func:`load`, which runs that file
like any module you import. The checker is run on it again there, so an answer changed or
broken since is never used silently (``passing_or_reference`` / ``yours_or_reference`` in
:mod:`._harness` decide between yours and the library's).

What is saved: when your answer was defined in a notebook cell, every import, ``def`` and
``class`` of that cell (so helper functions beside it come along; calls and prints do not);
when it was defined in a file, only its own ``def`` or ``class`` block. A saved file starts with the imports every notebook uses; anything else your
code needs from other cells must be inside the saved cell. The environment variable
``LORA_NP_MINE`` names another folder (tests and the grader use private ones).
"""

from __future__ import annotations

import ast
import importlib.util
import linecache
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

FOLDER_ENV = "LORA_NP_MINE"

HEADER = """\
# Your {names}, saved by lora_np.checks when {them} passed {its} checker.
# Do not edit this copy: change the notebook cell, run its checker again, and it is rewritten.
import math

import numpy as np

import lora_np as ln
from lora_np import functional as F
from lora_np import nn

"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def folder() -> Path:
    """Where carried answers live: ``$LORA_NP_MINE``, else ``./mine`` (beside the notebook)."""
    return Path(os.environ.get(FOLDER_ENV) or "mine")


def path_of(name: str) -> Path:
    """``mine/<name>.py`` for exercise ``name`` (a Python identifier)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"an exercise name to carry must be a Python identifier, got {name!r}")
    return folder() / f"{name}.py"


def _code_of(obj: Any):
    """A code object defined inside ``obj`` (a function, or any method of a class), or None."""
    if isinstance(obj, type):
        for member in vars(obj).values():
            member = getattr(member, "__func__", getattr(member, "fget", member))
            code = getattr(member, "__code__", None)
            if code is not None:
                return code
        return None
    return getattr(getattr(obj, "__wrapped__", obj), "__code__", None)


def _is_cell(filename: str) -> bool:
    """True for IPython's names of notebook cells (they exist only in ``linecache``)."""
    return not Path(filename).is_file()


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_KEPT_FROM_A_CELL = (*_DEFINITIONS, ast.Import, ast.ImportFrom)


def _segment(lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "".join(lines[start - 1 : node.end_lineno])


def _block(text: str, line: int) -> str | None:
    """The top-level ``def``/``class`` block of ``text`` that contains line ``line``."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, _DEFINITIONS) and node.lineno <= line <= node.end_lineno:
            return _segment(lines, node)
    return None


def _definitions(text: str) -> str:
    """A cell's imports, functions and classes, in order: what running it again needs, without
    the calls and prints a cell may also hold (they would run on every load)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    kept = [_segment(lines, node) for node in tree.body if isinstance(node, _KEPT_FROM_A_CELL)]
    return "\n".join(segment if segment.endswith("\n") else segment + "\n" for segment in kept)


def source_of(obj: Any) -> str:
    """The code that defines ``obj``: its whole notebook cell, or its block of a file.

    Raises ``ValueError`` naming ``obj`` when no source can be found (a built-in, a lambda
    typed at a console, an object made by ``exec`` of a string).
    """
    code = _code_of(obj)
    label = getattr(obj, "__qualname__", repr(obj))
    if code is None:
        raise ValueError(f"cannot find the code of {label}: expected a function or a class")
    text = "".join(linecache.getlines(code.co_filename))
    if not text:
        raise ValueError(f"cannot find the code of {label}: {code.co_filename} is not readable")
    if _is_cell(code.co_filename):
        return _definitions(text)
    block = _block(text, code.co_firstlineno)
    if block is None:
        raise ValueError(f"cannot find the definition of {label} in {code.co_filename}")
    return block


def save(name: str, objects: tuple) -> Path:
    """Write the code defining ``objects`` to ``mine/<name>.py``, all at once (a temp file
    renamed over the old one, so a notebook reading it meanwhile sees the old or the new file,
    never half of one). Returns the path."""
    path = path_of(name)
    names = [obj.__name__ for obj in objects]
    sources: list[str] = []
    for obj in objects:
        source = source_of(obj)
        if source not in sources:  # two answers from one cell: the cell once
            sources.append(source)
    many = len(names) > 1
    text = HEADER.format(
        names=" and ".join(names),
        them="they" if many else "it",
        its="their" if many else "its",
    )
    text += "\n\n".join(sources) + f"\n\n__carried__ = {tuple(names)!r}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(name: str) -> tuple:
    """Run ``mine/<name>.py`` as a fresh module and return the objects it carries.

    Raises ``FileNotFoundError`` when nothing was saved, and whatever running the file raises
    (the caller reports it and falls back to the library's answer).
    """
    path = path_of(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist yet")
    module_name = f"lora_np_mine_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes and dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    carried = getattr(module, "__carried__", None)
    if not isinstance(carried, tuple) or not all(isinstance(n, str) for n in carried):
        raise ValueError(f"{path} has no __carried__ line: it was not written by lora_np.checks")
    missing = [n for n in carried if not hasattr(module, n)]
    if missing:
        raise ValueError(f"{path} defines no {', '.join(missing)}")
    return tuple(getattr(module, n) for n in carried)
