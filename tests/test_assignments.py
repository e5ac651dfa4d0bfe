"""tools/assignments.py without nbgrader: the teacher's notebooks it refuses with a one-line
error before writing anything, and grades.csv/problems.csv helpers of tools/grading_course.py."""

from __future__ import annotations

import json
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
