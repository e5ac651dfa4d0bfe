"""tools/nbval_edition.py: the student edition with the outputs nbval expects of it, the one
execution of the course that `make test` makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import editions  # noqa: E402
import nbval_edition  # noqa: E402

from lora_np.checks._run_all import unsolved_line  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "editions_demo.ipynb"
NBVAL = [
    *("--nbval", "--nbval-current-env", "--nbval-sanitize-with"),
    str(ROOT / "tools" / "nbval_sanitize.cfg"),
    *("-q", "-p", "no:cacheprovider"),
]


def read(path):
    return nbformat.read(path, as_version=4)


def test_its_cells_are_the_student_editions_and_its_outputs_the_stored_ones():
    teacher = read(FIXTURE)
    edition = nbval_edition.nbval_notebook(teacher, FIXTURE)
    student = editions.student_notebook(teacher, FIXTURE, run_all=True)
    assert [c.source for c in edition.cells] == [c.source for c in student.cells]
    # the checker cells expect the unsolved line; every other code cell the stored output
    assert edition.cells[4].outputs == [
        nbformat.v4.new_output("stream", name="stderr", text=unsolved_line("99.1", "double") + "\n")
    ]
    assert unsolved_line("99.2", "row_norms") in edition.cells[9].outputs[0].text
    for index in (1, 3, 6, 8, 10):
        assert edition.cells[index].outputs == teacher.cells[index].outputs
        assert edition.cells[index].execution_count == teacher.cells[index].execution_count
    assert "nbval-ignore-output" not in edition.cells[6].metadata.get("tags", [])


def test_a_cell_that_takes_either_answer_and_prints_nothing_else_is_not_compared():
    teacher = read(FIXTURE)
    teacher.cells[6].source = 'double = ln.checks.passing_or_reference(double, "double")'
    teacher.cells[6].outputs = []
    edition = nbval_edition.nbval_notebook(teacher, FIXTURE)
    assert edition.cells[6].metadata["tags"] == ["nbval-ignore-output"]


def _nbval(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *NBVAL, str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
    )


def test_nbval_passes_the_untouched_edition_and_fails_a_changed_expectation(tmp_path):
    """The fixture's edition runs green under nbval (stubs unsolved, library answers used, the
    stored outputs reproduced); an expected unsolved line or a stored output that differs fails."""
    good = tmp_path / "good"
    nbval_edition.write([FIXTURE], good)
    ran = _nbval(good)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    cases = {"checker": (4, "99.1", "99.9"), "stored": (6, "doubled:", "tripled:")}
    for label, (index, old, new) in cases.items():
        folder = tmp_path / label
        nbval_edition.write([FIXTURE], folder)
        path = folder / FIXTURE.name
        nb = read(path)
        output = nb.cells[index].outputs[0]
        assert old in output.text
        output.text = output.text.replace(old, new)
        nbformat.write(nb, path)
        ran = _nbval(folder)
        assert ran.returncode != 0, f"{label}: nbval passed a changed expectation"


def test_the_notebooks_conftest_comes_along(tmp_path):
    """So a notebook whose packages are missing (09) is left out as in `make test`."""
    nbval_edition.write([FIXTURE], tmp_path / "out")
    copied = (tmp_path / "out" / "conftest.py").read_bytes()
    assert copied == (editions.NOTEBOOKS / "conftest.py").read_bytes()
