"""Run an edition of the course and report which cells raise: the student edition's proof.

In the student edition every checker cell must fail on its stub with the checker's "not written
yet" message, and no other cell may fail (cells after an exercise fall back to the library's
function). ``tests/test_editions.py`` runs this on a freshly built student edition; a teacher can
run it by hand::

    python tools/run_edition.py build/student            # every NN_*.ipynb there
    python tools/run_edition.py build/student/02_*.ipynb

Notebooks run in parallel worker processes (one BLAS thread each, as every notebook sets), each
from its own folder with figures written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editions  # noqa: E402  (a sibling script, not an installed package)

CELL_TIMEOUT_S = 600


def run_errors(path: Path, timeout: int = CELL_TIMEOUT_S) -> dict[int, tuple[str, str]]:
    """Execute a notebook from its own folder, errors allowed: {cell index: (ename, evalue)}.

    A cell that runs past ``timeout`` seconds is recorded as a ``CellTimeoutError``; a kernel
    that dies raises. The notebook file is not changed.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": f"no result within {timeout} s",
            "traceback": [],
        },
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return {
        index: (output.ename, output.evalue)
        for index, cell in enumerate(nb.cells)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    }


def _timed_run(path: Path, figure_dir: str) -> tuple[dict[int, tuple[str, str]], float]:
    os.environ["LORA_NP_FIGURE_DIR"] = figure_dir  # inherited by the kernel this process starts
    start = time.perf_counter()
    errors = run_errors(path)
    return errors, time.perf_counter() - start


def run_all(paths: list[Path], workers: int | None = None) -> dict[str, tuple[dict, float]]:
    """{notebook name: (errors, seconds)} for ``paths``, run in parallel, biggest file first."""
    workers = workers or max(1, min(len(paths), os.cpu_count() or 1))
    order = sorted(paths, key=lambda path: -path.stat().st_size)
    with tempfile.TemporaryDirectory(prefix="lora-np-figures-") as figures:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {path.name: pool.submit(_timed_run, path, figures) for path in order}
            return {name: future.result() for name, future in futures.items()}


def problems(student_path: Path, errors: dict[int, tuple[str, str]]) -> list[str]:
    """What is wrong with one student notebook's run: a checker that did not fail on its stub
    with the "not written yet" message, or any other cell that raised. The exercises are those
    the student notebook recorded when it was made."""
    nb = nbformat.read(student_path, as_version=4)
    checkers = {e.checker_cell: e.name for e in editions.recorded_exercises(nb, student_path)}
    found = []
    for index, name in checkers.items():
        ename, evalue = errors.get(index, ("", ""))
        if editions.NOT_WRITTEN.format(name=name) not in evalue:
            what = f"{ename}: {evalue}" if ename else "it passed"
            found.append(
                f"{editions.where(student_path, nb, index)}: the checker should fail on the "
                f"stub with '{editions.NOT_WRITTEN.format(name=name)}', but {what}"
            )
    for index, (ename, evalue) in sorted(errors.items()):
        if index not in checkers:
            found.append(f"{editions.where(student_path, nb, index)} raised {ename}: {evalue}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a folder or notebooks")
    args = parser.parse_args(argv)
    paths = []
    for path in args.paths:
        paths += sorted(path.glob(editions.COURSE_GLOB)) if path.is_dir() else [path]
    start = time.perf_counter()
    results = run_all(paths)
    bad = 0
    for path in paths:
        errors, seconds = results[path.name]
        found = problems(path, errors)
        bad += bool(found)
        print(f"{path.name}: {seconds:.0f} s, {'FAILED' if found else 'ok'}")
        for line in found:
            print(f"  {line}")
    print(f"{len(paths)} notebooks in {time.perf_counter() - start:.0f} s, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
