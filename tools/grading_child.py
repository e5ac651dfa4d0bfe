"""One exercise of one submission, graded in a fresh Python process (run by tools/grading.py).

The parent starts this as ``python -I -S grading_child.py`` with the pristine, read-only copy of
``lora_np`` first on ``sys.path`` and the job as JSON on stdin::

    {"exercise": name, "prelude": teacher's imports and helpers, "definitions": the learner's
     defs, "earlier": the teacher's statements that make an earlier exercise the library's
     when the learner's does not pass, "hidden_seed": int, "verdict_fd": int}

and reads one JSON verdict from ``verdict_fd``: ``{"score": 0 or 1, "status": ..., "message":
...}``. Only the learner's top-level definitions ever run here, never the rest of their
notebook. While learner code runs (its definitions, and each call of its function) every
``lora_np`` object that solves an exercise is a trap that records the call: a trapped call
scores 0. The checker is called twice: on its visible cases, then on hidden ones (every
``default_rng(seed)`` the checker modules draw becomes ``default_rng([seed, hidden_seed])``).
Afterwards every function, class and module of ``lora_np``, NumPy and the builtins must be the
object it was before learner code ran, or the exercise scores 0 ("tampered").

Not a sandbox: code written to attack this process (ctypes, frame tampering, writing a forged
verdict) is out of scope; the parent runs it as an unprivileged user when it can.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import math
import os
import sys
import types

LIBRARY_MODULES = ("lora_np",)
WATCHED_MODULES = ("builtins", "math", "numpy", "numpy.linalg", "numpy.random")
# Per exercise, library objects besides its registered reference that would solve it.
EXTRA_TRAPS = {
    "lora_forward": [("lora_np.functional", "lora_linear")],
    "layer_norm_backward": [("lora_np.functional", "layer_norm")],
    "projection_norm": [("lora_np.analysis", "amplification_factor")],
    "train_lora": [("lora_np.train", "train")],
    "save_adapter": [("lora_np.lora.peft_format", "save_adapter")],
}


EARLIER_CALL_LIMIT_S = 5.0  # per call of an earlier exercise's checker (honest ones: < 1 s)


class TrapState:
    armed = False
    calls: list[str] = []


def _trap(original, label: str):
    def trap(*args, **kwargs):
        if TrapState.armed:
            TrapState.calls.append(label)
            raise RuntimeError(
                f"graded mode: your code called {label}, the library's own answer; "
                "write it yourself"
            )
        return original(*args, **kwargs)

    trap.__name__ = getattr(original, "__name__", "trap")
    trap.__doc__ = getattr(original, "__doc__", None)
    return trap


def _label(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def install_traps(harness, exercise: str) -> None:
    """Replace the objects that solve ``exercise`` (its registered reference and EXTRA_TRAPS),
    every checker and every reference the checkers define, wherever lora_np binds them, with
    traps. Other exercises' library functions stay callable (the engine uses some itself)."""
    targets = {}
    for name, (checker, reference) in harness._REGISTRY.items():
        targets[id(checker)] = checker
        if name == exercise:
            targets[id(reference)] = reference
    for name, module in list(sys.modules.items()):
        if name.startswith("lora_np.checks") and module is not None:
            for attr, value in vars(module).items():
                if callable(value) and (
                    attr.endswith("_reference")
                    or attr.startswith("reference_")
                    or attr.startswith("check_")
                    or attr == "passing_or_reference"
                ):
                    targets[id(value)] = value
    for module_name, attr in EXTRA_TRAPS.get(exercise, []):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            targets[id(getattr(module, attr))] = getattr(module, attr)
    traps = {key: _trap(value, _label(value)) for key, value in targets.items()}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in LIBRARY_MODULES and module is not None:
            for attr, value in list(vars(module).items()):
                if id(value) in traps and not isinstance(value, type):
                    setattr(module, attr, traps[id(value)])
    for key, (checker, reference) in list(harness._REGISTRY.items()):
        harness._REGISTRY[key] = (traps[id(checker)], traps.get(id(reference), reference))


def _library_objects():
    """(name, object) of every module, class, function in lora_np and the watched modules."""
    for name, module in list(sys.modules.items()):
        if module is None:
            continue
        if name.split(".")[0] in LIBRARY_MODULES or name in WATCHED_MODULES:
            yield name, module


# Class attributes Python itself writes as caches, not learner tampering: copy.deepcopy and pickle
# store a class's slot names on it the first time they copy an instance (the checkers' snapshots
# deep-copy the learner's model, so an honest solution triggers it).
PYTHON_CACHES = frozenset({"__slotnames__"})


def snapshot() -> dict:
    """What learner code must leave as it was: ids of callables, classes and modules, and the
    code of every lora_np function."""
    state = {}
    for name, module in _library_objects():
        for attr, value in list(vars(module).items()):
            if callable(value) or isinstance(value, types.ModuleType):
                state[f"{name}.{attr}"] = id(value)
            if name.split(".")[0] in LIBRARY_MODULES:
                if isinstance(value, types.FunctionType):
                    state[f"{name}.{attr}.__code__"] = id(value.__code__)
                    state[f"{name}.{attr}.__defaults__"] = id(value.__defaults__)
                if isinstance(value, type) and value.__module__ == name:
                    for key, item in list(vars(value).items()):
                        if key not in PYTHON_CACHES:
                            state[f"{name}.{attr}.{key}"] = id(item)
    state["sys.modules"] = sorted(
        (n, id(m)) for n, m in sys.modules.items() if n.split(".")[0] in LIBRARY_MODULES
    )
    return state


def tampered(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


class _SeededRandom:
    """numpy.random, except that default_rng(seed) draws the hidden cases' numbers."""

    draws = 0  # how many generators the hidden run made: 0 means it had nothing to vary

    def __init__(self, random, seed: int):
        self._random, self._seed = random, seed

    def default_rng(self, seed=None):
        _SeededRandom.draws += 1
        return self._random.default_rng(None if seed is None else [seed, self._seed])

    def __getattr__(self, name):
        return getattr(self._random, name)


class _SeededNumpy:
    def __init__(self, numpy, seed: int):
        self._numpy = numpy
        self.random = _SeededRandom(numpy.random, seed)

    def __getattr__(self, name):
        return getattr(self._numpy, name)


@contextlib.contextmanager
def hidden_cases(seed: int):
    import numpy

    modules = [
        m
        for n, m in list(sys.modules.items())
        if n.startswith("lora_np.checks") and m is not None and getattr(m, "np", None) is numpy
    ]
    for module in modules:
        module.np = _SeededNumpy(numpy, seed)
    try:
        yield
    finally:
        for module in modules:
            module.np = numpy


def _materialised(value, kept_types, numpy):
    """The return value with anything not made by the library or NumPy (exact types, not
    subclasses) turned into an array while the traps are still armed: a lazy object must not
    call a reference later, from inside the checker."""
    if type(value) in (list, tuple):
        return type(value)(_materialised(v, kept_types, numpy) for v in value)
    if value is None or type(value) in kept_types:
        return value
    return numpy.asarray(value)


def _arm_methods(cls: type, armed) -> None:
    """Make every method the learner's class defines run armed, as a learner's function does:
    the checker calls the class and its methods (and instances of it must stay of that class,
    so the methods are wrapped in place rather than in a subclass)."""
    for attr, value in list(vars(cls).items()):
        if isinstance(value, types.FunctionType):

            def method(*args, _original=value, **kwargs):
                return armed(lambda: _original(*args, **kwargs))

            method.__name__, method.__qualname__ = value.__name__, value.__qualname__
            setattr(cls, attr, method)


def grade(job: dict) -> dict:
    import numpy

    import lora_np  # noqa: F401 (the pristine copy, first on sys.path)
    from lora_np.checks import _harness

    name = job["exercise"]
    checker = _harness._REGISTRY[name][0]  # the original, held before any learner code runs
    kept_types = {
        value
        for module_name, module in _library_objects()
        if module_name.split(".")[0] in LIBRARY_MODULES
        for value in vars(module).values()
        if isinstance(value, type)
    }
    kept_types |= {int, float, complex, bool, str, numpy.ndarray, *numpy.sctypeDict.values()}
    # Answers carried from earlier notebooks are the library's, taken before the traps replace
    # them (a learner's loop may call the library's inject); never the exercise graded here.
    carried = {key: reference for key, (_, reference) in _harness._REGISTRY.items() if key != name}
    install_traps(_harness, name)
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__carried__": carried}
    for statement in job["prelude"]:  # the teacher's imports and helpers, each on its own
        try:
            exec(compile(statement, "<teacher's notebook>", "exec"), namespace)
        except Exception:  # noqa: BLE001 (a helper needing data the notebook computed)
            pass
    del namespace["__carried__"]  # the learner's code sees only what the prelude bound
    before = snapshot()

    def armed(call):
        previous, TrapState.armed = TrapState.armed, True
        try:
            return call()
        finally:
            TrapState.armed = previous  # a method may call another method: nested

    try:
        armed(lambda: exec(compile(job["definitions"], "<your notebook>", "exec"), namespace))
    except BaseException as err:  # noqa: BLE001 (the learner's error, reported)
        return {"score": 0, "status": "failed", "message": f"your definitions raised {err!r}"}
    # An earlier exercise of this notebook that the learner left unsolved (or got wrong) is the
    # library's from here on, as in the notebook (`X = ln.checks.passing_or_reference(X, "x")`,
    # job["earlier"]): an answer that builds on it is graded on its own. These checks run
    # unarmed, as passing_or_reference is itself a trap: an earlier answer may then call the
    # graded exercise's library answer unrecorded, but a call only returns a result, never the
    # library's function, and every call the graded answer makes is armed. Each earlier checker
    # gets a short limit per call, so that a hanging earlier answer cannot use up this one's.
    from lora_np.checks import _guard

    limit, _guard.TIME_LIMIT_S = _guard.TIME_LIMIT_S, EARLIER_CALL_LIMIT_S
    try:
        for statement in job.get("earlier", ()):
            answer = ast.parse(statement).body[0].value.args[0]
            for node in ast.walk(answer):  # an untouched stub is not among the definitions
                if isinstance(node, ast.Name) and node.id not in namespace:
                    namespace[node.id] = None  # not passing: the library's, as in the notebook
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(BaseException):
                exec(compile(statement, "<teacher's notebook>", "exec"), namespace)
    finally:
        _guard.TIME_LIMIT_S = limit
    function = namespace.get(name)
    if not callable(function):
        return {"score": 0, "status": "failed", "message": f"{name} is not defined"}

    def learners(*args, **kwargs):
        return armed(lambda: _materialised(function(*args, **kwargs), kept_types, numpy))

    learners.__name__ = name
    if isinstance(function, type):  # a class exercise (00's Value): the checker needs the class
        from lora_np import nn

        borrowed = [
            klass
            for klass in function.__mro__
            if klass.__module__.split(".")[0] in LIBRARY_MODULES and klass is not nn.Module
        ]
        if borrowed:  # its methods are the library's, which no trap covers: not their work
            return {
                "score": 0,
                "status": "used the library's answer",
                "message": f"graded mode: {name} builds on the library's {borrowed[0].__name__}; "
                "write it yourself (subclass ln.nn.Module only)",
            }
        _arm_methods(function, armed)
        learners = function
    verdict = {"score": 1, "status": "passed", "message": ""}
    for label, context in (("", contextlib.nullcontext()), (" (hidden cases)", None)):
        context = context or hidden_cases(job["hidden_seed"])
        out = io.StringIO()
        try:
            with context, contextlib.redirect_stdout(out):
                checker(learners)
            lines = [line for line in out.getvalue().splitlines() if line.startswith("✓")]
            verdict["message"] = verdict["message"] or (lines[-1] if lines else "passed")
        except BaseException as err:  # noqa: BLE001 (ExerciseError, SystemExit, ...)
            text = str(err) or type(err).__name__
            if isinstance(err, SystemExit | KeyboardInterrupt):
                text = f"{name} tried to stop Python ({type(err).__name__})"
            verdict = {"score": 0, "status": "failed", "message": text + label}
            break
    if verdict["score"] and _SeededRandom.draws:
        verdict["message"] += ", and the hidden cases too"
    if TrapState.calls:
        calls = ", ".join(sorted(set(TrapState.calls)))
        verdict = {
            "score": 0,
            "status": "used the library's answer",
            "message": f"graded mode: {name} called {calls}, the library's own solution; "
            "write it yourself",
        }
    changed = tampered(before, snapshot())
    if changed:
        verdict = {
            "score": 0,
            "status": "tampered",
            "message": f"your code changed the library or NumPy: {', '.join(changed[:5])}",
        }
    return verdict


def main() -> int:
    job = json.loads(sys.stdin.read())
    sys.path[:0] = job["sys_path"]  # the pristine lora_np first, then NumPy's site-packages
    verdict_out = os.fdopen(job["verdict_fd"], "w")
    sys.stdin = io.StringIO()
    try:
        verdict = grade(job)
    except BaseException as err:  # noqa: BLE001
        verdict = {
            "score": None,
            "status": "grader error",
            "message": f"{type(err).__name__}: {err}",
        }
    verdict_out.write(json.dumps(verdict))
    verdict_out.flush()
    return 0


if __name__ == "__main__":
    math.isfinite(0.0)  # math is watched; make sure it is imported before the snapshot
    sys.exit(main())
