"""Grade an nbgrader course directory's submissions with tools/grading.py, and record the result
where nbgrader's own tools read it.

``autograde`` takes the place of ``nbgrader autograde``, which trusts the notebook's own
checker cells (a submission can fake or patch them) and runs the whole notebook with the
teacher's permissions. Here, for each ``submitted/<student>/<assignment>/``:

- every exercise is graded in its own fresh process (tools/grading.py), submissions in parallel;
- the gradebook gets one score per checker cell (``check_<name>``) and the checker's message as
  the comment on the solution cell; a submission that cannot be graded gets no score, is marked
  "needs manual grading", and is listed in ``problems.csv`` with the reason;
- ``autograded/<student>/<assignment>/<assignment>.ipynb`` is the released notebook with the
  learner's graded code in the solution cells, each checker cell's output the verdict, and a
  first cell that sums the grade up (checker's message first), so that ``nbgrader
  generate_feedback`` and the formgrader show it.

``export`` writes ``grades.csv`` from the gradebook: a submission that could not be graded shows
an empty score and the reason, never 0.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grading  # noqa: E402

SEED_FILE = ".hidden_seed"  # the hidden cases' seed: private to the course directory
PROBLEMS = "problems.csv"
VERDICTS = "verdicts"


def hidden_seed(course: Path) -> int:
    """The course's private seed for hidden cases (made once; never released)."""
    path = course / SEED_FILE
    if not path.exists():
        path.write_text(f"{secrets.randbelow(2**31)}\n")
        path.chmod(0o600)
    return int(path.read_text())


def submissions(course: Path, assignment: str) -> dict[str, Path | None]:
    """{student id: their notebook (None: nothing to grade)} for ``assignment``."""
    found = {}
    for folder in sorted((course / "submitted").glob(f"*/{assignment}")):
        expected = folder / f"{assignment}.ipynb"
        notebooks = sorted(folder.glob("*.ipynb"))
        found[folder.parent.name] = (
            expected if expected.exists() else notebooks[0] if len(notebooks) == 1 else None
        )
    return found


def grade_all(
    course: Path,
    assignment: str,
    teacher,
    exercises,
    library: grading.PristineLibrary,
    time_limit: float = grading.TIME_LIMIT_S,
    workers: int = 2,
    students: set[str] | None = None,
) -> dict:
    """{student: list of Verdict, or the reason the submission cannot be graded} (of every
    student, or of ``students``)."""
    seed = hidden_seed(course)

    def one(item):
        student, path = item
        if path is None:
            return student, f"no notebook named {assignment}.ipynb in the submission"
        try:
            return student, grading.grade_submission(
                path, teacher, exercises, library, seed, time_limit
            )
        except grading.GradingProblem as err:
            return student, str(err)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = submissions(course, assignment)
        chosen = {s: p for s, p in found.items() if students is None or s in students}
        return dict(pool.map(one, chosen.items()))


def record(course: Path, assignment: str, results: dict, exercises) -> list[tuple[str, str]]:
    """Write scores, comments, autograded notebooks and problems.csv; returns the problems."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    problems = []
    # nbgrader's update_or_create_submission warns through SQLAlchemy for each new submission
    warnings.filterwarnings("ignore", category=SAWarning)
    with Gradebook(f"sqlite:///{(course / 'gradebook.db').resolve()}") as gradebook:
        for student, result in results.items():
            timestamp = _timestamp(course, student, assignment)
            gradebook.update_or_create_student(student)
            gradebook.update_or_create_submission(assignment, student, timestamp=timestamp)
            if isinstance(result, str):
                problems.append((student, result))
                result = [grading.Verdict(e.name, None, "not graded", result) for e in exercises]
            for verdict in result:
                if verdict.score is None and not any(p[0] == student for p in problems):
                    problems.append((student, f"{verdict.exercise}: {verdict.message}"))
                grade = gradebook.find_grade(
                    f"check_{verdict.exercise}", assignment, assignment, student
                )
                # a weighted exercise (build --points stars) is worth its points when it passes
                grade.auto_score = (
                    None if verdict.score is None else verdict.score * grade.max_score
                )
                grade.manual_score = None
                grade.needs_manual_grade = verdict.score is None
                comment = gradebook.find_comment(
                    f"solution_{verdict.exercise}", assignment, assignment, student
                )
                comment.auto_comment = verdict.message
            gradebook.db.commit()
            _write_autograded(course, assignment, student, source, result, timestamp)
    _write_problems(course, assignment, problems)
    return problems


def _timestamp(course: Path, student: str, assignment: str):
    path = course / "submitted" / student / assignment / "timestamp.txt"
    return path.read_text().strip() if path.exists() else None


def _write_autograded(course, assignment, student, source, verdicts, timestamp) -> None:
    nb = nbformat.from_dict(json.loads(nbformat.writes(source)))
    by_id = {}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        by_id[grade_id] = cell
    passed = sum(v.score or 0 for v in verdicts)
    lines = [f"## {passed} of {len(verdicts)} exercises passed", ""]
    if all(v.status == "not graded" for v in verdicts):
        reason = _escape(verdicts[0].message)
        lines = [f"## Not graded: {reason}", "", "Your teacher has been told.", ""]
        verdicts = []
    for verdict in verdicts:
        mark = "✓" if verdict.score else "✗"
        lines.append(f"- **{verdict.exercise}** {mark} {_escape(verdict.message)}")
        solution = by_id.get(f"solution_{verdict.exercise}")
        if solution is not None:
            solution.source = verdict.code or "# (no definition found in your notebook)"
        checker = by_id.get(f"check_{verdict.exercise}")
        if checker is not None:
            checker.outputs = [_output(verdict)]
    summary = nbformat.v4.new_markdown_cell("\n".join(lines))
    summary.metadata["nbgrader"] = {"grade": False, "solution": False, "locked": True}
    summary.metadata["nbgrader"].update(grade_id="grading_summary", schema_version=3, task=False)
    nb.cells.insert(0, summary)
    folder = course / "autograded" / student / assignment
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")
    if timestamp:
        (folder / "timestamp.txt").write_text(timestamp + "\n")
    (course / VERDICTS / assignment).mkdir(parents=True, exist_ok=True)
    (course / VERDICTS / assignment / f"{student}.json").write_text(
        json.dumps([v.__dict__ for v in verdicts], indent=1) + "\n"
    )


def _escape(text: str) -> str:
    return text.replace("\n", " ").replace("*", r"\*").replace("_", r"\_").replace("$", r"\$")


def _output(verdict: grading.Verdict):
    if verdict.score:
        return nbformat.v4.new_output("stream", name="stdout", text=verdict.message + "\n")
    if verdict.score is None:
        text = f"not graded: {verdict.message}"
        return nbformat.v4.new_output("stream", name="stderr", text=text + "\n")
    return nbformat.v4.new_output(
        "error", ename="ExerciseError", evalue=verdict.message, traceback=[verdict.message]
    )


def _write_problems(course: Path, assignment: str, problems) -> None:
    """problems.csv keeps other assignments' rows and replaces this one's."""
    path = course / PROBLEMS
    rows = []
    if path.exists():
        with path.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["assignment"] != assignment]
    rows += [{"assignment": assignment, "student_id": s, "reason": r} for s, r in problems]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["assignment", "student_id", "reason"])
        writer.writeheader()
        writer.writerows(rows)


def export(course: Path, out: Path) -> int:
    """grades.csv: one row per student and assignment; empty score and the reason where the
    submission could not be graded or is missing. Returns the number of rows."""
    from nbgrader.api import Gradebook

    problems = {}
    if (course / PROBLEMS).exists():
        with (course / PROBLEMS).open(newline="") as handle:
            for row in csv.DictReader(handle):
                problems[(row["assignment"], row["student_id"])] = row["reason"]
    fields = [
        "assignment", "student_id", "last_name", "first_name", "email", "timestamp",
        "seconds_late", "score", "max_score", "status", "reason",
    ]  # fmt: skip
    rows = []
    with Gradebook(f"sqlite:///{(course / 'gradebook.db').resolve()}") as gradebook:
        for assignment in gradebook.assignments:
            for student in gradebook.students:
                row = {
                    "assignment": assignment.name,
                    "student_id": student.id,
                    "last_name": student.last_name or "",
                    "first_name": student.first_name or "",
                    "email": student.email or "",
                    "max_score": f"{assignment.max_score:g}",
                }
                try:
                    sub = gradebook.find_submission(assignment.name, student.id)
                except Exception:  # nbgrader's MissingEntry: nothing handed in
                    rows.append(row | {"status": "missing"})
                    continue
                # a problem the teacher has since graded by hand (formgrader) counts as graded
                ungraded = any(n.needs_manual_grade for n in sub.notebooks)
                reason = problems.get((assignment.name, student.id)) if ungraded else None
                row |= {
                    "timestamp": sub.timestamp or "",
                    "seconds_late": f"{sub.total_seconds_late:g}",
                    "score": "" if ungraded else f"{sub.score:g}",
                    "status": "not graded" if ungraded else "graded",
                    "reason": reason or ("needs manual grading" if ungraded else ""),
                }
                rows.append(row)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


# ------------------------------------------------------------------ feedback with offline math

MATHJAX_BLOCK = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
MATHJAX_CONFIG = (
    "<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], "
    "displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']], processEscapes: true}, "
    "svg: {fontCache: 'global'}};</script>"
)


def _tex_svg() -> str | None:
    """MathJax 3's tex-svg bundle (glyphs drawn as SVG paths: no font files to fetch), from the
    pinned tarball tools/build_site.py uses; None when it cannot be had (no npm, offline)."""
    import tarfile

    import build_site

    try:
        tarball = build_site._mathjax_tarball()
    except (SystemExit, OSError, subprocess.CalledProcessError) as err:
        print(f"warning: no MathJax for offline feedback ({err})", file=sys.stderr)
        return None
    with tarfile.open(tarball, "r:gz") as archive:
        return archive.extractfile("package/es5/tex-svg.js").read().decode()


def offline_math(feedback: Path, assignment: str) -> int:
    """Make every feedback page of ``assignment`` typeset its math with no network: nbgrader's
    template loads MathJax 2 from a CDN; this puts MathJax 3 inside the page instead (about
    2 MB each). Returns the number of pages changed (0 when MathJax is not at hand)."""
    pages = sorted(feedback.glob(f"*/{assignment}/*.html"))
    bundle = _tex_svg() if pages else None
    if bundle is None:
        return 0
    inline = MATHJAX_CONFIG + "<script>" + bundle.replace("</script", "<\\/script") + "</script>"
    for page in pages:
        html = page.read_text(encoding="utf-8")
        page.write_text(MATHJAX_BLOCK.sub(lambda _: inline, html, count=1), encoding="utf-8")
    return len(pages)
