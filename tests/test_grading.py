"""tools/grading.py: each exercise graded in a fresh process against a pristine lora_np, so that
honest work scores full marks, untouched work 0, and none of the known cheats scores at all.

Most cases grade a submission of notebook 02 (three exercises, a few seconds each); the
submissions are built from the student edition, as a learner would hand it in.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import editions  # noqa: E402
import grading  # noqa: E402

import lora_np as ln  # noqa: E402

NOTEBOOK = editions.select(["02"])[0]
TEACHER = nbformat.read(NOTEBOOK, as_version=4)
EXERCISES = editions.find_exercises(TEACHER, NOTEBOOK)
SEED = 424242


@pytest.fixture(scope="module")
def library():
    return grading.PristineLibrary(None)  # the working tree: what these tests are checking


def honest(name: str) -> str:
    """The teacher's solution of ``name`` without the markers, as a learner would type it."""
    (exercise,) = [e for e in EXERCISES if e.name == name]
    lines = TEACHER.cells[exercise.solution_cell].source.split("\n")
    return "\n".join(line for line in lines if line.strip() not in (editions.BEGIN, editions.END))


def submission(tmp_path, solutions=(), extra=(), edit=None) -> Path:
    """The student edition with ``solutions`` {name: source} typed in, ``extra`` (index, source)
    code cells inserted, and ``edit`` (a function of the notebook) applied; its path."""
    nb = editions.student_notebook(TEACHER, NOTEBOOK)
    solutions = dict(solutions)
    for exercise in EXERCISES:
        if exercise.name in solutions:
            nb.cells[exercise.solution_cell].source = solutions[exercise.name]
    for index, source in sorted(extra, reverse=True):
        nb.cells.insert(index, nbformat.v4.new_code_cell(source))
    if edit:
        edit(nb)
    path = tmp_path / f"{uuid.uuid4().hex[:8]}.ipynb"
    nbformat.write(nb, path)
    return path


def grade(path, library, only=None, **kwargs) -> dict:
    """{exercise: Verdict} of the submission at ``path``: every exercise, or those named in
    ``only`` (each exercise is a fresh process; a test about one needs only that one)."""
    exercises = [e for e in EXERCISES if only is None or e.name in only]
    verdicts = grading.grade_submission(path, TEACHER, exercises, library, SEED, **kwargs)
    return {v.exercise: v for v in verdicts}


ALL_SOLVED = {e.name: honest(e.name) for e in EXERCISES}


def scores(verdicts) -> dict:
    return {name: v.score for name, v in verdicts.items()}


def test_honest_work_scores_full_marks_and_untouched_zero(tmp_path, library):
    solved = grade(submission(tmp_path, ALL_SOLVED), library)
    assert scores(solved) == {e.name: 1 for e in EXERCISES}, solved
    assert "hidden cases" in solved["merge"].message
    untouched = grade(submission(tmp_path), library)
    assert scores(untouched) == {e.name: 0 for e in EXERCISES}
    assert "not written yet" in untouched["merge"].message


def test_cell_ids_metadata_and_duplicates_do_not_change_the_grade(tmp_path, library):
    def shuffle_ids_and_metadata(nb):
        for cell in nb.cells:
            cell.id = uuid.uuid4().hex[:8]  # another edition, or a re-saved notebook
            cell.metadata = {"nbgrader": {"solution": True}}  # edited: no grade_id
        nb.metadata = {}
        first = EXERCISES[0]
        nb.cells.insert(first.solution_cell, nbformat.from_dict(nb.cells[first.solution_cell]))

    path = submission(tmp_path, ALL_SOLVED, edit=shuffle_ids_and_metadata)
    assert scores(grade(path, library)) == {e.name: 1 for e in EXERCISES}


def test_a_helper_in_a_cell_of_its_own_is_graded_with_the_function(tmp_path, library):
    helper = "def _scaled(B, A, s):\n    return s * (B @ A)"
    merge = "def merge(W0, A, B, scaling):\n    return W0 + _scaled(B, A, scaling)"
    index = next(e for e in EXERCISES if e.name == "merge").solution_cell
    path = submission(tmp_path, {"merge": merge}, extra=[(index, helper)])
    assert grade(path, library, only={"merge"})["merge"].score == 1


CHEATS = {
    "returns the checker's reference": {
        "merge": "def merge(W0, A, B, scaling):\n"
        "    return ln.checks.layer.merge_reference(W0, A, B, scaling)"
    },
    "returns the reference through passing_or_reference": {
        "merge": "def merge(W0, A, B, scaling):\n"
        "    return ln.checks.passing_or_reference(None, 'merge')(W0, A, B, scaling)"
    },
    "uses the library's fused op": {
        "lora_forward": "def lora_forward(x, W0, b, A, B, scaling):\n"
        "    from lora_np import functional, Tensor\n"
        "    t = lambda a: None if a is None else Tensor(a)\n"
        "    return functional.lora_linear(t(x), t(W0), t(b), t(A), t(B), scaling).numpy()"
    },
    "returns a lazy object that asks the library later": {
        "merge": "def merge(W0, A, B, scaling):\n"
        "    class Lazy:\n"
        "        def __array__(self, dtype=None, copy=None):\n"
        "            return ln.checks.layer.merge_reference(W0, A, B, scaling)\n"
        "    return Lazy()"
    },
    "patches the checker module from inside the function": {
        "merge": "def merge(W0, A, B, scaling):\n"
        "    import lora_np.checks._harness as h, lora_np.checks.layer as l\n"
        "    h.compare = l.compare = lambda *a, **k: None\n"
        "    h.as_array = l.as_array = lambda v, *a, **k: np.zeros(a[-1])\n"
        "    return np.zeros_like(W0)"
    },
    "patches NumPy from inside the function": {
        "merge": "def merge(W0, A, B, scaling):\n"
        "    np.allclose = lambda *a, **k: True\n"
        "    return np.zeros_like(W0)"
    },
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_a_cheating_function_scores_zero(tmp_path, library, cheat):
    (name,) = CHEATS[cheat]
    verdicts = grade(submission(tmp_path, CHEATS[cheat]), library, only={name})
    assert verdicts[name].score == 0, verdicts[name]
    caught_by = "tampered" if "patches" in cheat else "used the library's answer"
    assert verdicts[name].status == caught_by, verdicts[name]


NOTEBOOK_CHEATS = {
    # each replaces what the notebook's checker cells would run; the grader runs none of it
    "replaces the checker": "ln.checks.check_merge = lambda fn: print('✓ merge: all 4 checks')",
    "rebinds ln": "import types\nln = types.SimpleNamespace(checks=types.SimpleNamespace("
    "check_merge=print, passing_or_reference=lambda f, n: f))",
    "wraps the checker in try/except": "try:\n    ln.checks.check_merge(merge)\n"
    "except Exception:\n    print('✓ merge: all 4 checks passed')",
}


@pytest.mark.parametrize("cheat", sorted(NOTEBOOK_CHEATS))
def test_a_notebook_cell_cannot_change_the_grade(tmp_path, library, cheat):
    index = next(e for e in EXERCISES if e.name == "merge").checker_cell
    path = submission(tmp_path, extra=[(index, NOTEBOOK_CHEATS[cheat])])
    assert grade(path, library, only={"merge"})["merge"].score == 0


def test_poisoning_the_library_on_disk_leaves_the_next_grade_unchanged(tmp_path, library):
    poison = (
        "def merge(W0, A, B, scaling):\n"
        "    import os, lora_np.checks as c\n"
        "    for path in (c.__file__,):\n"
        "        os.chmod(path, 0o644)\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('\\nfor _n in list(__all__):\\n'\n"
        "                    '    if _n.startswith(\"check_\"):\\n'\n"
        "                    '        globals()[_n] = lambda fn, quiet=False: None\\n')\n"
        "    return W0"
    )
    grade(submission(tmp_path, {"merge": poison}), library, only={"merge"})
    assert scores(grade(submission(tmp_path), library)) == {e.name: 0 for e in EXERCISES}


def test_hidden_cases_catch_a_function_tuned_to_the_visible_ones(tmp_path, library):
    seen = []

    def recording(W0, A, B, scaling):
        seen.append(hashlib.sha256(np.ascontiguousarray(W0).tobytes()).hexdigest())
        return W0 + scaling * (B @ A)

    ln.checks.check_merge(recording, quiet=True)
    tuned = (
        "def merge(W0, A, B, scaling):\n"
        "    import hashlib\n"
        f"    if hashlib.sha256(np.ascontiguousarray(W0).tobytes()).hexdigest() in {seen!r}:\n"
        "        return W0 + scaling * (B @ A)\n"
        "    return W0 + (B @ A)"
    )
    verdict = grade(submission(tmp_path, {"merge": tuned}), library, only={"merge"})["merge"]
    assert verdict.score == 0 and verdict.message.endswith("(hidden cases)"), verdict


def test_a_hanging_function_is_stopped_at_the_time_limit(tmp_path, library):
    hang = "def merge(W0, A, B, scaling):\n    while True:\n        pass"
    path = submission(tmp_path, {"merge": hang})
    verdict = grade(path, library, only={"merge"}, time_limit=5)["merge"]
    assert (verdict.score, verdict.status) == (0, "time limit")


@pytest.mark.parametrize("how", ["import os\n    os._exit(0)", "raise SystemExit(0)"])
def test_a_function_that_ends_python_scores_zero_with_a_reason(tmp_path, library, how):
    crash = f"def merge(W0, A, B, scaling):\n    {how}"
    verdicts = grade(submission(tmp_path, {**ALL_SOLVED, "merge": crash}), library)
    assert scores(verdicts) == {
        "lora_forward": 1,
        "lora_grads": 1,
        "inject": 1,
        "mark_only_lora_as_trainable": 1,
        "merge": 0,
        "LoRALinear": 1,
    }
    assert "merge" in verdicts["merge"].message


def test_top_level_code_of_the_learner_never_runs(tmp_path, library):
    crash = "import os\nos._exit(3)\n" + honest("merge")
    assert (
        grade(submission(tmp_path, {"merge": crash}), library, only={"merge"})["merge"].score == 1
    )


def test_an_ungradable_notebook_is_a_problem_not_a_zero(tmp_path, library):
    whole = submission(tmp_path, ALL_SOLVED)
    truncated = tmp_path / "truncated.ipynb"
    truncated.write_text(whole.read_text()[:5000])
    with pytest.raises(grading.GradingProblem, match="cut short"):
        grade(truncated, library)
    other = tmp_path / "other.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), other)
    with pytest.raises(grading.GradingProblem, match="none of this assignment's functions"):
        grade(other, library)


def test_a_solution_that_is_not_python_scores_zero_with_the_error(tmp_path, library):
    broken = "def merge(W0, A, B, scaling:\n    return W0"
    verdict = grade(submission(tmp_path, {"merge": broken}), library, only={"merge"})["merge"]
    assert (verdict.score, verdict.status) == (0, "invalid Python")
    assert "not valid Python" in verdict.message


def test_learner_definitions_keeps_only_definitions():
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%%time\nimport math\nx = 1\ndef merge(a):\n    return a"),
            nbformat.v4.new_code_cell("print('hi')\ndef merge(a):\n    return 2 * a"),
        ]
    )
    code = grading.learner_definitions(nb, "merge", known=set())
    assert "print" not in code and "x = 1" not in code and "%%time" not in code
    assert code.rstrip().endswith("return 2 * a") and "import math" in code


def test_learner_definitions_finds_a_class_exercise():
    """An exercise may be a class (notebook 00's Value): the cell that defines it is found."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import math\nclass Value:\n    pass"),
            nbformat.v4.new_code_cell("v = Value()\nclass Value:\n    data = 1.0"),
        ]
    )
    code = grading.learner_definitions(nb, "Value", known=set())
    assert code.rstrip().endswith("data = 1.0") and "v = Value()" not in code


def test_python_s_own_copy_caches_are_not_tampering():
    """copy.deepcopy writes ``__slotnames__`` on a class the first time it copies an instance;
    the checkers deep-copy the learner's model, so an honest 07 solution did this in CI."""
    import copy

    import grading_child

    before = grading_child.snapshot()
    for cls in (ln.nn.Embedding, ln.nn.Dropout, ln.lora.LoRALinear):
        cls.__dict__.get("__slotnames__") and delattr(cls, "__slotnames__")
    copy.deepcopy(ln.nn.Sequential(ln.nn.Embedding(4, 3), ln.nn.Dropout(0.1)))
    assert grading_child.tampered(before, grading_child.snapshot()) == []


# ---------------------------------------------------------------- a class as the answer

LAYER = """
class LoRALinear(ln.nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        d, k = base.weight.shape
        A = ln.backend.rng().uniform(-1 / math.sqrt(k), 1 / math.sqrt(k), size=(r, k))
        self.A = ln.nn.Parameter(A.astype(base.weight.data.dtype))
        self.B = ln.nn.Parameter(np.zeros((d, r), dtype=base.weight.data.dtype))
        self.r, self.alpha, self.scaling, self.merged = r, alpha, alpha / r, False

    def delta(self):
        return self.scaling * (self.B.data @ self.A.data)

    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)

    def merge(self):
        if self.merged:
            raise RuntimeError("merged")
        self.base.weight.data = self.base.weight.data + self.delta()
        self.merged = True

    def unmerge(self):
        self.base.weight.data = self.base.weight.data - self.delta()
        self.merged = False
"""
PRELUDE = ["import math", "import numpy as np", "import lora_np as ln", "from lora_np import lora"]


@pytest.mark.parametrize(
    "definitions, score, phrase",
    [
        (LAYER, 1, "LoRALinear: all"),
        ("class LoRALinear(lora.LoRALinear):\n    pass", 0, "builds on the library's LoRALinear"),
        (
            "def LoRALinear(*a, **k):\n"
            "    return ln.checks._harness._REGISTRY['LoRALinear'][1](*a, **k)",
            0,
            "library",
        ),
    ],
    ids=["honest-class", "library-subclass", "returns-reference"],
)
def test_a_class_answer_is_graded_as_a_class(library, definitions, score, phrase):
    verdict = grading.run_exercise(library, "LoRALinear", PRELUDE, definitions, hidden_seed=7)
    assert verdict.score == score and phrase in verdict.message, verdict


def test_a_class_exercise_is_graded_through_the_class_itself(tmp_path, library):
    """Notebook 00's Value is a class: the checker gets the learner's class (not a wrapper
    function), so honest work scores full marks and the untouched stub 0."""
    path = editions.select(["00"])[0]
    teacher = nbformat.read(path, as_version=4)
    exercises = [e for e in editions.find_exercises(teacher, path) if e.name == "Value"]
    nb = editions.student_notebook(teacher, path)
    for exercise in editions.find_exercises(teacher, path):  # every solution typed in
        lines = teacher.cells[exercise.solution_cell].source.split("\n")
        nb.cells[exercise.solution_cell].source = "\n".join(
            line for line in lines if line.strip() not in (editions.BEGIN, editions.END)
        )
    solved, untouched = tmp_path / "solved.ipynb", tmp_path / "untouched.ipynb"
    nbformat.write(nb, solved)
    nbformat.write(editions.student_notebook(teacher, path), untouched)
    (verdict,) = grading.grade_submission(solved, teacher, exercises, library, SEED)
    assert verdict.score == 1, verdict.message
    (verdict,) = grading.grade_submission(untouched, teacher, exercises, library, SEED)
    assert verdict.score == 0 and "not written yet" in verdict.message


def test_an_answer_built_on_an_unsolved_earlier_exercise_is_graded_on_its_own(tmp_path, library):
    """00's Value.backward calls the learner's topological_order (exercise 00.1). Left unsolved
    or wrong, the notebook goes on with the library's (`passing_or_reference`), and so does the
    grader: a correct Value scores 1 either way, while topological_order itself scores 0."""
    path = editions.select(["00"])[0]
    teacher = nbformat.read(path, as_version=4)
    exercises = [e for e in editions.find_exercises(teacher, path)]
    graded = [e for e in exercises if e.name in ("topological_order", "Value")]
    by_name = {e.name: e for e in exercises}
    assert by_name["topological_order"].solution_cell < by_name["Value"].solution_cell
    uses = "class Value:\n    def backward(self):\n        return topological_order(self)"
    earlier = grading.earlier_answers(teacher, by_name["Value"].solution_cell, "Value", uses)
    assert earlier == [
        "topological_order = ln.checks.passing_or_reference(topological_order, 'topological_order')"
    ]
    assert not grading.earlier_answers(teacher, by_name["Value"].solution_cell, "Value", "x = 1")
    assert not grading.earlier_answers(
        teacher, by_name["topological_order"].solution_cell, "x", uses
    )
    wrong_order = "def topological_order(root):\n    return [root]"
    for first in (None, wrong_order):  # the stub, then a wrong answer
        nb = editions.student_notebook(teacher, path)
        lines = teacher.cells[by_name["Value"].solution_cell].source.split("\n")
        nb.cells[by_name["Value"].solution_cell].source = "\n".join(
            line for line in lines if line.strip() not in (editions.BEGIN, editions.END)
        )
        if first:
            nb.cells[by_name["topological_order"].solution_cell].source = first
        submitted = tmp_path / f"{uuid.uuid4().hex[:8]}.ipynb"
        nbformat.write(nb, submitted)
        verdicts = grading.grade_submission(submitted, teacher, graded, library, SEED)
        assert [v.score for v in verdicts] == [0, 1], verdicts


def test_a_carried_answer_is_the_librarys_in_the_prelude():
    """`X = ln.checks.yours_or_reference("name")` above an exercise binds the library's answer
    (a submission holds one notebook); below it, or with any other call, nothing is bound."""
    teacher = nbformat.v4.new_notebook()
    teacher.cells = [
        nbformat.v4.new_code_cell('inject = ln.checks.yours_or_reference("inject")\nx = f(1)'),
        nbformat.v4.new_code_cell("def solved():\n    pass"),
        nbformat.v4.new_code_cell('later = ln.checks.yours_or_reference("merge")'),
    ]
    assert grading.teacher_prelude(teacher, 1, {1}) == ["inject = __carried__['inject']"]


def _graded(library, prelude, body):
    definitions = f"def merge(W0, A, B, scaling):\n{body}\n    return W0 + scaling * (B @ A)\n"
    return grading.run_exercise(
        library, "merge", ["import numpy as np", *prelude], definitions, SEED
    )


def test_a_carried_answer_reaches_the_learners_code_but_never_the_graded_exercise(library):
    uses = "    assert forward.__name__ == 'lora_forward_reference', forward"
    passed = _graded(library, ["forward = __carried__['lora_forward']"], uses)
    assert passed.score == 1, passed
    # the exercise's own reference is not carried, and the prelude's dict is gone afterwards
    own = _graded(library, ["forward = __carried__['merge']"], uses)
    assert own.score == 0 and "forward" in own.message, own
    peek = _graded(library, [], "    assert __carried__")
    assert peek.score == 0 and "__carried__" in peek.message, peek
