"""Run the course on the numpy-strict backend: proof on a CPU that it is safe on CuPy.

Usage::

    python tools/run_strict_course.py            # every notebooks/NN_*.ipynb, in order
    python tools/run_strict_course.py 05 08      # some of them (numbers or names)

Each notebook runs from a fresh kernel with ``LORA_NP_BACKEND=numpy-strict``, whose arrays
refuse silent conversion to NumPy the way CuPy's do (``lora_np/backend_strict.py``): a line
that hands a backend array to NumPy, or mixes one with a host array, fails here as it would on
a GPU. Outputs are not compared and nothing in the repository is written: the notebooks run
from a temporary folder, which also receives their figures (``LORA_NP_FIGURE_DIR``). The first
failing cell of each notebook is reported; the exit status is 1 when any notebook failed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 900
TRACE_LINES = 12  # frame lines of the failing cell's traceback, printed (outermost first)


def select(patterns: list[str]) -> list[Path]:
    """The notebooks named by numbers or names (all NN_*.ipynb when none)."""
    course = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not patterns:
        return course
    chosen = []
    for pattern in patterns:
        stem = f"{int(pattern):02d}_" if pattern.isdigit() else Path(pattern).stem
        matches = [p for p in course if p.stem.startswith(stem)]
        if not matches:
            raise SystemExit(f"no notebook in {NOTEBOOKS} matches {pattern!r}")
        chosen += [p for p in matches if p not in chosen]
    return chosen


def run(path: Path, workdir: Path) -> tuple[float, str | None]:
    """Execute one notebook under the strict backend; (seconds, failure or None)."""
    notebook = nbformat.read(path, as_version=4)
    running = [-1]
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        on_cell_start=lambda cell, cell_index: running.__setitem__(0, cell_index),
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        cell = notebook.cells[running[0]] if 0 <= running[0] < len(notebook.cells) else None
        first = cell.source.strip().splitlines()[0] if cell and cell.source.strip() else ""
        detail = f"{err.ename}: {err.evalue}" if isinstance(err, CellExecutionError) else str(err)
        if isinstance(err, CellExecutionError):  # the frames that say which line mixed the two
            trace = re.sub(r"\x1b\[[0-9;]*m", "", err.traceback).splitlines()
            frames = [
                line.strip()
                for line in trace
                if line.startswith(("Cell In[", "File ")) or line.lstrip().startswith("--->")
            ]
            detail += "\n    " + "\n    ".join(frames[:TRACE_LINES])
        return time.perf_counter() - start, f"cell {running[0]} ({first!r}): {detail}"
    return time.perf_counter() - start, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    args = parser.parse_args(argv)
    paths = select(args.notebooks)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="lora_np_strict_") as tmp:
        workdir = Path(tmp)
        # the kernel inherits this process's environment
        os.environ["LORA_NP_BACKEND"] = "numpy-strict"
        os.environ["LORA_NP_FIGURE_DIR"] = str(workdir / "figures")
        for path in paths:
            print(f"{path.name} on numpy-strict ...", flush=True)
            seconds, error = run(path, workdir)
            if error:
                failures += 1
                print(f"  FAILED after {seconds:.0f} s in {error}", flush=True)
            else:
                print(f"  ok in {seconds:.0f} s", flush=True)
    print(f"{len(paths) - failures} of {len(paths)} notebooks ran on the numpy-strict backend")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
