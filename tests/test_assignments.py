"""tools/assignments.py without nbgrader: the teacher's notebooks it refuses with a one-line
error before writing anything, and grades.csv/problems.csv helpers of tools/grading_course.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import assignments  # noqa: E402
import editions  # noqa: E402
import grading_course  # noqa: E402

NOTEBOOK = editions.select(["02"])[0]


def variant(tmp_path, change) -> Path:
    data = json.loads(NOTEBOOK.read_text())
    text = change(data)
    path = tmp_path / NOTEBOOK.name
    path.write_text(text if isinstance(text, str) else json.dumps(data))
    return path


def old_format(data):
    data["nbformat_minor"] = 4
    for cell in data["cells"]:
        cell.pop("id", None)


def repeated_id(data):
    data["cells"][5]["id"] = data["cells"][2]["id"]


def truncated(data):
    return json.dumps(data)[:3000]


@pytest.mark.parametrize(
    "change, message",
    [
        (old_format, "nbformat 4.4 notebook whose cells have no ids"),
        (repeated_id, "cells 2 and 5 have the same id"),
        (truncated, "not a complete notebook"),
    ],
    ids=["nbformat-4.4", "repeated-id", "truncated"],
)
def test_build_refuses_a_bad_teacher_notebook_in_one_line_writing_nothing(
    tmp_path, change, message
):
    path = variant(tmp_path, change)
    course = tmp_path / "course"
    with pytest.raises(editions.EditionError, match=message) as caught:
        assignments.build([path], course)
    assert "\n" not in str(caught.value)
    assert not course.exists()


def test_the_stored_notebooks_read_cleanly():
    for path in editions.select([]):
        assignments.read_teacher(path)


def test_submissions_are_found_by_folder_whatever_the_file_is_called(tmp_path):
    for student, name in [("ada", "02_lora_layer.ipynb"), ("bo", "renamed.ipynb"), ("cy", None)]:
        folder = tmp_path / "submitted" / student / "02_lora_layer"
        folder.mkdir(parents=True)
        if name:
            (folder / name).write_text("{}")
    found = grading_course.submissions(tmp_path, "02_lora_layer")
    assert found["ada"].name == "02_lora_layer.ipynb"
    assert found["bo"].name == "renamed.ipynb"
    assert found["cy"] is None


def test_problems_csv_replaces_only_this_assignments_rows(tmp_path):
    grading_course._write_problems(tmp_path, "00_autodiff", [("ada", "cut short")])
    grading_course._write_problems(tmp_path, "02_lora_layer", [("s-bob", "wrong notebook")])
    grading_course._write_problems(tmp_path, "02_lora_layer", [("cy", "no notebook")])
    text = (tmp_path / "problems.csv").read_text()
    assert "ada" in text and "cy" in text and "s-bob" not in text


def test_the_hidden_seed_is_made_once_and_kept_private(tmp_path):
    seed = grading_course.hidden_seed(tmp_path)
    assert grading_course.hidden_seed(tmp_path) == seed
    assert (tmp_path / grading_course.SEED_FILE).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "name, student, file_id",
    [
        ("doejane_12345_6789012_02_lora_layer.ipynb", "12345", "02_lora_layer"),
        ("doejane_LATE_12345_6789012_02_lora_layer.ipynb", "12345", "02_lora_layer"),
        ("smithbob_777_42_02_lora_layer-1.ipynb", "777", "02_lora_layer"),
        ("extracted/subs/doejane_12345_6789012_02_lora_layer.ipynb", "12345", "02_lora_layer"),
    ],
)
def test_the_canvas_pattern_reads_student_and_notebook_from_canvas_file_names(
    name, student, file_id
):
    found = re.match(assignments.CANVAS_FILE_PATTERN, name)
    assert found and (found["student_id"], found["file_id"]) == (student, file_id)


def test_the_canvas_pattern_skips_other_files():
    assert not re.match(assignments.CANVAS_FILE_PATTERN, "02_lora_layer.ipynb")
    assert not re.match(assignments.CANVAS_FILE_PATTERN, "doejane_12345_678_notes.txt")


def test_points_are_one_each_or_the_exercises_stars():
    teacher = assignments.read_teacher(NOTEBOOK)
    exercises = editions.find_exercises(teacher, NOTEBOOK)
    assert set(assignments.exercise_points(teacher, exercises).values()) == {1}
    stars = assignments.exercise_points(teacher, exercises, "stars")
    headings = "\n".join(c.source for c in teacher.cells if c.cell_type == "markdown")
    expected = [len(m) for m in re.findall(r"^#+\s*Exercise\b.*?\((★+)", headings, re.M)]
    assert list(stars.values()) == expected and max(expected) > 1
    source = assignments.nbgrader_notebook(teacher, NOTEBOOK, "stars")
    points = [c.metadata["nbgrader"].get("points") for c in source.cells]
    assert [p for p in points if p] == expected


def test_feedback_pages_get_math_inside_instead_of_a_cdn(tmp_path, monkeypatch):
    page = tmp_path / "ada" / "02_lora_layer" / "02_lora_layer.html"
    page.parent.mkdir(parents=True)
    cdn = '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js"></script>'
    page.write_text(
        f"<head><!-- Load mathjax -->{cdn}<!-- End of mathjax configuration --></head>"
        "<body>$W_0 + BA$</body>"
    )
    monkeypatch.setattr(grading_course, "_tex_svg", lambda: "var MJ = '</script>';")
    assert grading_course.offline_math(tmp_path, "02_lora_layer") == 1
    html = page.read_text()
    assert "cdnjs" not in html and "var MJ = '<\\/script>';" in html and "$W_0 + BA$" in html


# ---- tools/grading_ci.py: the notebooks graded without nbgrader's steps ---------------------


def test_the_pair_is_the_student_edition_untouched_and_with_the_solutions_typed_in():
    import grading_ci

    teacher = assignments.read_teacher(NOTEBOOK)
    pair = grading_ci.solved_and_untouched(teacher, NOTEBOOK)
    release = editions.student_notebook(teacher, NOTEBOOK)
    assert [c.source for c in pair["untouched"].cells] == [c.source for c in release.cells]
    exercises = editions.find_exercises(teacher, NOTEBOOK)
    solutions = {e.solution_cell for e in exercises}
    for index, (solved, given) in enumerate(zip(pair["solved"].cells, release.cells)):
        if index not in solutions:
            assert solved.source == given.source, index
            continue
        assert "NotImplementedError" in given.source and "SOLUTION" not in solved.source
        kept = [
            line
            for line in teacher.cells[index].source.split("\n")
            if line.strip() not in (editions.BEGIN, editions.END)
        ]
        assert solved.source.split("\n") == kept


def _grades_stubs_zero(path, teacher, exercises, library, seed, time_limit):
    """A stand-in for grading.grade_submission: 0 for a stubbed function, else 1."""
    import grading

    source = "".join(c.source for c in grading.read_notebook(path).cells)
    score = int("NotImplementedError" not in source)
    return [grading.Verdict(e.name, score, "graded", "" if score else "stub") for e in exercises]


def test_grade_pair_wants_full_marks_solved_and_zero_untouched(tmp_path, monkeypatch):
    import grading
    import grading_ci

    monkeypatch.setattr(grading, "grade_submission", _grades_stubs_zero)
    row, failures = grading_ci.grade_pair(NOTEBOOK, tmp_path / "ok")
    assert failures == [] and row.split()[:3] == [NOTEBOOK.stem, "3", "0"], (row, failures)

    def everyone_zero(*args):
        return [grading.Verdict(v.exercise, 0, "failed", "x") for v in _grades_stubs_zero(*args)]

    monkeypatch.setattr(grading, "grade_submission", everyone_zero)
    _, failures = grading_ci.grade_pair(NOTEBOOK, tmp_path / "broken")
    assert len(failures) == 1 and "solved: scored" in failures[0], failures


def test_the_classroom_ci_takes_the_case_notebooks_through_nbgrader():
    import grading_ci

    assert set(grading_ci.CASES_ON) <= set(grading_ci.NBGRADER_ON)
