"""nbgrader assignments from the teacher's notebooks (``make assignments``), and the CI check that
grades two submissions end to end.

The stored notebooks carry no nbgrader metadata; this tool adds it while it copies them into an
nbgrader course directory: each solution cell ``solution: true, grade: false``; each checker cell
``grade: true, locked: true, points: 1``; every other cell locked, so autograde puts back the
original of any cell a student changed. Then nbgrader's own ``generate_assignment`` writes the
release versions (the same stubs as the student edition of ``make student``). One notebook is one
assignment, named like the notebook (``02_lora_layer``).

Usage::

    python tools/assignments.py build [NN ...] [--course build/nbgrader] [--exchange DIR]
    python tools/assignments.py ci [NN ...] [--course build/nbgrader-ci]

``ci`` takes each notebook through its own fresh course directory under ``build/nbgrader-ci/``,
in parallel: release through a local exchange folder; two students fetch and submit it
(``solved``: the teacher's solutions typed into the released notebook; ``untouched``: the
notebook as released); collect, autograde, generate feedback; then the scores are read from
nbgrader's gradebook: full marks and zero, or exit 1. No cell but a checker may raise.
(``nbgrader validate`` exits 0 even when tests fail, so it is never trusted here.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import editions  # noqa: E402  (sibling scripts, not an installed package)
import grading  # noqa: E402
import grading_course  # noqa: E402
import notebook_requires  # noqa: E402

COURSE_DIR = editions.ROOT / "build" / "nbgrader"
CI_COURSE_DIR = editions.ROOT / "build" / "nbgrader-ci"
COURSE_ID = "lora-np"
CELL_TIMEOUT_S = 900  # nbgrader's default is 30 s per cell; the course trains small models
SCHEMA_VERSION = 3  # nbgrader 0.9's cell metadata schema

CONFIG = """\
# Written by tools/assignments.py for nbgrader {version}; rebuilt by `make assignments`.
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = {course_id!r}
# A folder students and teacher can both reach (a shared drive, or this machine): release,
# fetch, submit and collect go through it. Without one, hand out release/ and put returned
# notebooks into submitted/<student>/<assignment>/ yourself (see TEACHING.md).
c.Exchange.root = {exchange!r}
c.Execute.timeout = {timeout}
# A checker cell a student deleted is put back (and run) at autograde, not silently lost.
c.OverwriteCells.add_missing_cells = True
c.ClearSolutions.code_stub = {{"python": {stub!r}}}
# nbgrader zip_collect: how your learning platform names the files in its download of all
# submissions (TEACHING.md, step 3). This pattern is Canvas's; change it for another platform.
c.FileNameCollectorPlugin.named_regexp = {pattern!r}
c.FileNameCollectorPlugin.valid_ext = [".ipynb"]
"""
# Canvas names each file in its "Download Submissions" zip
# <lastfirst>_[LATE_]<user id>_<submission id>_<file name>[-<attempt>].ipynb; zip_collect passes
# the full path, and adds .ipynb back to file_id.
CANVAS_FILE_PATTERN = (
    r"^(?:.*/)?[^/_]+_(?:LATE_)?(?P<student_id>\d+)_\d+_(?P<file_id>[^/]+?)(?:-\d+)?\.ipynb$"
)
STARS = re.compile(r"^#+\s*Exercise\b.*?\((★+)", re.M)


def _cell_metadata(grade_id: str, *, solution=False, grade=False, locked=False, points=None):
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": SCHEMA_VERSION,
        "solution": solution,
        "task": False,
    }
    if points is not None:
        meta["points"] = points
    return meta


def exercise_points(nb, exercises, weighting: str = "one") -> dict[str, int]:
    """{exercise: points}: 1 each, or with ``weighting="stars"`` the stars of the exercise's
    heading (``### Exercise 2.1: ... (★★, ~15 min)`` is worth 2), 1 where it has none."""
    points = {}
    for exercise in exercises:
        stars = 0
        if weighting == "stars":
            for cell in reversed(nb.cells[: exercise.solution_cell]):
                found = STARS.search(cell.source) if cell.cell_type == "markdown" else None
                if found:
                    stars = len(found.group(1))
                    break
        points[exercise.name] = stars or 1
    return points


def nbgrader_notebook(nb, path: Path | str, weighting: str = "one"):
    """A copy of a teacher's notebook with nbgrader's cell metadata and no outputs."""
    exercises = editions.find_exercises(nb, path)
    points = exercise_points(nb, exercises, weighting)
    solutions = {e.solution_cell: e.name for e in exercises}
    checkers = {e.checker_cell: e.name for e in exercises}
    source = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    for index, cell in enumerate(source.cells):
        if index in solutions:
            meta = _cell_metadata(f"solution_{solutions[index]}", solution=True)
        elif index in checkers:
            name = checkers[index]
            meta = _cell_metadata(f"check_{name}", grade=True, locked=True, points=points[name])
        else:
            meta = _cell_metadata(f"cell_{cell.id}", locked=True)
        cell.metadata["nbgrader"] = meta
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    grade_ids = [cell.metadata["nbgrader"]["grade_id"] for cell in source.cells]
    if len(set(grade_ids)) != len(grade_ids):
        raise editions.EditionError(f"{Path(path).name}: cell ids repeat; re-save the notebook")
    source.metadata.setdefault(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
    )
    return source


def read_teacher(path: Path):
    """A teacher's notebook, refused with a one-line EditionError when it is cut short (invalid
    JSON), older than nbformat 4.5 (cells without ids), or has a cell id twice. nbformat itself
    would silently give repeated ids new random ones on every read, so the released
    assignment's cell ids would change with every build."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise editions.EditionError(
            f"{path.name}: not a complete notebook (invalid JSON at line {err.lineno}: "
            f"{err.msg}); was it cut short? Restore it from git"
        ) from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list) or data.get("nbformat") != 4:
        raise editions.EditionError(f"{path.name}: not an nbformat 4 notebook")
    if data.get("nbformat_minor", 0) < 5 or not all(cell.get("id") for cell in cells):
        raise editions.EditionError(
            f"{path.name}: nbformat 4.{data.get('nbformat_minor', 0)} notebook whose cells have "
            "no ids; open and save it in Jupyter (nbformat 4.5 or newer gives each cell an id)"
        )
    seen = {}
    for index, cell in enumerate(cells):
        if cell["id"] in seen:
            raise editions.EditionError(
                f"{path.name}: cells {seen[cell['id']]} and {index} have the same id "
                f"{cell['id']!r}; give one of them a new id"
            )
        seen[cell["id"]] = index
    return nbformat.reads(json.dumps(data), as_version=4)


def nbgrader(course: Path, *args: str, cwd: Path | None = None) -> str:
    """Run one nbgrader command (from ``cwd``, default the course directory); its log on failure."""
    command = [sys.executable, "-m", "nbgrader", *args]
    done = subprocess.run(command, cwd=cwd or course, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"`nbgrader {' '.join(args)}` failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


def _require_nbgrader() -> str:
    try:
        import nbgrader
    except ImportError:
        raise SystemExit(
            "nbgrader is not installed: run `make assignments`, or "
            "`.venv/bin/pip install -e '.[teach]'`"
        ) from None
    # nbgrader runs the `alembic` command for its gradebook: the environment's scripts must be on
    # PATH even when this runs as .venv/bin/python without an activated environment.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    return nbgrader.__version__


def build(
    paths: list[Path],
    course: Path = COURSE_DIR,
    exchange: Path | None = None,
    weighting: str = "one",
) -> dict:
    """Write the course directory's config and source/, run generate_assignment.

    Returns {assignment id: (path, the teacher's notebook as read)}.

    Every notebook is converted before anything is written, so a malformed one leaves the course
    directory as it was.
    """
    teachers = {path.stem: (path, read_teacher(path)) for path in paths}
    sources = {
        name: nbgrader_notebook(nb, path, weighting) for name, (path, nb) in teachers.items()
    }
    version = _require_nbgrader()
    course.mkdir(parents=True, exist_ok=True)
    exchange = exchange or course / "exchange"
    exchange.mkdir(parents=True, exist_ok=True)
    config = CONFIG.format(
        version=version,
        root=str(course.resolve()),
        course_id=COURSE_ID,
        exchange=str(exchange.resolve()),
        timeout=CELL_TIMEOUT_S,
        stub="\n".join(editions.STUB_LINES),
        pattern=CANVAS_FILE_PATTERN,
    )
    (course / "nbgrader_config.py").write_text(config)
    grading_course.hidden_seed(course)  # made once, kept across rebuilds
    for assignment, nb in sources.items():
        folder = course / "source" / assignment
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
        nbgrader(course, "generate_assignment", assignment, "--force")
        _check_release_matches_student_edition(course, assignment, *teachers[assignment])
    return teachers


def _check_release_matches_student_edition(course: Path, assignment: str, path, teacher) -> None:
    """The released notebook is the student edition, cell for cell: one source, one stub."""
    student = editions.student_notebook(teacher, path)
    release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    ours = [cell.source for cell in student.cells]
    theirs = [cell.source for cell in release.cells]
    if ours != theirs:
        first = (
            next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            if len(ours) == len(theirs)
            else "count"
        )
        raise SystemExit(
            f"{assignment}: nbgrader's release differs from the student edition (cell {first})"
        )


def _solved(released, teacher, path) -> None:
    """Type the teacher's solutions into a released notebook, as a student who solved it would."""
    answers = {
        f"solution_{e.name}": teacher.cells[e.solution_cell].source
        for e in editions.find_exercises(teacher, path)
    }
    for cell in released.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            lines = answers[grade_id].split("\n")
            cell.source = "\n".join(
                line for line in lines if line.strip() not in (editions.BEGIN, editions.END)
            )


def autograde(
    assignment: str,
    course: Path = COURSE_DIR,
    library: str | None = None,
    workers: int | None = None,
    time_limit: float = grading.TIME_LIMIT_S,
) -> tuple[dict, list]:
    """Grade every submission of ``assignment`` where it cannot reach (tools/grading_course.py),
    then nbgrader's feedback. Returns ({student: verdicts or problem}, [(student, problem)])."""
    _require_nbgrader()
    (path,) = editions.select([assignment])
    teacher = read_teacher(path)
    exercises = editions.find_exercises(teacher, path)
    source = library if library is not None else ("HEAD" if _is_git_checkout() else "tree")
    _warn_if_library_changed(source)
    pristine = grading.PristineLibrary(None if source == "tree" else source)
    workers = workers or max(1, os.cpu_count() or 1)
    results = grading_course.grade_all(
        course, assignment, teacher, exercises, pristine, time_limit, workers
    )
    problems = grading_course.record(course, assignment, results, exercises)
    if results:
        nbgrader(course, "generate_feedback", assignment, "--force")
        grading_course.offline_math(course / "feedback", assignment)
    return results, problems


def _is_git_checkout() -> bool:
    done = subprocess.run(
        ["git", "-C", str(editions.ROOT), "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0 and done.stdout.strip() == "true"


def _warn_if_library_changed(source: str) -> None:
    """Grading uses the committed lora_np; say so when the working tree differs (an uncommitted
    change of yours, or a file a submission wrote)."""
    if source == "tree":
        return
    done = subprocess.run(
        ["git", "-C", str(editions.ROOT), "diff", "--name-only", source, "--", "lora_np"],
        capture_output=True,
        text=True,
    )
    changed = done.stdout.split()
    if changed:
        print(
            f"warning: grading with lora_np as committed ({source}); the working tree differs in "
            f"{', '.join(changed[:5])} (commit your change, or pass --library tree)",
            file=sys.stderr,
        )


def _print_grades(assignment: str, results: dict, problems: list) -> None:
    for student, result in sorted(results.items()):
        if isinstance(result, str):
            print(f"{assignment} {student}: NOT GRADED ({result})")
            continue
        score = sum(v.score or 0 for v in result)
        detail = ", ".join(
            f"{v.exercise} {v.score if v.score is not None else '?'}" for v in result
        )
        print(f"{assignment} {student}: {score:g} of {len(result)} ({detail})")
    for student, reason in problems:
        print(f"PROBLEM {assignment} {student}: {reason}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} submission(s) not graded: see problems.csv", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "autograde", "export", "ci"])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--course", type=Path, help="the nbgrader course directory")
    parser.add_argument(
        "--exchange", type=Path, help="a folder shared with students (default: COURSE/exchange)"
    )
    parser.add_argument(
        "--points", choices=["one", "stars"], default="one", help="build: points per exercise"
    )
    parser.add_argument("--library", help="lora_np to grade with: a git revision or 'tree'")
    parser.add_argument("--workers", type=int, help="submissions graded at once (default: cores)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=grading.TIME_LIMIT_S,
        help="seconds one exercise of one submission may take (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="export: the CSV")
    args = parser.parse_args(argv)
    paths = editions.select(args.notebooks)
    # 09 (From lora_np to PEFT) needs torch, transformers and PEFT, which the classroom does not
    # install: its exercises are checked under `make crosscheck` (nbval), not handed in or graded
    for path in [p for p in paths if notebook_requires.requirements(p)]:
        needs = ", ".join(notebook_requires.requirements(path))
        print(
            f"{path.name}: no assignment (it needs {needs}, which the classroom does not "
            "install; `make crosscheck` runs its exercises)",
            file=sys.stderr,
        )
        paths.remove(path)
    try:
        if args.command == "ci":
            import grading_ci  # it imports this module

            return grading_ci.ci(paths, args.course or CI_COURSE_DIR)
        if args.command == "export":
            rows = grading_course.export(args.course or COURSE_DIR, args.out)
            print(f"{args.out}: {rows} rows (an empty score is a submission not graded: see why)")
            return 0
        if args.command == "autograde":
            for path in paths if args.notebooks else []:
                results, problems = autograde(
                    path.stem, args.course or COURSE_DIR, args.library, args.workers,
                    args.time_limit,
                )  # fmt: skip
                _print_grades(path.stem, results, problems)
            if not args.notebooks:
                print("error: name the assignment(s) to grade", file=sys.stderr)
                return 2
            return 0
        course = args.course or COURSE_DIR
        for assignment in build(paths, course, args.exchange, args.points):
            print(f"{assignment}: release/{assignment}/{assignment}.ipynb")
        print(f"nbgrader course directory: {course} (see TEACHING.md)")
    except editions.EditionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
