"""The two editions (tools/editions.py, tools/run_edition.py): the exercise convention is kept,
the teacher's edition shows every checker passing, the student edition runs to the end, marking
each exercise the learner has still to do, and runs green once they are solved.

Runs on the course notebooks and on ``fixtures/editions_demo.ipynb``, a tiny notebook with two
exercises, so the tools are proven even while the course has few exercises. The run tests
execute every selected notebook twice (untouched and solved), one per core in parallel; `-k 02`
runs one notebook (00, 02 and 04 together: 50 s on the shared course machine).
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import assignments  # noqa: E402
import editions  # noqa: E402
import run_edition  # noqa: E402
import study_times  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "editions_demo.ipynb"
NOTEBOOKS = [*editions.select([]), FIXTURE]
IDS = [path.stem for path in NOTEBOOKS]


def read(path: Path):
    return nbformat.read(path, as_version=4)


def with_source(index: int, source: str, cell_type: str = "code"):
    """The fixture with cell ``index`` replaced by a new cell holding ``source``."""
    nb = read(FIXTURE)
    make = nbformat.v4.new_code_cell if cell_type == "code" else nbformat.v4.new_markdown_cell
    nb.cells[index] = make(source)
    return nb


# ---------------------------------------------------------------- the convention, every notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_follows_the_exercise_convention(path):
    """Markers balanced and inside the function; each solution followed by its one-statement
    checker of that function; no use of the function below before `passing_or_reference`."""
    editions.find_exercises(read(path), path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_teacher_edition_stores_each_checkers_success_line(path):
    """Strict nbval re-runs the teacher's edition and compares with these stored outputs, so a
    stored success line means the checker passes on the solution."""
    nb = read(path)
    for exercise in editions.find_exercises(nb, path):
        outputs = nb.cells[exercise.checker_cell].outputs
        texts = [output.get("text", "") for output in outputs]
        success = editions.SUCCESS_LINE.pattern.format(name=exercise.name)
        assert len(outputs) == 1 and outputs[0].output_type == "stream", (
            f"{editions.where(path, nb, exercise.checker_cell)}: expected one printed line, "
            f"found {[output.output_type for output in outputs]}"
        )
        assert re.fullmatch(success + r"\n?", texts[0]), (
            f"{editions.where(path, nb, exercise.checker_cell)}: stored output {texts[0]!r} is "
            f"not the checker's success line"
        )


def test_fixture_has_its_two_exercises():
    found = editions.find_exercises(read(FIXTURE), FIXTURE)
    assert [(e.name, e.solution_cell, e.checker_cell) for e in found] == [
        ("double", 3, 4),
        ("row_norms", 8, 9),
    ]


# ---------------------------------------------------------------- the student edition, on paper


def test_student_edition_stubs_solutions_and_clears_outputs():
    teacher = read(FIXTURE)
    before = copy.deepcopy(teacher)
    student = editions.student_notebook(teacher, FIXTURE)
    assert teacher == before, "the teacher's notebook must not change"
    assert [cell.id for cell in student.cells] == [cell.id for cell in teacher.cells]
    for index, (old, new) in enumerate(zip(teacher.cells, student.cells)):
        if new.cell_type == "code":
            assert new.outputs == [] and new.execution_count is None, f"cell {index}"
        if index not in (3, 8):
            assert new.source == old.source, f"cell {index} changed"
    stub = student.cells[8].source.splitlines()
    assert stub == [
        "def row_norms(M):",
        '    """Euclidean norm of each row: M (n, k) -> (n,)."""',
        "    # YOUR CODE HERE",
        "    raise NotImplementedError()",
    ]
    assert "SOLUTION" not in nbformat.writes(student)
    assert "np.sqrt" not in student.cells[8].source


def test_stub_keeps_code_around_the_marked_region():
    source = (
        "def f(x):\n"
        '    """Doc."""\n'
        "    y = x + 1  # given\n"
        "    ### BEGIN SOLUTION\n"
        "    for i in range(3):\n"
        "        y = y * 2\n"
        "    ### END SOLUTION\n"
        "    return y"
    )
    assert editions.solution_function(source, "here") == "f"
    assert editions.stub_source(source).splitlines() == [
        "def f(x):",
        '    """Doc."""',
        "    y = x + 1  # given",
        "    # YOUR CODE HERE",
        "    raise NotImplementedError()",
        "    return y",
    ]


MALFORMED = {
    "begin without end": (
        3,
        "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x",
        "unbalanced markers",
    ),
    "end without begin": (
        3,
        "def double(x):\n    return 2 * x\n    ### END SOLUTION",
        "unbalanced markers",
    ),
    "nested begin": (
        3,
        "def double(x):\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    return 2 * x\n"
        "    ### END SOLUTION",
        "unbalanced markers",
    ),
    "markers at the top level": (
        3,
        "def double(x):\n    y = 2 * x\n### BEGIN SOLUTION\n    return y\n### END SOLUTION",
        "outside the body of `double`",
    ),
    "markers before the docstring": (
        3,
        'def double(x):\n    ### BEGIN SOLUTION\n    """Doc."""\n    return 2 * x\n'
        "    ### END SOLUTION",
        "outside the body of `double`",
    ),
    "markers deeper than the body": (
        3,
        "def double(x):\n    if True:\n        ### BEGIN SOLUTION\n        return 2 * x\n"
        "        ### END SOLUTION",
        "outside the body of `double`",
    ),
    "code beside the function": (
        3,
        "scale = 2\n\n\ndef double(x):\n    ### BEGIN SOLUTION\n    return scale * x\n"
        "    ### END SOLUTION",
        "holds only the function",
    ),
    "a marker that is not exactly one": (
        3,
        "def double(x):\n    # BEGIN SOLUTION here\n    return 2 * x\n    ### END SOLUTION",
        "a marker is a line of its own",
    ),
    "markers in markdown": (2, "### BEGIN SOLUTION\ntext\n### END SOLUTION", "code cell"),
    "checker with two statements": (
        4,
        "ln.checks.check_double(double)\nprint('done')",
        "exactly one statement",
    ),
    "checker inside another call": (4, "print(ln.checks.check_double(double))", "one statement"),
    "checker of another name": (4, "ln.checks.check_row_norms(double)", "checks `row_norms`"),
    "checker of another function": (4, "ln.checks.check_double(row_norms)", "with `row_norms`"),
    "no checker after the solution": (4, "print(double(1.0))", "followed by its checker"),
    "use before rebinding": (
        6,
        'print(double(2.0))\ndouble = ln.checks.passing_or_reference(double, "double")',
        "uses `double` before rebinding",
    ),
    "defined above the exercise": (1, "def double(x):\n    return x + x", "above its exercise"),
}


CLASS_SOLUTION = (
    "class Counter:\n"
    '    """Doc."""\n'
    "\n"
    "    def __init__(self, start):\n"
    '        """Start counting at `start`."""\n'
    "        ### BEGIN SOLUTION\n"
    "        self.count = start\n"
    "        ### END SOLUTION\n"
    "\n"
    "    def step(self):\n"
    "        ### BEGIN SOLUTION\n"
    "        self.count += 1\n"
    "        return self\n"
    "        ### END SOLUTION"
)


def test_a_class_exercise_stubs_each_method_and_keeps_the_class():
    assert editions.solution_function(CLASS_SOLUTION, "here") == "Counter"
    stub = editions.stub_source(CLASS_SOLUTION)
    assert "self.count" not in stub
    namespace = {}
    exec(stub, namespace)  # the class still defines; each method raises when called
    with pytest.raises(NotImplementedError):
        namespace["Counter"](0)
    assert stub.count("raise NotImplementedError()") == 2


def test_a_class_exercise_is_checked_by_its_snake_case_checker():
    assert editions.checks_name("value", "Value")
    assert editions.checks_name("lora_linear", "LoRALinear")
    assert editions.checks_name("merge", "merge")
    assert not editions.checks_name("values", "Value")
    assert not editions.checks_name("Merge", "merge")  # a function's checker is its exact name


@pytest.mark.parametrize(
    "source",
    [
        CLASS_SOLUTION.replace('    """Doc."""\n', '    """Doc."""\n    ### BEGIN SOLUTION\n', 1),
        CLASS_SOLUTION.replace(
            "        self.count = start\n        ### END SOLUTION\n", "", 1
        ).replace("    def step(self):\n        ### BEGIN SOLUTION\n", "    def step(self):\n"),
    ],
    ids=["a marker in the class body", "a region spanning two methods"],
)
def test_a_class_exercise_keeps_its_markers_inside_methods(source):
    with pytest.raises(editions.EditionError, match="outside the body"):
        editions.solution_function(source, "here")


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_notebook_is_refused_naming_notebook_and_cell(case):
    index, source, message = MALFORMED[case]
    cell_type = "markdown" if case == "markers in markdown" else "code"
    nb = with_source(index, source, cell_type)
    with pytest.raises(editions.EditionError) as err:
        editions.student_notebook(nb, FIXTURE)
    assert message in str(err.value)
    assert str(err.value).startswith("editions_demo.ipynb cell ")


def test_a_checker_without_its_solution_is_refused():
    nb = read(FIXTURE)
    nb.cells.insert(1, nbformat.v4.new_code_cell("ln.checks.check_double(double)"))
    with pytest.raises(editions.EditionError, match="right after the solution cell"):
        editions.find_exercises(nb, FIXTURE)


def test_rebinding_and_unrelated_cells_are_accepted():
    nb = read(FIXTURE)
    # a later cell may shadow the name with something else, or never use it
    nb.cells.append(nbformat.v4.new_code_cell("double = 3\nprint(double)"))
    assert len(editions.find_exercises(nb, FIXTURE)) == 2


def test_write_student_edition_keeps_learners_work_and_writes_nothing_when_refusing(tmp_path):
    out = tmp_path / "student"
    assert editions.write_student_edition([FIXTURE], out) == ["editions_demo.ipynb: written"]
    target = out / FIXTURE.name
    assert editions.write_student_edition([FIXTURE], out) == ["editions_demo.ipynb: up to date"]
    edited = target.read_text().replace("# YOUR CODE HERE", "return 2 * x  # mine")
    target.write_text(edited)
    (line,) = editions.write_student_edition([FIXTURE], out)
    assert "KEPT" in line and target.read_text() == edited
    editions.write_student_edition([FIXTURE], out, force=True)
    assert "# mine" not in target.read_text()

    broken = tmp_path / "00_broken.ipynb"
    nbformat.write(with_source(4, "ln.checks.check_double(double); print(1)"), broken)
    before = sorted(path.name for path in out.iterdir())
    with pytest.raises(editions.EditionError, match="00_broken.ipynb cell 4"):
        editions.write_student_edition([FIXTURE, broken], out, force=True)
    assert sorted(path.name for path in out.iterdir()) == before


def test_command_line_refuses_with_a_clear_error(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(with_source(4, "x = 1\nln.checks.check_double(double)"), folder / "00_x.ipynb")
    monkeypatch.setattr(editions, "NOTEBOOKS", folder)
    monkeypatch.setattr(editions, "select", lambda patterns: sorted(folder.glob("*.ipynb")))
    assert editions.main(["student", "--out", str(tmp_path / "out")]) == 1
    assert "error: 00_x.ipynb cell 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- nbgrader's source, on paper


def test_nbgrader_source_marks_solutions_checkers_and_locks_the_rest():
    teacher = read(FIXTURE)
    source = assignments.nbgrader_notebook(teacher, FIXTURE)
    assert "nbgrader" not in nbformat.writes(teacher), "the stored notebook must stay plain"
    meta = [cell.metadata["nbgrader"] for cell in source.cells]
    assert meta[3] | {} == {
        "grade": False,
        "grade_id": "solution_double",
        "locked": False,
        "schema_version": 3,
        "solution": True,
        "task": False,
    }
    assert meta[4]["grade"] and meta[4]["locked"] and not meta[4]["solution"]
    assert (meta[4]["points"], meta[4]["grade_id"]) == (1, "check_double")
    assert meta[9]["grade_id"] == "check_row_norms"
    others = [m for i, m in enumerate(meta) if i not in (3, 4, 8, 9)]
    assert all(m["locked"] and not m["grade"] and not m["solution"] for m in others)
    grade_ids = [m["grade_id"] for m in meta]
    assert len(set(grade_ids)) == len(grade_ids)
    assert all(cell.outputs == [] for cell in source.cells if cell.cell_type == "code")
    assert source.cells[3].source == teacher.cells[3].source  # nbgrader strips the solution


def test_solved_submission_has_the_solutions_without_markers():
    teacher = read(FIXTURE)
    released = editions.student_notebook(teacher, FIXTURE)
    for index, cell in enumerate(assignments.nbgrader_notebook(teacher, FIXTURE).cells):
        released.cells[index].metadata["nbgrader"] = cell.metadata["nbgrader"]
    assignments._solved(released, teacher, FIXTURE)
    assert "return 2 * x" in released.cells[3].source
    assert "SOLUTION" not in released.cells[3].source + released.cells[8].source
    assert "NotImplementedError" not in released.cells[8].source


# ---------------------------------------------------------------- study times


def test_study_time_counts_reading_and_exercise_minutes():
    time = study_times.study_time(read(FIXTURE))
    assert (time["exercises"], time["exercise_minutes"]) == (2, 7)
    assert time["total_minutes"] % 5 == 0 and time["total_minutes"] >= 7


def test_readme_and_teaching_state_the_current_study_times(capsys):
    """README.md and TEACHING.md carry the table tools/study_times.py computes."""
    assert study_times.main(["--check"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- the student edition, executed


# The untouched student edition is executed by make test as strict nbval against the stored
# outputs (tools/nbval_edition.py, tests/test_nbval_edition.py): Run All reaches the end and each
# checker prints its "✗ Exercise NN.M not solved yet" line. Here, the edition with every solution
# typed in (a further execution of the course: .ci/run).


@pytest.fixture(scope="module")
def student_run(request, tmp_path_factory):
    """Build the solved student edition of the selected notebooks and run them all once, in
    parallel: {("solved", name): (path, Run)}."""
    paths = sorted(
        {
            item.callspec.params["path"]
            for item in request.session.items
            if getattr(item, "originalname", "") == "test_solved_student_edition_runs_green"
        }
    )
    solved = run_edition.write_solved(paths, tmp_path_factory.mktemp("solved"))
    results = run_edition.run_all(solved)
    return {("solved", p.name): (p, results[p]) for p in solved}


@pytest.mark.solved_edition  # a second execution of the course: .ci/run, not make test
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solved_student_edition_runs_green(student_run, path):
    """With the solutions typed in: no cell raises, every checker prints its success line and
    no cell falls back to the library."""
    solved, run = student_run["solved", path.name]
    found = run_edition.problems(solved, run, solved=True)
    assert not found, "\n".join(found)


def test_run_all_marks_only_the_student_editions_checkers():
    """The teacher's edition and nbgrader's release (``run_all=False``) call the checker bare,
    so an unsolved exercise fails there; ``make student`` wraps it in ``mark_unsolved``."""
    teacher = read(FIXTURE)
    plain = editions.student_notebook(teacher, FIXTURE)
    marked = editions.student_notebook(teacher, FIXTURE, run_all=True)
    assert plain.cells[4].source == teacher.cells[4].source == "ln.checks.check_double(double)"
    assert marked.cells[4].source.endswith(
        'with mark_unsolved("99.1", "double"):\n    ln.checks.check_double(double)'
    )
    assert "from lora_np.checks._run_all import mark_unsolved" in marked.cells[4].source
    assert [cell.source for i, cell in enumerate(marked.cells) if i not in (4, 9)] == [
        cell.source for i, cell in enumerate(plain.cells) if i not in (4, 9)
    ]
    record = marked.metadata["lora_np"]["exercises"]
    assert [(e["name"], e["number"]) for e in record] == [("double", "99.1"), ("row_norms", "99.2")]


def test_exercise_numbers_take_one_style():
    nb = read(FIXTURE)
    nb.cells[2].source = nb.cells[2].source.replace("99.1", "7.1")
    nb.cells[7].source = "No heading here."
    found = editions.find_exercises(nb, FIXTURE)
    assert editions.exercise_numbers(nb, "03_x.ipynb", found) == ["07.1", "03.2"]


def test_a_wrong_answer_still_stops_the_student_edition(tmp_path):
    teacher = read(FIXTURE)
    student = editions.solved_notebook(teacher, FIXTURE)
    student.cells[3].source = student.cells[3].source.replace("2 * x", "x + 2")
    path = tmp_path / FIXTURE.name
    nbformat.write(student, path)
    run = run_edition.run_notebook(path)
    assert list(run.errors) == [4] and "did you add 2" in run.errors[4][1]


# ---------------------------------------------------------------- damaged files, interrupted writes


@pytest.mark.parametrize("keep", [0, 1, 200], ids=["empty", "one-byte", "truncated"])
def test_truncated_teacher_notebook_is_a_one_line_error(tmp_path, capsys, monkeypatch, keep):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    damaged = folder / "00_cut.ipynb"
    damaged.write_text(FIXTURE.read_text()[:keep])
    monkeypatch.setattr(editions, "select", lambda patterns: [damaged])
    for command in (["check"], ["student", "--out", str(tmp_path / "out")]):
        assert editions.main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("error: 00_cut.ipynb: not a readable notebook"), err
    assert not (tmp_path / "out").exists()


def test_truncated_manifest_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "student"
    editions.write_student_edition([FIXTURE], out)
    manifest = out / editions.MANIFEST
    manifest.write_text(manifest.read_text()[:10])
    before = (out / FIXTURE.name).read_text()
    monkeypatch.setattr(editions, "select", lambda patterns: [FIXTURE])
    assert editions.main(["student", "--out", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{manifest}: not a readable record" in err and "delete it" in err, err
    assert (out / FIXTURE.name).read_text() == before


class Interrupted(BaseException):
    """Stands in for Ctrl-C or a killed process in the middle of a write."""


def _interrupt_at(monkeypatch, at: int) -> list[int]:
    """Make the ``at``-th file write or rename of this process stop halfway (a write leaves
    the first half of its text behind, a rename does nothing)."""
    import os
    from pathlib import Path as P

    calls = [0]
    write_text, replace, rename = P.write_text, os.replace, os.rename

    def count() -> bool:
        calls[0] += 1
        return calls[0] == at

    def half_write(self, data, *args, **kwargs):
        if count():
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise Interrupted
        return write_text(self, data, *args, **kwargs)

    def stopped(real):
        def move(*args, **kwargs):
            if count():
                raise Interrupted
            return real(*args, **kwargs)

        return move

    monkeypatch.setattr(P, "write_text", half_write)
    monkeypatch.setattr(os, "replace", stopped(replace))
    monkeypatch.setattr(os, "rename", stopped(rename))
    return calls


@pytest.mark.parametrize("at", range(1, 7))
def test_an_interrupted_write_is_never_kept_as_the_learners_work(tmp_path, monkeypatch, at):
    """Stopped at any write (first edition or an update), the next run writes a whole notebook
    and never reports it as edited by the learner."""
    teacher = tmp_path / "99_demo.ipynb"
    teacher.write_text(FIXTURE.read_text())
    out = tmp_path / "student"
    editions.write_student_edition([teacher], out)
    nb = read(teacher)
    nb.cells[0].source += "\n\nA changed introduction."
    nbformat.write(nb, teacher)
    with monkeypatch.context() as patch:
        calls = _interrupt_at(patch, at)
        try:
            editions.write_student_edition([teacher], out)
        except Interrupted:
            pass
    if calls[0] < at:
        pytest.skip(f"the update made only {calls[0]} writes")
    (line,) = editions.write_student_edition([teacher], out)
    assert "KEPT" not in line, line
    written = read(out / teacher.name)
    assert written.cells[0].source.endswith("A changed introduction.")
    assert sorted(p.name for p in out.iterdir()) == [editions.MANIFEST, teacher.name]


HIDDEN = {
    "in a %%time cell": "%%time\ndef double(x):\n    return 2 * x",
    "through exec": 'exec("def double(x):\\n    return 2 * x")',
    "through globals()": 'globals()["double"] = lambda x: 2 * x',
    "through setattr": 'import sys\nsetattr(sys.modules["__main__"], "double", abs)',
    "with a line magic": "%matplotlib inline\ndouble = lambda x: 2 * x",
}


@pytest.mark.parametrize("case", HIDDEN, ids=list(HIDDEN))
def test_a_solution_hidden_above_its_exercise_is_refused(case):
    nb = with_source(1, read(FIXTURE).cells[1].source + "\n")
    nb.cells.insert(2, nbformat.v4.new_code_cell(HIDDEN[case]))
    with pytest.raises(editions.EditionError, match="above its exercise"):
        editions.student_notebook(nb, FIXTURE)


def test_solution_text_elsewhere_never_reaches_the_student_edition():
    nb = read(FIXTURE)
    solution = nb.cells[8].source
    body = solution.split(editions.BEGIN)[1].split(editions.END)[0]
    # a timing cell that repeats the solution's lines under another name
    nb.cells.insert(2, nbformat.v4.new_code_cell("%%timeit -n1\ndef slow(M):" + body))
    with pytest.raises(editions.EditionError, match="solution of `row_norms`"):
        editions.student_notebook(nb, FIXTURE)
