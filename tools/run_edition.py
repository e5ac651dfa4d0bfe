"""Run an edition of the course and report what went wrong: the student edition's proof.

Run from top to bottom as "Run All" and ``jupyter nbconvert --execute`` do, the student edition
(``make student``) must reach its end:

- untouched, no cell raises and each checker prints its "✗ Exercise NN.M not solved yet" line
  (the cells after it fall back to the library's function);
- solved (``--solved``: the teacher's solutions typed into the stubs), no cell raises, each
  checker prints its success line, and nothing falls back to the library.

``tests/test_editions.py`` runs both on freshly built editions; a teacher can run them by hand::

    python tools/run_edition.py build/student            # every NN_*.ipynb there
    python tools/run_edition.py build/student/02_*.ipynb
    python tools/run_edition.py --solved notebooks        # builds the solved edition first

Notebooks run in parallel worker processes (one BLAS thread each, as every notebook sets), each
from its own folder with figures written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editions  # noqa: E402  (a sibling script, not an installed package)

CELL_TIMEOUT_S = 600
# What passing_or_reference prints when a cell falls back to the library's function.
FALLBACK = "note: using the library's"


@dataclass
class Run:
    """One notebook's run: {cell index: (ename, evalue)} of the errors, {cell index: printed
    text} of every cell that printed, and the seconds it took."""

    errors: dict[int, tuple[str, str]]
    printed: dict[int, str]
    seconds: float = 0.0


def run_notebook(path: Path, timeout: int = CELL_TIMEOUT_S) -> Run:
    """Execute a notebook from its own folder, errors allowed (so that one report lists them
    all; a run with no error is one that "Run All" takes to the end).

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
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors, printed = {}, {}
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                errors[index] = (output.ename, output.evalue)
            elif output.output_type == "stream":
                printed[index] = printed.get(index, "") + output.text
    return Run(errors, printed, seconds)


def _timed_run(path: Path, figure_dir: str) -> Run:
    os.environ["LORA_NP_FIGURE_DIR"] = figure_dir  # inherited by the kernel this process starts
    return run_notebook(path)


def run_all(paths: list[Path], workers: int | None = None) -> dict[Path, Run]:
    """{path: its Run} for ``paths``, run in parallel, biggest file first."""
    workers = workers or max(1, min(len(paths), os.cpu_count() or 1))
    order = sorted(paths, key=lambda path: -path.stat().st_size)
    with tempfile.TemporaryDirectory(prefix="lora-np-figures-") as figures:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {path: pool.submit(_timed_run, path, figures) for path in order}
            return {path: future.result() for path, future in futures.items()}


def write_solved(paths: list[Path], out: Path) -> list[Path]:
    """Write the solved student edition of the teacher's notebooks ``paths`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        solved = editions.solved_notebook(editions.read_notebook(path), path)
        editions.write_atomic(out / path.name, nbformat.writes(solved) + "\n")
        written.append(out / path.name)
    return written


def problems(student_path: Path, run: Run, solved: bool = False) -> list[str]:
    """What is wrong with one student notebook's run (see the module docstring): any cell that
    raised, a checker without its line, and in a solved run any fallback to the library. The
    exercises are those the student notebook recorded when it was made."""
    nb = nbformat.read(student_path, as_version=4)
    exercises = editions.recorded_exercises(nb, student_path)
    found = [
        f"{editions.where(student_path, nb, index)} raised {ename}: {evalue}"
        for index, (ename, evalue) in sorted(run.errors.items())
    ]
    for exercise in exercises:
        index = exercise.checker_cell
        if solved:
            want = editions.SUCCESS_LINE.pattern.format(name=exercise.name)
        else:
            want = re.escape(editions.UNSOLVED_LINE.format(number=exercise.number))
        text = run.printed.get(index, "")
        if index not in run.errors and not re.search(want, text):
            found.append(
                f"{editions.where(student_path, nb, index)}: expected the line {want!r}, "
                f"printed {text.strip()!r}"
            )
    if solved:
        found += [
            f"{editions.where(student_path, nb, index)} fell back: {text.strip()!r}"
            for index, text in sorted(run.printed.items())
            if FALLBACK in text or "not solved yet" in text
        ]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a folder or notebooks")
    parser.add_argument(
        "--solved",
        action="store_true",
        help="the paths are teacher's notebooks: run their solved student edition",
    )
    args = parser.parse_args(argv)
    paths = []
    for path in args.paths:
        paths += sorted(path.glob(editions.COURSE_GLOB)) if path.is_dir() else [path]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lora-np-solved-") as folder:
        if args.solved:
            paths = write_solved(paths, Path(folder))
        results = run_all(paths)
        bad = 0
        for path in paths:
            found = problems(path, results[path], solved=args.solved)
            bad += bool(found)
            print(f"{path.name}: {results[path].seconds:.0f} s, {'FAILED' if found else 'ok'}")
            for line in found:
                print(f"  {line}")
    print(f"{len(paths)} notebooks in {time.perf_counter() - start:.0f} s, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
