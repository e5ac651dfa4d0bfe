"""The student edition as nbval compares it: one execution of the course that proves both what a
learner runs and what the stored notebooks show.

``make test`` executes the course once. It runs strict nbval on the student edition (exactly
the notebooks ``make student`` writes: stubs in the solution cells, checker cells wrapped for
Run All), each code cell carrying the teacher's stored output as the expected one, except:

- a checker cell expects the line an unsolved exercise prints ("✗ Exercise NN.M not solved
  yet ...", on stderr), so every unsolved checker is proven to say so and let Run All go on;
- a cell that takes the learner's function or the library's (``passing_or_reference``) prints
  which one it took; nbval's sanitizer (tools/nbval_sanitize.cfg) removes that line from both
  sides, and a cell that prints nothing else is not compared (it has nothing else to show).

Every other cell must print what the stored notebook shows, computed with the library's
answers where the learner's are missing: the solutions agree with those answers (their
checkers pass, which the teacher's edition proves under .ci/run's solved-edition run and the
test matrix's nbval of the stored notebooks), and no stored output holds a digit that rounding
could change.

    python tools/nbval_edition.py OUT [NOTEBOOK ...]   # default: every notebook
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editions  # noqa: E402  (a sibling script, not an installed package)

from lora_np.checks._run_all import unsolved_line  # noqa: E402

IGNORE_OUTPUT = "nbval-ignore-output"  # nbval's cell tag


def _takes_either(source: str) -> bool:
    return "passing_or_reference(" in source


def nbval_notebook(teacher, path: Path | str):
    """The student edition of ``teacher`` with the outputs nbval expects of it (see above)."""
    student = editions.student_notebook(teacher, path, run_all=True)
    exercises = editions.find_exercises(teacher, path)
    numbers = editions.exercise_numbers(teacher, path, exercises)
    expected_unsolved = {e.checker_cell: (n, e.name) for e, n in zip(exercises, numbers)}
    for index, (mine, theirs) in enumerate(zip(student.cells, teacher.cells)):
        if mine.cell_type != "code":
            continue
        mine.execution_count = theirs.execution_count  # nbval compares only cells that ran
        if index in expected_unsolved:
            line = unsolved_line(*expected_unsolved[index])
            mine.outputs = [nbformat.v4.new_output("stream", name="stderr", text=line + "\n")]
            continue
        mine.outputs = copy.deepcopy(theirs.outputs)
        if _takes_either(mine.source) and not mine.outputs:
            tags = mine.metadata.setdefault("tags", [])
            if IGNORE_OUTPUT not in tags:
                tags.append(IGNORE_OUTPUT)
    student.metadata["lora_np"]["edition"] = "student, with the stored outputs for nbval"
    return student


def write(paths: list[Path], out: Path) -> list[Path]:
    """Write the nbval edition of ``paths`` into ``out`` (replacing what is there) with the
    notebooks' conftest.py (which leaves out a notebook whose packages are missing)."""
    converted = {}
    for path in paths:
        notebook = nbval_notebook(editions.read_notebook(path), path)
        nbformat.validate(notebook)
        converted[path.name] = notebook
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(editions.NOTEBOOKS / "conftest.py", out / "conftest.py")
    written = []
    for name, notebook in converted.items():
        nbformat.write(notebook, out / name)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    args = parser.parse_args(argv)
    try:
        written = write(editions.select(args.notebooks), args.out)
    except editions.EditionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(written)} notebooks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
