"""Run the course on the numpy-strict backend: proof on a CPU that it is safe on CuPy.

Usage::

    python tools/run_strict_course.py            # every notebooks/NN_*.ipynb, in order
    python tools/run_strict_course.py 05 08      # some of them (numbers or names)
    python tools/run_strict_course.py --workers 4   # notebooks at a time (default 2)

Each notebook runs from a fresh kernel with ``LORA_NP_BACKEND=numpy-strict``, whose arrays
refuse silent conversion to NumPy the way CuPy's do (``lora_np/backend_strict.py``): a line
that hands a backend array to NumPy, or mixes one with a host array, fails here as it would on
a GPU. Outputs are not compared and nothing in the repository is written: the notebooks run
from a temporary folder, which also receives their figures (``LORA_NP_FIGURE_DIR``). The first
failing cell of each notebook is reported (every failing cell with ``--keep-going``); the exit
status is 1 when any notebook failed. The notebooks are independent (each loads what it needs
from the package), so ``--workers`` of them run at a time, longest first; reports come in
course order.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import notebook_requires
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


def frames_of(traceback: str) -> str:
    """The frame lines of a traceback (which line mixed the two kinds of array), outermost first."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", traceback).splitlines()
    kept = [
        line.strip()
        for line in lines
        if line.startswith(("Cell In[", "File ")) or line.lstrip().startswith("--->")
    ]
    return "\n    " + "\n    ".join(kept[:TRACE_LINES])


def describe(notebook, index: int) -> str:
    cell = notebook.cells[index] if 0 <= index < len(notebook.cells) else None
    first = cell.source.strip().splitlines()[0] if cell and cell.source.strip() else ""
    return f"cell {index} ({first!r})"


def run(path: Path, workdir: Path, keep_going: bool = False) -> tuple[float, list[str]]:
    """Execute one notebook under the strict backend; (seconds, failures)."""
    notebook = nbformat.read(path, as_version=4)
    running = [-1]
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        allow_errors=keep_going,
        resources={"metadata": {"path": str(workdir)}},
        on_cell_start=lambda cell, cell_index: running.__setitem__(0, cell_index),
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        detail = f"{err.ename}: {err.evalue}" if isinstance(err, CellExecutionError) else str(err)
        if isinstance(err, CellExecutionError):
            detail += frames_of(err.traceback)
        return time.perf_counter() - start, [f"{describe(notebook, running[0])}: {detail}"]
    failures = []
    for index, cell in enumerate(notebook.cells):  # with --keep-going: every failing cell
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                trace = "\n".join(output.get("traceback", []))
                failures.append(
                    f"{describe(notebook, index)}: {output.ename}: {output.evalue}"
                    + frames_of(trace)
                )
    return time.perf_counter() - start, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every cell and report every failing one (later ones may follow from the first)",
    )
    parser.add_argument("--workers", type=int, default=2, help="notebooks at a time (default 2)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    paths = notebook_requires.runnable(select(args.notebooks))
    failures = 0
    with tempfile.TemporaryDirectory(prefix="lora_np_strict_") as tmp:
        workdir = Path(tmp)
        # the kernels inherit this process's environment (the pool's processes are forked
        # after these lines)
        os.environ["LORA_NP_BACKEND"] = "numpy-strict"
        os.environ["LORA_NP_FIGURE_DIR"] = str(workdir / "figures")
        longest_first = sorted(paths, key=lambda path: -path.stat().st_size)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {p: pool.submit(run, p, workdir, args.keep_going) for p in longest_first}
            for path in paths:
                print(f"{path.name} on numpy-strict ...", flush=True)
                seconds, errors = futures[path].result()
                if errors:
                    failures += 1
                    for error in errors:
                        print(f"  FAILED (after {seconds:.0f} s) in {error}", flush=True)
                else:
                    print(f"  ok in {seconds:.0f} s", flush=True)
    print(f"{len(paths) - failures} of {len(paths)} notebooks ran on the numpy-strict backend")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
