"""Run the course: execute every notebook in order, into build/course/ or (maintainers) in place.

Usage::

    python tools/run_course.py                 # every notebooks/NN_*.ipynb -> build/course/
    python tools/run_course.py 03 05_svd_rank  # a number, a name (with or without .ipynb)
    python tools/run_course.py "0[0-2]_*"      # or a glob, matched inside notebooks/
    python tools/run_course.py --in-place 03   # maintainers: rewrite the stored notebook and
                                               # the figures/ it makes (make store-outputs)

Without ``--in-place`` nothing tracked by git changes: each executed notebook is written to
``build/course/`` and its figures to ``build/course/figures/``, so a learner's clone stays clean
and ``git pull`` never conflicts. Each notebook runs from a fresh ``python3`` kernel with
``notebooks/`` as its working directory (as under nbval), at most 900 s per cell. A notebook is
written only when all of its cells ran. The first failure stops the run: the failing cell is
named, the table of times so far is printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
import notebook_requires
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build" / "course"
STORED_FIGURES = ROOT / "figures"
FIGURE_DIR_VARIABLE = "LORA_NP_FIGURE_DIR"  # read by lora_np.plotting.save_figure
COURSE_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 900


def select_notebooks(patterns: list[str]) -> list[Path]:
    """The course notebooks named by ``patterns`` (all of them when empty), sorted, no repeats."""
    course = sorted(NOTEBOOKS.glob(COURSE_GLOB))
    if not patterns:
        return course
    chosen: set[Path] = set()
    for pattern in patterns:
        name = Path(pattern).name
        if name.isdigit():  # "3" or "03": the notebook with that number
            name = f"{int(name):02d}_*"
        if not name.endswith(".ipynb"):
            is_glob = any(char in name for char in "*?[")
            name += "*.ipynb" if is_glob and not name.endswith("*") else ".ipynb"
        matches = [path for path in course if path.match(name)]
        if not matches:
            known = ", ".join(path.name for path in course) or "none"
            raise SystemExit(f"no notebook in {NOTEBOOKS} matches {pattern!r} (found: {known})")
        chosen.update(matches)
    return sorted(chosen)


def warn_if_kernel_is_elsewhere() -> None:
    """Say so when the 'python3' kernel would not run this Python (and so not this .venv)."""
    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
    except NoSuchKernel:
        return  # nbclient reports it with its own message
    program = argv[0] if argv else ""
    # jupyter_client swaps a bare "python" for the Python that runs it.
    if program in {"python", "python3", f"python3.{sys.version_info.minor}"}:
        return
    if Path(program).resolve() != Path(sys.executable).resolve():
        print(
            f"warning: the {KERNEL_NAME!r} kernel runs {program}, not {sys.executable}; "
            "notebooks may not see this environment's lora_np",
            file=sys.stderr,
        )


def describe_cell(notebook, index: int) -> str:
    """'cell 7 (first line of its source)', counting every cell from 0 as Jupyter shows them."""
    if not 0 <= index < len(notebook.cells):
        return "a cell"
    source = notebook.cells[index].source.strip()
    return f"cell {index} ({source.splitlines()[0] if source else ''!r})"


def print_table(rows: list[tuple[str, float, str]]) -> None:
    """A plain table: notebook, seconds, status; then the total time."""
    width = max([len("notebook")] + [len(name) for name, _, _ in rows])
    print()
    print(f"{'notebook':<{width}}  {'seconds':>8}  status")
    print(f"{'-' * width}  {'-' * 8}  ------")
    for name, seconds, status in rows:
        print(f"{name:<{width}}  {seconds:>8.1f}  {status}")
    print(f"{'-' * width}  {'-' * 8}")
    print(f"{'total':<{width}}  {sum(seconds for _, seconds, _ in rows):>8.1f}")


def run_notebook(path: Path, destination: Path) -> tuple[float, str | None]:
    """Execute one notebook; on success write it to ``destination``. Returns (seconds, error)."""
    notebook = nbformat.read(path, as_version=4)
    running = [-1]  # index of the cell being executed, for the error message

    def remember_cell(cell, cell_index):
        running[0] = cell_index

    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        on_cell_start=remember_cell,
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        seconds = time.perf_counter() - start
        where = describe_cell(notebook, running[0])
        if isinstance(err, CellExecutionError):
            summary = f"{err.ename}: {err.evalue}"
        elif isinstance(err, CellTimeoutError):
            summary = f"no result within {CELL_TIMEOUT_S} s"
        else:
            summary = f"the kernel died ({err})"
        return seconds, f"{path.name} failed in {where}: {summary}"
    seconds = time.perf_counter() - start
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, destination)
    return seconds, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        help="numbers, names or globs inside notebooks/ (default: every NN_*.ipynb)",
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="maintainers: overwrite the stored notebooks and figures/ (default: build/course/)",
    )
    args = parser.parse_args(argv)
    paths = notebook_requires.runnable(select_notebooks(args.notebooks))
    output_dir = NOTEBOOKS if args.in_place else BUILD
    # The kernels inherit this environment, so every save_figure call lands here.
    os.environ[FIGURE_DIR_VARIABLE] = str(STORED_FIGURES if args.in_place else BUILD / "figures")
    if not paths:
        print(f"no notebooks matching {COURSE_GLOB} in {NOTEBOOKS}; nothing to run")
        return 0
    warn_if_kernel_is_elsewhere()

    rows: list[tuple[str, float, str]] = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        seconds, error = run_notebook(path, output_dir / path.name)
        rows.append((path.name, seconds, "FAILED" if error else "ok"))
        if error:
            print(f"\n{error}", file=sys.stderr)
            print("(that notebook was not written; what is stored is unchanged)")
            print_table(rows)
            return 1
        print(f"  done in {seconds:.1f} s", flush=True)
    print_table(rows)
    if not args.in_place:
        print(f"\nexecuted notebooks: {output_dir}\nfigures: {os.environ[FIGURE_DIR_VARIABLE]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
