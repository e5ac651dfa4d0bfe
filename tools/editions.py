"""One source, two editions: the stored notebooks are the teacher's, ``make student`` writes the
student's.

In the teacher's edition (``notebooks/NN_*.ipynb``) each exercise is a code cell that holds only
the function the learner writes, its body between a line ``### BEGIN SOLUTION`` and a line
``### END SOLUTION`` (nbgrader's markers), followed by a checker cell that is exactly
``ln.checks.check_<name>(<name>)``. Cells further down that need a working function first rebind
it with ``<name> = ln.checks.passing_or_reference(<name>, "<name>")``.

This module reads that structure, refuses a malformed notebook (naming the notebook and the
cell), and writes the student edition: every marked region replaced by a stub that raises
``NotImplementedError`` (the same stub nbgrader writes), outputs and execution counts cleared,
everything else unchanged.

Usage::

    python tools/editions.py student [NN ...] [--out build/student] [--force]
    python tools/editions.py check [NN ...]     # structure only, writes nothing

``student`` keeps a notebook the learner has edited since it was written (it says so); ``--force``
replaces those too.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import notebook_requires
from edition_files import (  # a sibling script: reading and writing the files safely
    EditionError,
    read_manifest,
    read_notebook,
    save_manifest,
    write_atomic,
)
from edition_files import digest as _digest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STUDENT_DIR = ROOT / "build" / "student"
COURSE_GLOB = "[0-9][0-9]_*.ipynb"

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# nbgrader treats any line containing these words as a marker, so this module does too.
MARKER_WORDS = ("BEGIN SOLUTION", "END SOLUTION")
# nbgrader's default Python stub; tools/assignments.py configures nbgrader with the same lines,
# so a released assignment and the student edition carry the same code.
STUB_LINES = ("# YOUR CODE HERE", "raise NotImplementedError()")
# What lora_np.checks prints on success and says about a stub (lora_np/checks/_harness.py:
# `passed` and `call`); the edition tests read stored and fresh outputs with these.
SUCCESS_LINE = re.compile(r"✓ {name}: all \d+ checks passed")
NOT_WRITTEN = "{name} is not written yet"
MANIFEST = ".edition.json"
# A heading that names an exercise: "### Exercise 2.3: merging" or "Exercise 02.3".
EXERCISE_HEADING = re.compile(r"^#{1,6}[ \t]+Exercise[ \t]+(\d+)\.(\d+)\b", re.MULTILINE)
# The student edition's checker cells import mark_unsolved from here (see run_all_checker).
RUN_ALL_MODULE = "lora_np.checks._run_all"
UNSOLVED_LINE = "✗ Exercise {number} not solved yet"
# A path that climbs out of notebooks/ only works there, not from the student edition's folder;
# notebooks locate their data through the installed package instead.
PARENT_PATH = re.compile(r"""["'](\.\./[^"']*)["']""")


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function's name, its solution cell and its checker cell (indices)."""

    name: str
    solution_cell: int
    checker_cell: int
    number: str = ""  # "02.3", recorded in the student edition


def where(path: Path | str, nb, index: int) -> str:
    """'02_lora_layer.ipynb cell 14 ("def merge(W0, A, B, scaling):")', for error messages."""
    lines = nb.cells[index].source.strip().splitlines()
    first = lines[0] if lines else ""
    return f"{Path(path).name} cell {index} ({first[:60]!r})"


def marker_lines(source: str) -> list[tuple[int, str, str]]:
    """(line index, marker, indentation) for every line that nbgrader would read as a marker."""
    found = []
    for number, line in enumerate(source.split("\n")):
        if any(word in line for word in MARKER_WORDS):
            found.append((number, line.strip(), line[: len(line) - len(line.lstrip())]))
    return found


def _parse(source: str, place: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as err:
        raise EditionError(f"{place}: not valid Python ({err.msg}, line {err.lineno})") from None


def solution_function(source: str, place: str) -> str | None:
    """The name of the function (or class) a solution cell defines, or None when the cell has
    no markers.

    A class exercise (the learner writes a class, e.g. notebook 00's ``Value``) holds one
    ``class`` whose methods carry the markers in their bodies, so the student edition keeps
    the class and each method's signature and docstring, and every stubbed method raises.

    Raises EditionError when the markers are malformed or unbalanced, when the cell holds more
    than the one function or class, or when a marker is not at the level of a function's body
    (after its docstring).
    """
    markers = marker_lines(source)
    if not markers:
        return None
    for number, text, _ in markers:
        if text not in (BEGIN, END):
            raise EditionError(
                f"{place}: line {number + 1} reads {text!r}; a marker is a line of its own, "
                f"exactly {BEGIN!r} or {END!r}"
            )
    tree = _parse(source, place)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef | ast.ClassDef):
        kinds = ", ".join(type(node).__name__ for node in tree.body) or "nothing"
        raise EditionError(
            f"{place}: a cell with solution markers holds only the function (one `def`) or "
            f"the class (one `class`); found {kinds}"
        )
    defined = tree.body[0]
    functions = (
        [defined]
        if isinstance(defined, ast.FunctionDef)
        else [node for node in defined.body if isinstance(node, ast.FunctionDef)]
    )
    expected, opened_in = BEGIN, None
    for number, text, indent in markers:
        if text != expected:
            problem = "nested or repeated" if text == BEGIN else "without a BEGIN above it"
            raise EditionError(
                f"{place}: unbalanced markers: {text!r} on line {number + 1} is {problem}"
            )
        function = next(
            (f for f in functions if f.lineno <= number + 1 <= _last_line(f, source)), None
        )
        inside = function is not None and _in_body(function, number + 1, indent)
        if not inside or (text == END and function is not opened_in):
            owner = f"`{function.name}`" if function is not None else "a function"
            raise EditionError(
                f"{place}: {text!r} on line {number + 1} is outside the body of {owner}: put "
                "the markers inside the function, after its docstring, indented like its body"
            )
        opened_in = function
        expected = END if text == BEGIN else BEGIN
    if expected == END:
        raise EditionError(f"{place}: unbalanced markers: {BEGIN!r} has no {END!r} below it")
    return defined.name


def _last_line(function: ast.FunctionDef, source: str) -> int:
    """The last line of ``function``, including comment lines (a marker) that close its body:
    up to the line before the next statement at the function's own indentation or less."""
    lines = source.split("\n")
    last = function.end_lineno
    for number in range(function.end_lineno, len(lines)):  # 0-based index = 1-based line + 1
        line = lines[number]
        if line.strip() and len(line) - len(line.lstrip()) <= function.col_offset:
            break
        last = number + 1
    return last


def _in_body(function: ast.FunctionDef, line: int, indent: str) -> bool:
    """Whether a marker on ``line`` with ``indent`` sits in ``function``'s body, after its
    docstring, at the body's indentation."""
    body = function.body
    has_docstring = (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    header_end = body[0].end_lineno if has_docstring else function.lineno
    return indent == " " * body[0].col_offset and line > header_end


def checks_name(suffix: str, name: str) -> bool:
    """Whether ``check_<suffix>`` is the checker of exercise ``name``: the same name, or for a
    class its name in lower case with any underscores (``check_value`` for ``Value``,
    ``check_lora_linear`` for ``LoRALinear``), as ``check_Value`` would read oddly."""
    return suffix == name or (name[:1].isupper() and suffix.replace("_", "") == name.lower())


def stub_source(source: str) -> str:
    """``source`` with every marked region replaced by the stub, indented like its markers."""
    out, inside = [], False
    for line in source.split("\n"):
        text = line.strip()
        if text == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub for stub in STUB_LINES)
            inside = True
        elif text == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def checker_call(source: str, place: str) -> tuple[str, str] | None:
    """(checker suffix, argument name) of a checker cell, or None when the cell calls no checker.

    A checker cell is exactly one statement ``<x>.checks.check_<name>(<name>)``; a cell that calls
    a checker and does anything else is refused, since nbgrader grades the whole cell.
    """
    if "check_" not in source:
        return None
    tree = _parse(source, place)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("check_")
        and isinstance(node.func.value, ast.Attribute | ast.Name)
        and (getattr(node.func.value, "attr", None) or getattr(node.func.value, "id", ""))
        == "checks"
    ]
    if not calls:
        return None
    statement = tree.body[0] if len(tree.body) == 1 else None
    call = calls[0]
    if (
        len(calls) != 1
        or not isinstance(statement, ast.Expr)
        or statement.value is not call
        or len(call.args) != 1
        or call.keywords
        or not isinstance(call.args[0], ast.Name)
    ):
        raise EditionError(
            f"{place}: a checker cell holds exactly one statement, "
            f"`ln.checks.check_<name>(<name>)`; found {_brief(source)!r}"
        )
    return call.func.attr[len("check_") :], call.args[0].id


def _brief(source: str, limit: int = 70) -> str:
    text = " ".join(line.strip() for line in source.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _binds(statement: ast.stmt, name: str) -> bool:
    """Whether a top-level statement (re)defines ``name``: def, import, assignment."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return statement.name == name
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return any((alias.asname or alias.name.split(".")[0]) == name for alias in statement.names)
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
        for node in ast.walk(statement)
    )


def _binds_dynamically(statement: ast.stmt, name: str) -> bool:
    """Whether a statement may define ``name`` behind Python's back: ``exec`` of code that
    defines it, or ``globals()``/``setattr``/``vars()`` with the name as a string."""
    for node in ast.walk(statement):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called not in _DYNAMIC:
            continue
        for text in _strings(statement):
            if text == name:
                return True
            try:
                inner = ast.parse(text)
            except SyntaxError:
                continue
            if any(_binds(s, name) or _binds_dynamically(s, name) for s in inner.body):
                return True
    return False


def _strings(statement: ast.stmt) -> list[str]:
    return [
        node.value
        for node in ast.walk(statement)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _loads(statement: ast.stmt, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)
        for node in ast.walk(statement)
    )


def _is_rebinding(statement: ast.stmt, name: str) -> bool:
    """``name = <x>.passing_or_reference(name, "name")`` (or the bare function)."""
    if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
        return False
    target, value = statement.targets[0], statement.value
    if not (isinstance(target, ast.Name) and target.id == name and isinstance(value, ast.Call)):
        return False
    func = value.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    args = value.args
    return (
        called == "passing_or_reference"
        and len(args) == 2
        and isinstance(args[0], ast.Name)
        and args[0].id == name
        and isinstance(args[1], ast.Constant)
        and args[1].value == name
    )


# Cell magics whose body is Python run in the notebook's namespace (``%%time`` defines names).
PYTHON_CELL_MAGICS = ("time", "timeit", "capture", "prun", "debug")
# Calls that can bind a name given as a string: exec("def f..."), setattr(module, "f", ...).
_DYNAMIC = ("exec", "eval", "compile", "setattr", "globals", "locals", "vars", "__import__")


def python_source(source: str) -> str | None:
    """The Python a code cell runs, with IPython's magic and shell lines blanked, or None when
    the cell is not Python (``%%bash``, ``%%html``...). The body of ``%%time`` and its kin is
    Python run in the notebook's namespace, so it is kept."""
    lines = source.split("\n")
    first = lines[0].strip() if lines else ""
    if first.startswith("%%"):
        magic = first[2:].split()[0] if first[2:].split() else ""
        if magic not in PYTHON_CELL_MAGICS:
            return None
        lines = [""] + lines[1:]
    # A blanked line keeps the line numbers of error messages right.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def _code_statements(nb, path, indices):
    """(cell index, top-level statements) of the Python code cells at ``indices``."""
    for index in indices:
        cell = nb.cells[index]
        if cell.cell_type == "code":
            python = python_source(cell.source)
            if python is not None:
                yield index, _parse(python, where(path, nb, index)).body


def find_exercises(nb, path: Path | str) -> list[Exercise]:
    """Every exercise of a notebook, checked against the convention (EditionError otherwise).

    Checks: markers well formed, balanced and inside the function's body; the cell right after
    a solution is its checker, one statement checking that function; every checker follows its
    solution; no exercise name twice; no code cell above a solution defines that name (the
    learner would see a finished version first); no cell below the checker uses the name before
    rebinding it with ``passing_or_reference``.
    """
    exercises: list[Exercise] = []
    paired_checkers: set[int] = set()
    for index, cell in enumerate(nb.cells):
        place = where(path, nb, index)
        if cell.cell_type != "code":
            if marker_lines(cell.source):
                raise EditionError(f"{place}: solution markers belong in a code cell")
            continue
        name = solution_function(cell.source, place)
        if name is None:
            continue
        following = index + 1
        checked = None
        if following < len(nb.cells) and nb.cells[following].cell_type == "code":
            checked = checker_call(nb.cells[following].source, where(path, nb, following))
        if checked is None:
            raise EditionError(
                f"{place}: the solution of `{name}` must be followed by its checker cell, "
                f"`ln.checks.check_{name}({name})`"
            )
        if checked[1] != name or not checks_name(checked[0], name):
            raise EditionError(
                f"{where(path, nb, following)}: checks `{checked[0]}` with `{checked[1]}`, but "
                f"the cell above defines `{name}`: write "
                f"`ln.checks.check_{name if name[:1].islower() else name.lower()}({name})`"
            )
        if any(exercise.name == name for exercise in exercises):
            raise EditionError(f"{place}: `{name}` is an exercise twice in this notebook")
        exercises.append(Exercise(name, index, following))
        paired_checkers.add(following)

    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and index not in paired_checkers:
            checked = checker_call(cell.source, where(path, nb, index))
            if checked is not None:
                raise EditionError(
                    f"{where(path, nb, index)}: a checker cell must come right after the "
                    f"solution cell of `{checked[0]}`"
                )
    for exercise in exercises:
        _check_visibility(nb, path, exercise)
    _check_solution_text(nb, path, exercises)
    return exercises


def _code_lines(text: str) -> list[str]:
    """The lines of ``text`` that carry code: stripped, without blanks and comments."""
    lines = (line.strip() for line in text.split("\n"))
    return [line for line in lines if line and not line.startswith("#")]


def marked_regions(source: str) -> list[list[str]]:
    """The code lines of each marked region of a solution cell (see :func:`_code_lines`)."""
    regions, current = [], None
    for line in source.split("\n"):
        if line.strip() == BEGIN:
            current = []
        elif line.strip() == END and current is not None:
            regions.append(_code_lines("\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return regions


def _contains(lines: list[str], run: list[str]) -> bool:
    return any(lines[i : i + len(run)] == run for i in range(len(lines) - len(run) + 1))


def _check_solution_text(nb, path, exercises: list[Exercise]) -> None:
    """No cell of the student edition repeats a solution: every line of a marked region, in
    order, in another cell (a timing copy, a markdown "answer") would hand the learner the
    answer the stub hides. A one-line solution is too short to tell from ordinary code."""
    solutions = {exercise.solution_cell: exercise for exercise in exercises}
    shown = [
        _code_lines(stub_source(cell.source) if index in solutions else cell.source)
        for index, cell in enumerate(nb.cells)
    ]
    for exercise in exercises:
        for region in marked_regions(nb.cells[exercise.solution_cell].source):
            if len(region) < 2:
                continue
            for index, lines in enumerate(shown):
                if _contains(lines, region):
                    raise EditionError(
                        f"{where(path, nb, index)}: repeats the solution of `{exercise.name}` "
                        f"(cell {exercise.solution_cell}), which the student edition would show"
                    )


def _check_visibility(nb, path, exercise: Exercise) -> None:
    name = exercise.name
    for index, statements in _code_statements(nb, path, range(exercise.solution_cell)):
        if any(
            _binds(statement, name) or _binds_dynamically(statement, name)
            for statement in statements
        ):
            raise EditionError(
                f"{where(path, nb, index)}: defines `{name}` above its exercise (cell "
                f"{exercise.solution_cell}), so the learner would see it done before writing it"
            )
    later = range(exercise.checker_cell + 1, len(nb.cells))
    for index, statements in _code_statements(nb, path, later):
        for statement in statements:
            if _is_rebinding(statement, name) or (
                _binds(statement, name) and not _loads(statement, name)
            ):
                return
            if _loads(statement, name):
                raise EditionError(
                    f"{where(path, nb, index)}: uses `{name}` before rebinding it; start with "
                    f'`{name} = ln.checks.passing_or_reference({name}, "{name}")` so the cell '
                    "still runs while the exercise is unsolved"
                )


def exercise_numbers(nb, path: Path | str, exercises: list[Exercise]) -> list[str]:
    """Each exercise's number in the one style of the course, ``NN.M`` ("02.3"): from the
    nearest markdown heading between the previous exercise and its solution that names one
    ("Exercise 2.3" or "02.3"), else the notebook's number and the exercise's place in it."""
    prefix = Path(path).name[:2]
    numbers, after = [], -1
    for place, exercise in enumerate(exercises, start=1):
        number = f"{prefix}.{place}" if prefix.isdigit() else str(place)
        for index in range(exercise.solution_cell - 1, after, -1):
            cell = nb.cells[index]
            match = EXERCISE_HEADING.search(cell.source) if cell.cell_type == "markdown" else None
            if match:
                number = f"{int(match.group(1)):02d}.{int(match.group(2))}"
                break
        numbers.append(number)
        after = exercise.checker_cell
    return numbers


def run_all_checker(source: str, number: str, name: str) -> str:
    """The student edition's checker cell: the teacher's call inside ``mark_unsolved``, so Run
    All goes past an exercise not yet started and still stops on a wrong answer."""
    return (
        f"# Until you write `{name}`, this marks Exercise {number} unsolved and Run All goes on;\n"
        "# a wrong answer stops here with the checker's message.\n"
        f"from {RUN_ALL_MODULE} import mark_unsolved\n"
        "\n"
        f'with mark_unsolved("{number}", "{name}"):\n'
        f"    {source.strip()}"
    )


def student_notebook(nb, path: Path | str, run_all: bool = False):
    """The student edition of a teacher's notebook (a new notebook; ``nb`` is not changed).

    With ``run_all`` (what ``make student`` writes) each checker cell is wrapped by
    :func:`run_all_checker`; without it the checker cells are the teacher's, as in nbgrader's
    release, where an unsolved exercise must fail its grade cell.
    """
    exercises = find_exercises(nb, path)
    solutions = {exercise.solution_cell for exercise in exercises}
    numbers = exercise_numbers(nb, path, exercises)
    checkers = {}
    if run_all:
        checkers = {e.checker_cell: (n, e.name) for e, n in zip(exercises, numbers)}
    student = copy.deepcopy(nb)
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        if index in solutions:
            cell.source = stub_source(cell.source)
            _parse(cell.source, where(path, student, index))  # the stub must stay valid Python
        if index in checkers:
            cell.source = run_all_checker(cell.source, *checkers[index])
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    ids = [cell.get("id") for cell in nb.cells]
    if not all(ids) or len(set(ids)) != len(ids):
        raise EditionError(f"{Path(path).name}: cells need unique ids (nbformat 4.5); re-save it")
    # The run check and nbgrader find the exercises again by cell id, even if cells are added.
    student.metadata["lora_np"] = {
        "edition": "student",
        "source": _source_name(Path(path)),
        "run_all": run_all,
        "exercises": [
            {
                "name": e.name,
                "number": number,
                "solution": ids[e.solution_cell],
                "checker": ids[e.checker_cell],
            }
            for e, number in zip(exercises, numbers)
        ],
    }
    return student


def parent_paths(nb, path: Path | str) -> list[str]:
    """Warnings for code cells that read a path relative to ``notebooks/`` (``"../x"``)."""
    return [
        f"warning: {where(path, nb, index)} reads {match.group(1)!r} relative to notebooks/; "
        "it will not be found from the student edition's folder"
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for match in PARENT_PATH.finditer(cell.source)
    ]


def _source_name(path: Path) -> str:
    """Where the teacher's notebook is: relative to the repository when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def recorded_exercises(student, path: Path | str) -> list[Exercise]:
    """The exercises a student notebook records (made by :func:`student_notebook`), with the
    current indices of their cells."""
    record = student.metadata.get("lora_np", {})
    if record.get("edition") != "student":
        raise EditionError(f"{Path(path).name}: not a student edition made by tools/editions.py")
    index = {cell.get("id"): number for number, cell in enumerate(student.cells)}
    missing = [
        e["name"] for e in record["exercises"] if not {e["solution"], e["checker"]} <= set(index)
    ]
    if missing:
        raise EditionError(
            f"{Path(path).name}: the cells of exercise(s) {', '.join(missing)} have been deleted"
        )
    return [
        Exercise(e["name"], index[e["solution"]], index[e["checker"]], e.get("number", ""))
        for e in record["exercises"]
    ]


def solved_notebook(nb, path: Path | str):
    """The student edition as a learner who solved every exercise leaves it: the Run All
    checker cells, and in each solution cell the teacher's solution without its markers."""
    student = student_notebook(nb, path, run_all=True)
    for exercise in find_exercises(nb, path):
        lines = nb.cells[exercise.solution_cell].source.split("\n")
        student.cells[exercise.solution_cell].source = "\n".join(
            line for line in lines if line.strip() not in (BEGIN, END)
        )
    return student


def select(patterns: list[str], folder: Path = NOTEBOOKS) -> list[Path]:
    """The course notebooks named by numbers or names (all of them when empty), sorted; those
    that need packages this environment lacks are left out with a line on stderr."""
    course = sorted(folder.glob(COURSE_GLOB))
    if not patterns:
        return notebook_requires.runnable(course, say=_say)
    chosen = set()
    for pattern in patterns:
        stem = f"{int(pattern):02d}_" if pattern.isdigit() else Path(pattern).stem
        matches = [path for path in course if path.stem == stem or path.name.startswith(stem)]
        if not matches:
            known = ", ".join(path.name for path in course) or "none"
            raise SystemExit(f"no notebook in {folder} matches {pattern!r} (found: {known})")
        chosen.update(matches)
    return notebook_requires.runnable(sorted(chosen), say=_say)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def write_student_edition(
    paths: list[Path], out: Path = STUDENT_DIR, force: bool = False
) -> list[str]:
    """Write the student edition of ``paths`` into ``out``; returns one line per notebook.

    Every notebook is converted before anything is written, so a malformed one leaves ``out``
    as it was. A notebook the learner has changed since this tool wrote it is kept unless
    ``force``: ``make lab`` runs this, and must never throw a learner's work away.

    Each file is written atomically, and the record (``.edition.json``) lists a notebook's new
    digest before the notebook is replaced: whenever the run stops, each notebook is one this
    tool wrote, and the next run replaces it instead of keeping it as the learner's.
    """
    converted = {}
    warnings = []
    for path in paths:
        teacher = read_notebook(path)
        warnings += parent_paths(teacher, path)
        student = student_notebook(teacher, path, run_all=True)
        nbformat.validate(student)
        converted[path.name] = nbformat.writes(student) + "\n"
    manifest_path = out / MANIFEST
    manifest = read_manifest(manifest_path)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for name, text in converted.items():
        target = out / name
        written = manifest.get(name, [])
        digest = _digest(text)
        if target.exists() and not force:
            current = target.read_text(encoding="utf-8", errors="replace")
            if current == text:
                report.append(f"{name}: up to date")
                if written != [digest]:
                    manifest[name] = [digest]
                    save_manifest(manifest_path, manifest)
                continue
            if _digest(current) not in written:
                report.append(
                    f"{name}: KEPT, you have edited it (delete it, or run "
                    "`make student FORCE=1`, to get a fresh copy)"
                )
                continue
        manifest[name] = [*written, digest]  # the old and the new version are both ours
        save_manifest(manifest_path, manifest)
        write_atomic(target, text)
        manifest[name] = [digest]
        save_manifest(manifest_path, manifest)
        report.append(f"{name}: written")
    return report + warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["student", "check"])
    parser.add_argument("notebooks", nargs="*", help="numbers or names (default: all)")
    parser.add_argument("--out", type=Path, default=STUDENT_DIR, help="student edition folder")
    parser.add_argument("--force", action="store_true", help="replace notebooks you edited")
    args = parser.parse_args(argv)
    paths = select(args.notebooks)
    try:
        if args.command == "check":
            for path in paths:
                found = find_exercises(read_notebook(path), path)
                names = ", ".join(exercise.name for exercise in found) or "no exercises"
                print(f"{path.name}: {names}")
            return 0
        for line in write_student_edition(paths, args.out, args.force):
            print(line)
    except EditionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"student edition in {args.out} (open it with `make lab`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
