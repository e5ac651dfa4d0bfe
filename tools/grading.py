"""Grading where the submission cannot reach: each exercise of each submission in a fresh process
against a pristine, read-only copy of ``lora_np`` (tools/grading_child.py does the checking).

What runs of a submission: only the top-level ``def``/``class``/``import`` statements of the
cells the learner wrote or changed, up to the last cell that defines the exercise's function;
never the rest of the notebook, never its checker cells. The cells are found by content (the
function's name), not by cell id or nbgrader metadata, so the student edition (``make
student``), the released assignment, a duplicated cell or edited metadata all grade the same.

A notebook that cannot be graded at all (unreadable, or none of the assignment's functions in
it) raises :class:`GradingProblem`, which the caller reports to the teacher by name, never as a
score of 0.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
TIME_LIMIT_S = 30.0  # per exercise; an honest checker run takes a few seconds
KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
NOBODY = 65534


class GradingProblem(Exception):
    """A submission that cannot be graded; the message says why, for the teacher and learner."""


@dataclass(frozen=True)
class Verdict:
    """One exercise's grade: score 1 or 0 (None: the grader itself failed), and why."""

    exercise: str
    score: int | None
    status: str
    message: str
    code: str = ""  # what was graded: the learner's definitions


def read_notebook(path: Path | str):
    """A notebook as nbformat 4, or GradingProblem naming what is wrong with the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise GradingProblem(f"{path.name}: cannot be read ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GradingProblem(
            f"{path.name}: not a complete notebook (invalid JSON at line {err.lineno}: "
            f"{err.msg}); was the file cut short?"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise GradingProblem(f"{path.name}: not a Jupyter notebook (no list of cells)")
    try:
        with warnings.catch_warnings():  # a duplicated cell's id: grading finds cells by content
            warnings.simplefilter("ignore")
            return nbformat.reads(text, as_version=4)
    except Exception as err:  # nbformat's errors vary by version
        raise GradingProblem(f"{path.name}: not a readable notebook ({err})") from None


def _python(source: str) -> str:
    """A cell's source with IPython magics and shell lines blanked (kept line numbers)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")
    )


def _parse(source: str):
    try:
        return ast.parse(_python(source))
    except SyntaxError:
        return None


def _defines(tree, name: str) -> bool:
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.name == name  # an exercise may be a class (notebook 00's Value)
        for node in tree.body
    )


def kept_statements(tree) -> str:
    """The top-level imports, functions and classes of a parsed cell, as source."""
    return "\n\n".join(ast.unparse(node) for node in tree.body if isinstance(node, KEPT))


def learner_definitions(submission, name: str, known: set[str]) -> str:
    """The code that defines ``name`` in a submission, for grading.

    ``known`` holds the sources of the teacher's and the released cells: any other code cell is
    the learner's. Returns the kept statements of the learner's cells up to and including the
    last one that defines ``name`` (the stub's cell when they never wrote it). Raises
    GradingProblem when no cell defines it; a cell that names it but is not valid Python gives
    that cell's SyntaxError (the exercise scores 0 with that message).
    """
    cells = [cell for cell in submission.cells if cell.cell_type == "code"]
    trees = [_parse(cell.source) for cell in cells]
    defining = [i for i, tree in enumerate(trees) if tree is not None and _defines(tree, name)]
    if not defining:
        for cell in cells:
            defines = f"def {name}(" in cell.source or f"class {name}" in cell.source
            if defines and _parse(cell.source) is None:
                try:
                    ast.parse(_python(cell.source))
                except SyntaxError as err:
                    raise SyntaxError(
                        f"your cell defining {name} is not valid Python: {err.msg} "
                        f"(line {err.lineno})"
                    ) from None
        raise GradingProblem(f"no cell defines `{name}`")
    last = defining[-1]
    pieces = [
        kept_statements(trees[i])
        for i in range(last)
        if trees[i] is not None and cells[i].source.strip() not in known
    ]
    pieces.append(kept_statements(trees[last]))
    return "\n\n".join(piece for piece in pieces if piece)


def _carried_binding(node) -> tuple[str, str] | None:
    """``(variable, exercise)`` for ``variable = ...yours_or_reference("exercise")``, else None."""
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
        return None
    target, call = node.targets[0], node.value
    if not (isinstance(target, ast.Name) and isinstance(call, ast.Call) and len(call.args) == 1):
        return None
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    argument = call.args[0]
    if called != "yours_or_reference" or not isinstance(argument, ast.Constant):
        return None
    return (target.id, argument.value) if isinstance(argument.value, str) else None


def teacher_prelude(teacher, solution_cell: int, solution_cells: set[int]) -> list[str]:
    """What the learner's function may use from the teacher's notebook: every import, and the
    functions, classes and literal constants of the cells above the exercise. A learner's answer
    carried from an earlier notebook (``X = ln.checks.yours_or_reference("name")``) is the
    library's answer here, ``X = __carried__["name"]`` (bound by the child before the traps are
    armed; never the exercise being graded): a submission holds one notebook, not the earlier
    ones."""
    pieces = []
    for index, cell in enumerate(teacher.cells):
        if cell.cell_type != "code" or index in solution_cells:
            continue
        tree = _parse(cell.source)
        if tree is None:
            continue
        for node in tree.body:
            keep = isinstance(node, ast.Import | ast.ImportFrom)
            carried = _carried_binding(node) if index < solution_cell else None
            if carried is not None:  # a learner's answer from an earlier notebook: the library's
                pieces.append(f"{carried[0]} = __carried__[{carried[1]!r}]")
                continue
            if index < solution_cell:
                keep = keep or isinstance(node, ast.FunctionDef | ast.ClassDef)
                if isinstance(node, ast.Assign):
                    try:
                        ast.literal_eval(node.value)
                        keep = True
                    except ValueError:
                        pass
            if keep:
                pieces.append(ast.unparse(node))
    return pieces


def _earlier_answer(node, graded: str) -> str | None:
    """``X = ...passing_or_reference(X, "name", ...)`` for an exercise other than ``graded``, as
    source without ``carry`` (grading saves nothing), else None."""
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
        return None
    call = node.value
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called != "passing_or_reference" or len(call.args) != 2:
        return None
    key = call.args[1]
    if not (isinstance(key, ast.Constant) and isinstance(key.value, str)) or key.value == graded:
        return None
    call = ast.Call(call.func, call.args, [k for k in call.keywords if k.arg != "carry"])
    return ast.unparse(ast.Assign(node.targets, call, lineno=0))


def earlier_answers(teacher, solution_cell: int, graded: str, definitions: str) -> list[str]:
    """The teacher's ``X = ln.checks.passing_or_reference(X, "x")`` statements above the graded
    exercise whose X the learner's ``definitions`` use: run after them, they make an earlier
    exercise that the learner left unsolved (or got wrong) the library's, as the notebook does,
    so that an answer built on it (00's Value on topological_order) is graded on its own. An
    earlier answer the graded one does not use is never run here (it is graded on its own)."""
    used = {node.id for node in ast.walk(ast.parse(definitions)) if isinstance(node, ast.Name)}
    pieces = []
    for cell in teacher.cells[:solution_cell]:
        tree = _parse(cell.source) if cell.cell_type == "code" else None
        for node in tree.body if tree is not None else ():
            statement = _earlier_answer(node, graded)
            targets = ast.walk(node.targets[0]) if statement is not None else ()
            if any(isinstance(t, ast.Name) and t.id in used for t in targets):
                pieces.append(statement)
    return pieces


class PristineLibrary:
    """``lora_np`` and the child grader as they were before any submission ran, held in memory.

    ``source`` is a git tree-ish (the default ``HEAD``: what the teacher committed, whatever a
    submission may since have written into the working tree) or None for the working tree.
    Every exercise run gets its own fresh, read-only copy written from memory
    (:meth:`write_to`), so nothing one run writes reaches another.
    """

    def __init__(self, source: str | None = "HEAD", root: Path = ROOT):
        self.files = _library_files(root, source)

    def write_to(self, folder: Path) -> Path:
        for relative, data in self.files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return folder


def _remove(folder: Path) -> None:
    for item in [folder, *folder.rglob("*")]:
        if not item.is_symlink():
            item.chmod(item.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(folder, ignore_errors=True)


def _library_files(root: Path, source: str | None) -> dict[str, bytes]:
    wanted = ("lora_np", "tools/grading_child.py")
    if source is None:
        files = {
            path.relative_to(root).as_posix(): path.read_bytes()
            for path in (root / "lora_np").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        files["tools/grading_child.py"] = (root / "tools" / "grading_child.py").read_bytes()
        return files
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "-r", "-z", source, "--", *wanted],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = {}
    for entry in filter(None, listing):
        meta, path = entry.split(b"\t", 1)
        blob = meta.split()[2].decode()
        files[path.decode()] = subprocess.run(
            ["git", "-C", str(root), "cat-file", "blob", blob], capture_output=True, check=True
        ).stdout
    return files


def run_exercise(
    library: PristineLibrary,
    exercise: str,
    prelude: str,
    definitions: str,
    hidden_seed: int,
    time_limit: float = TIME_LIMIT_S,
    earlier: list[str] = (),
) -> Verdict:
    """One exercise in a fresh process: its verdict, or why there is none. ``earlier``: the
    statements of :func:`earlier_answers`."""
    workdir = Path(tempfile.mkdtemp(prefix="lora-np-grade-"))
    pristine = library.write_to(workdir / "library")
    scratch = workdir / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)  # the unprivileged child may write scratch files (matplotlib's cache)
    workdir.chmod(0o755)
    read_end, write_end = os.pipe()
    packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    job = {
        "exercise": exercise,
        "prelude": prelude,
        "definitions": definitions,
        "earlier": list(earlier),
        "hidden_seed": hidden_seed,
        "verdict_fd": write_end,
        "sys_path": [str(pristine), *sorted(packages)],
    }
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(scratch), "MPLBACKEND": "Agg"}
    drop = _unprivileged() or {}
    command = [sys.executable, "-I", "-S", str(pristine / "tools" / "grading_child.py")]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=(write_end,),
        cwd=scratch,
        env=env,
        start_new_session=True,
        **drop,
    )
    os.close(write_end)
    try:
        output, _ = process.communicate(json.dumps(job).encode(), timeout=time_limit)
    except subprocess.TimeoutExpired:
        _kill(process)
        os.close(read_end)
        _remove(workdir)
        return Verdict(
            exercise,
            0,
            "time limit",
            f"{exercise} did not finish within {time_limit:g} s: does it loop forever?",
        )
    _kill(process)  # anything it started in its session goes too
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _remove(workdir)
    try:
        found = json.loads(raw.decode())
        return Verdict(exercise, found["score"], found["status"], found["message"])
    except (ValueError, KeyError, TypeError):
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        return Verdict(
            exercise,
            0,
            "crashed",
            f"grading {exercise} ended Python without a result (exit code "
            f"{process.returncode}): does your code call os._exit or crash the interpreter? "
            + " | ".join(tail),
        )


_DROP: list = []


def _unprivileged() -> dict | None:
    """Popen arguments that run the child as ``nobody`` (when grading as root and nobody can run
    this Python), so that it cannot write any file the teacher owns; None otherwise."""
    if not _DROP:
        drop = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        works = False
        if os.geteuid() == 0:
            try:
                packages = sysconfig.get_paths()["purelib"]
                probe = f"import sys; sys.path.append({packages!r}); import numpy"
                command = [sys.executable, "-I", "-S", "-c", probe]
                works = subprocess.run(command, capture_output=True, **drop).returncode == 0
            except OSError:
                works = False
        _DROP.append(drop if works else None)
    return _DROP[0]


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def grade_submission(
    path: Path | str,
    teacher,
    exercises,
    library: PristineLibrary,
    hidden_seed: int,
    time_limit: float = TIME_LIMIT_S,
    pool: ThreadPoolExecutor | None = None,
) -> list[Verdict]:
    """Every exercise of one submitted notebook (``exercises``: editions.Exercise of the
    teacher's notebook). Raises GradingProblem when the notebook cannot be graded at all."""
    submission = read_notebook(path)
    known = {cell.source.strip() for cell in teacher.cells} | _stub_sources(teacher, exercises)
    solution_cells = {e.solution_cell for e in exercises}
    jobs, verdicts = {}, {}
    for exercise in exercises:
        try:
            definitions = learner_definitions(submission, exercise.name, known)
        except SyntaxError as err:
            verdicts[exercise.name] = Verdict(exercise.name, 0, "invalid Python", str(err))
            continue
        except GradingProblem as err:
            verdicts[exercise.name] = Verdict(exercise.name, 0, "missing", str(err))
            continue
        prelude = teacher_prelude(teacher, exercise.solution_cell, solution_cells)
        earlier = earlier_answers(teacher, exercise.solution_cell, exercise.name, definitions)
        jobs[exercise.name] = (
            exercise.name,
            prelude,
            definitions,
            hidden_seed,
            time_limit,
            earlier,
        )
    if all(v.status == "missing" for v in verdicts.values()) and not jobs:
        names = ", ".join(e.name for e in exercises)
        raise GradingProblem(
            f"{Path(path).name} holds none of this assignment's functions ({names}): "
            "is it the right notebook?"
        )
    own_pool = pool or ThreadPoolExecutor(max_workers=max(1, len(jobs)))
    futures = {name: own_pool.submit(run_exercise, library, *job) for name, job in jobs.items()}
    for name, future in futures.items():
        verdicts[name] = dataclasses.replace(future.result(), code=jobs[name][2])
    if pool is None:
        own_pool.shutdown()
    return [verdicts[e.name] for e in exercises]


def _stub_sources(teacher, exercises) -> set[str]:
    sys.path.insert(0, str(TOOLS))
    import editions

    return {editions.stub_source(teacher.cells[e.solution_cell].source).strip() for e in exercises}
