"""``tools/assignments.py ci``: the classroom path end to end, as .ci/run proves it.

Every notebook's solved and untouched submissions are graded (each exercise in a fresh process
against a pristine lora_np): the solved one must score full marks, the untouched one 0, each 0
with a reason. What differs between notebooks is the grading of their exercises (the prelude
taken from the teacher's notebook, what each checker is handed); nbgrader's own steps are the
same for every notebook. So the notebooks in NBGRADER_ON go through their own throwaway course
directory under ``build/nbgrader-ci/``: build, release through a local exchange folder, two
students fetch and submit (``solved``: the teacher's solutions typed into the released notebook;
``untouched``), collect, grade (``assignments.autograde``), feedback, ``grades.csv``; the others
are graded straight from their student edition, which ``make assignments`` (run before this in
.ci/run) has proven to be nbgrader's release of every notebook, cell for cell.

On the notebooks in CASES_ON (00, whose cheat the issue reported, and 02, three exercises) more
submissions are put into ``submitted/`` as a teacher's ``zip_collect`` would: each cheat of
issue 19 (must score 0 on every exercise); on 02 also the student edition, a duplicated cell,
edited cell metadata, a function that ends Python, one that hangs (each graded correctly, with a
message; the hang stopped at the time limit), and a notebook cut short (reported in
problems.csv, no score in grades.csv, still feedback). Then the solved and untouched
submissions are graded again, after all the others: the same scores (the poisoning submission
changed nothing that grades the next).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import assignments  # noqa: E402
import editions  # noqa: E402
import grading  # noqa: E402
import grading_course  # noqa: E402

CASES_ON = ("00_autodiff", "02_lora_layer")  # 00: the cheats; 02: the cheats and section 2
ALL_CASES_ON = "02_lora_layer"
# nbgrader's release, fetch, submit, collect, feedback and grades.csv, proven on the notebooks
# that carry the cases (each nbgrader command costs about 3 s of CPU; nine of them per notebook
# were most of this step's time).
NBGRADER_ON = CASES_ON
TIME_LIMIT_S = 20.0  # per exercise: the hanging submission costs this, not Execute.timeout
FULL, ZERO, PROBLEM = "full", "zero", "problem"


def _stub(name: str, body: str) -> str:
    return f"def {name}(*args, **kwargs):\n" + "\n".join("    " + ln for ln in body.split("\n"))


# the cheats of issue 19 section 1: (solution of each exercise, cells to add before checkers)
CHEATS = {
    "returns-reference": (
        lambda n: _stub(n, f"return ln.checks._harness._REGISTRY[{n!r}][1](*args, **kwargs)"),
        None,
    ),
    "replaces-checker": (
        lambda n: _stub(n, "return None"),
        lambda n: f"ln.checks.check_{n} = lambda fn, **kw: print('✓ {n}: all 5 checks passed')",
    ),
    "patches-checker-module": (
        lambda n: _stub(
            n,
            "import lora_np.checks._harness as h\n"
            "h.compare = lambda *a, **k: None\n"
            "h.passed = lambda *a, **k: None\n"
            "return None",
        ),
        lambda n: "import lora_np.checks._harness as h\nh.compare = lambda *a, **k: None",
    ),
    "rebinds-ln": (
        None,
        lambda n: (
            "import types\nln = types.SimpleNamespace(checks=types.SimpleNamespace("
            f"check_{n}=print, passing_or_reference=lambda f, name: f))"
        ),
    ),
    "try-except": (
        None,
        lambda n: (
            f"try:\n    ln.checks.check_{n}({n})\nexcept Exception:\n"
            f"    print('✓ {n}: all 5 checks passed')"
        ),
    ),
    "poisons-library": (
        lambda n: _stub(
            n,
            "import os, lora_np.checks as c\n"
            "os.chmod(c.__file__, 0o644)\n"
            "with open(c.__file__, 'a') as f:\n"
            "    f.write('\\nfor _n in list(__all__):\\n'\n"
            "            '    if _n.startswith(\"check_\"):\\n'\n"
            "            '        globals()[_n] = lambda fn, quiet=False: None\\n')\n"
            "return None",
        ),
        None,
    ),
}


def _released(course: Path, assignment: str):
    return nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)


def _cases(course: Path, assignment: str, path: Path, teacher) -> dict:
    """{student: (notebook or raw text, expected outcome, exercise expected to fail or None)}."""
    exercises = editions.find_exercises(teacher, path)
    first = exercises[0].name
    solved = _released(course, assignment)
    assignments._solved(solved, teacher, path)
    cases = {}
    for cheat, (solution, cell) in CHEATS.items():
        nb = _released(course, assignment)
        checker_ids = {f"check_{e.name}": e.name for e in exercises}
        for index in reversed(range(len(nb.cells))):
            grade_id = nb.cells[index].metadata.get("nbgrader", {}).get("grade_id", "")
            name = grade_id.removeprefix("solution_")
            if grade_id.startswith("solution_") and solution:
                nb.cells[index].source = solution(name)
            if grade_id in checker_ids and cell:
                nb.cells.insert(index, nbformat.v4.new_code_cell(cell(checker_ids[grade_id])))
            if grade_id in checker_ids and cheat == "try-except":
                nb.cells[index].source = CHEATS[cheat][1](checker_ids[grade_id])
        cases[cheat] = (nb, ZERO, None)
    student = editions.student_notebook(teacher, path)  # make student / make lab / the site
    for exercise in exercises:
        lines = teacher.cells[exercise.solution_cell].source.split("\n")
        student.cells[exercise.solution_cell].source = "\n".join(
            line for line in lines if line.strip() not in (editions.BEGIN, editions.END)
        )
    cases["student-edition"] = (student, FULL, None)
    duplicated = nbformat.from_dict(json.loads(nbformat.writes(solved)))
    index = _index(duplicated, f"solution_{first}")
    duplicated.cells.insert(index, nbformat.from_dict(duplicated.cells[index]))
    cases["duplicated-cell"] = (duplicated, FULL, None)
    edited = nbformat.from_dict(json.loads(nbformat.writes(solved)))
    for cell in edited.cells:
        cell.metadata.get("nbgrader", {}).pop("grade_id", None)
    cases["edited-metadata"] = (edited, FULL, None)
    for case, body in (
        ("ends-python", "import os\nos._exit(1)"),
        ("hangs", "while True:\n    pass"),
    ):
        nb = nbformat.from_dict(json.loads(nbformat.writes(solved)))
        nb.cells[_index(nb, f"solution_{first}")].source = _stub(first, body)
        nb.cells.insert(1, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
        cases[case] = (nb, FULL, first)
    whole = nbformat.writes(solved)
    cases["cut-short"] = (whole[: len(whole) // 2], PROBLEM, None)
    return cases


def _index(nb, grade_id: str) -> int:
    return next(
        i
        for i, c in enumerate(nb.cells)
        if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id
    )


def _hand_in(course: Path, assignment: str, student: str, notebook) -> None:
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    text = notebook if isinstance(notebook, str) else nbformat.writes(notebook)
    (folder / f"{assignment}.ipynb").write_text(text)
    (folder / "timestamp.txt").write_text("2026-12-05 12:00:00.000000 UTC\n")


def _scores(results: dict) -> dict:
    return {
        student: result if isinstance(result, str) else {v.exercise: v.score for v in result}
        for student, result in results.items()
    }


def _check(assignment, results, expected, n) -> list[str]:
    failures = []
    for student, (outcome, failing) in expected.items():
        result = results.get(student)
        if outcome == PROBLEM:
            if not isinstance(result, str):
                failures.append(f"{assignment} {student}: graded, expected a reported problem")
            continue
        if isinstance(result, str):
            failures.append(f"{assignment} {student}: not graded ({result})")
            continue
        got = {v.exercise: v.score for v in result}
        want = {v.exercise: int(outcome == FULL and v.exercise != failing) for v in result}
        if got != want or len(got) != n:
            failures.append(f"{assignment} {student}: scored {got}, expected {want}")
        for verdict in result:
            if verdict.score == 0 and not verdict.message:
                failures.append(f"{assignment} {student}: {verdict.exercise} 0 without a reason")
            if student == "hangs" and verdict.exercise == failing:
                if verdict.status != "time limit":
                    failures.append(f"{assignment} hangs: {verdict.status}, not the time limit")
    return failures


def grade_one(path: Path, course: Path) -> tuple[str, list[str]]:
    """One notebook through the whole classroom path in its own course directory."""
    start = time.perf_counter()
    ((assignment, (_, teacher)),) = assignments.build([path], course).items()
    exchange = str((course / "exchange").resolve())
    flags = [f"--Exchange.root={exchange}", f"--course={assignments.COURSE_ID}"]
    assignments.nbgrader(course, "release_assignment", assignment, "--force")
    for student in ("solved", "untouched"):
        home = course / "students" / student  # the student's own folder, elsewhere in real life
        home.mkdir(parents=True)
        assignments.nbgrader(course, "fetch_assignment", assignment, *flags, cwd=home)
        if student == "solved":
            target = home / assignment / f"{assignment}.ipynb"
            released = nbformat.read(target, as_version=4)
            assignments._solved(released, teacher, path)
            nbformat.write(released, target)
        assignments.nbgrader(course, "submit", assignment, *flags, f"--student={student}", cwd=home)
    assignments.nbgrader(course, "collect", assignment)
    n = len(editions.find_exercises(teacher, path))
    expected = {"solved": (FULL, None), "untouched": (ZERO, None)}
    if assignment in CASES_ON:
        cases = _cases(course, assignment, path, teacher)
        for student, (notebook, outcome, failing) in cases.items():
            if assignment == ALL_CASES_ON or student in CHEATS:
                _hand_in(course, assignment, student, notebook)
                expected[student] = (outcome, failing)
    workers = max(1, (os.cpu_count() or 2) // 2)
    results, _ = assignments.autograde(assignment, course, None, workers, TIME_LIMIT_S)
    failures = _check(assignment, results, expected, n)
    if assignment in CASES_ON:  # after the poisoning submission: the next grades unchanged
        teacher_nb = assignments.read_teacher(path)
        exercises = editions.find_exercises(teacher_nb, path)
        again = grading_course.grade_all(
            course,
            assignment,
            teacher_nb,
            exercises,
            grading.PristineLibrary("HEAD" if assignments._is_git_checkout() else None),
            TIME_LIMIT_S,
            workers,
            students={"solved", "untouched"},
        )
        first = {s: r for s, r in _scores(results).items() if s in again}
        if _scores(again) != first:
            failures.append(f"{assignment}: graded again, {_scores(again)} != {first}")
    failures += _check_outputs(course, assignment, expected)
    seconds = time.perf_counter() - start
    solved, untouched = (_total(results.get(s)) for s in ("solved", "untouched"))
    row = f"{assignment:<22} {solved:>7} {untouched:>10} {n:>4} {len(expected):>9} {seconds:>8.0f}"
    return row, failures


def solved_and_untouched(teacher, path: Path) -> dict:
    """{"solved": the student edition with the teacher's solutions typed in (markers dropped),
    "untouched": the student edition as released} for one teacher's notebook."""
    untouched = editions.student_notebook(teacher, path, run_all=False)
    solved = copy.deepcopy(untouched)
    for exercise in editions.find_exercises(teacher, path):
        lines = teacher.cells[exercise.solution_cell].source.split("\n")
        solved.cells[exercise.solution_cell].source = "\n".join(
            line for line in lines if line.strip() not in (editions.BEGIN, editions.END)
        )
    return {"solved": solved, "untouched": untouched}


def grade_pair(path: Path, folder: Path) -> tuple[str, list[str]]:
    """A notebook outside NBGRADER_ON: its solved and untouched submissions graded straight
    from the student edition (no nbgrader command), full marks and 0 expected."""
    start = time.perf_counter()
    teacher = assignments.read_teacher(path)
    exercises = editions.find_exercises(teacher, path)
    folder.mkdir(parents=True)
    library = grading.PristineLibrary("HEAD" if assignments._is_git_checkout() else None)
    results = {}
    for student, notebook in solved_and_untouched(teacher, path).items():
        submission = folder / student / path.name
        submission.parent.mkdir()
        nbformat.write(notebook, submission)
        try:
            results[student] = grading.grade_submission(
                submission,
                teacher,
                exercises,
                library,
                grading_course.hidden_seed(folder),
                TIME_LIMIT_S,
            )
        except grading.GradingProblem as err:
            results[student] = str(err)
    expected = {"solved": (FULL, None), "untouched": (ZERO, None)}
    failures = _check(path.stem, results, expected, len(exercises))
    seconds = time.perf_counter() - start
    solved, untouched = (_total(results.get(s)) for s in ("solved", "untouched"))
    n = len(exercises)
    row = f"{path.stem:<22} {solved:>7} {untouched:>10} {n:>4} {len(expected):>9} {seconds:>8.0f}"
    return row, failures


def _total(result) -> str:
    return (
        "-"
        if result is None or isinstance(result, str)
        else f"{sum(v.score or 0 for v in result):g}"
    )


def _check_outputs(course: Path, assignment: str, expected: dict) -> list[str]:
    """Feedback for every student; grades.csv: a score for each graded one, none (and the
    reason) for each problem."""
    failures = []
    for student in expected:
        feedback = course / "feedback" / student / assignment / f"{assignment}.html"
        if not feedback.exists():
            failures.append(f"{assignment}: no feedback for {student}")
        elif "cdnjs" in feedback.read_text():
            failures.append(f"{assignment}: {student}'s feedback loads MathJax from a CDN")
    out = course / "grades.csv"
    grading_course.export(course, out)
    with out.open(newline="") as handle:
        rows = {row["student_id"]: row for row in csv.DictReader(handle)}
    for student, (outcome, _) in expected.items():
        row = rows.get(student, {})
        if outcome == PROBLEM and (row.get("score") != "" or not row.get("reason")):
            failures.append(f"{assignment}: grades.csv shows {student} as {row}")
        if outcome != PROBLEM and row.get("score") in ("", None):
            failures.append(f"{assignment}: grades.csv has no score for {student}")
    return failures


def ci(paths: list[Path], course: Path, workers: int | None = None) -> int:
    """Every notebook through the classroom path (in parallel, one course directory each)."""
    start = time.perf_counter()
    shutil.rmtree(course, ignore_errors=True)
    workers = workers or max(1, min(len(paths), os.cpu_count() or 1))
    order = sorted(paths, key=lambda path: path.stem not in CASES_ON)  # the long ones first
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {
            path: pool.submit(
                grade_one if path.stem in NBGRADER_ON else grade_pair, path, course / path.stem
            )
            for path in order
        }
        results = [futures[path].result() for path in paths]
    header = f"{'assignment':<22} {'solved':>7} {'untouched':>10} {'max':>4} {'students':>9}"
    print(f"{header} {'seconds':>8}")
    failures = []
    for row, found in results:
        print(row)
        failures += found
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    print(
        f"classroom path: {len(paths)} assignments graded (through nbgrader: "
        f"{', '.join(p.stem for p in paths if p.stem in NBGRADER_ON) or 'none'}; cheats and "
        f"lost-work cases on {', '.join(CASES_ON)}), {workers} at a time, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return 1 if failures else 0
