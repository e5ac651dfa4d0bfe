"""What every exercise checker shares: calling the learner's function safely, reading its
output, comparing it with the library's answer, and naming the likely mistake.

A checker (``check_<name>(fn)``) is written as a list of cases. For each case it first computes
the library's answer (from private copies of the inputs, with the library's functions as they
were imported, see :mod:`._guard`), then the answers that the classic wrong versions would give,
then calls the learner's function (:func:`call`: a time limit, the learner's exception reported
with the learner's own line), proves the inputs were left unchanged (:func:`snapshot` /
:func:`unchanged`), reads the output with exact type checks (:func:`as_array`,
:func:`as_items`, :func:`as_whole_number`) and calls :func:`compare`: when the output matches a
wrong version, the message names that mistake; otherwise it reports where and by how much it is
off. Every failure is an :class:`ExerciseError` (an ``AssertionError``) with one readable
message; a checker never crashes on what a learner's function returns.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import backend
from . import _guard, _mine
from ._guard import as_originally_imported, describe, safe_str

np = backend.np  # checkers work on host NumPy arrays whatever the backend

__all__ = [
    "ExerciseError",
    "as_array",
    "as_items",
    "as_originally_imported",
    "as_whole_number",
    "call",
    "call_explained",
    "compare",
    "describe",
    "exercise",
    "is_shape_error",
    "passed",
    "passing_or_reference",
    "yours_or_reference",
    "precision_of",
    "snapshot",
    "unchanged",
    "with_hint",
]


class ExerciseError(AssertionError):
    """A learner's function gave a wrong answer (or none); the message says which case and why.

    ``learner_traceback`` holds the frames of the learner's own code when their function raised,
    so the notebook shows their line, not the checker's.
    """

    learner_traceback = None


_REGISTRY: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {}


def exercise(name: str, reference: Callable[..., Any]):
    """Register a checker for exercise ``name`` with the library function that solves it.

    The registered checker re-raises its :class:`ExerciseError` with the learner's own frames
    only (the checker's frames are hidden; IPython and pytest also hide the one line of this
    wrapper, marked ``__tracebackhide__``).
    """

    def register(checker):
        @functools.wraps(checker)
        def run(fn, *, quiet: bool = False):
            __tracebackhide__ = True
            try:
                with as_originally_imported():
                    return checker(fn, quiet=quiet)
            except ExerciseError as err:
                raise err.with_traceback(err.learner_traceback) from None

        _REGISTRY[name] = (run, reference)
        return run

    return register


def call(fn: Any, name: str, case: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` within the time limit, anything it raises made a clear
    :class:`ExerciseError` that carries the learner's traceback (and quotes their line)."""
    if not callable(fn):
        raise ExerciseError(
            f"{name}: expected your function, got {describe(fn)}; "
            f"pass the function itself, e.g. check_{name}({name})"
        )
    with _guard.learners_world():
        outcome = _guard.run_limited(fn, args, kwargs)
    if outcome.timed_out:
        raise ExerciseError(
            f"{name} did not return within {_guard.TIME_LIMIT_S:g} s on {case}, so the checker "
            "stopped waiting. Look for a loop that never ends (a `while` whose condition never "
            "changes) or work that grows far faster than the input"
        )
    err = outcome.error
    if err is None:
        return outcome.value
    tb = _guard.learner_traceback(err)
    if isinstance(err, NotImplementedError):
        error = ExerciseError(
            f"{name} is not written yet: replace `raise NotImplementedError` with your code"
        )
        error.unsolved = True  # read by _run_all.mark_unsolved (the student edition's Run All)
    else:
        error = ExerciseError(
            f"{name} raised {type(err).__name__}: {safe_str(err)} (on {case})"
            f"{_guard.learner_where(tb)}"
        )
    error.learner_traceback = tb
    raise error


def snapshot(*inputs: Any) -> list:
    """Private copies of the inputs handed to the learner, to prove them unchanged afterwards."""
    return [_guard.fingerprint(value) for value in inputs]


def unchanged(name: str, case: str, labels: Sequence[str], before: list, inputs: Sequence) -> None:
    """Raise an :class:`ExerciseError` naming the first input the learner's function changed."""
    for label, fingerprint, value in zip(labels, before, inputs, strict=True):
        what = _guard.changed(fingerprint, value)
        if what is not None:
            hint = (
                f" (write `{label} + ...` or work on `{label}.copy()`, not `{label} += ...` or "
                f"`{label}[...] = ...`)"
                if isinstance(value, np.ndarray)
                else ""
            )
            raise ExerciseError(
                f"{name} changed its input {label} in place on {case} ({what}): leave the "
                f"inputs as they were given, the caller still needs them{hint}"
            )


def _host(value: Any, name: str, case: str) -> Any:
    """A Tensor's or a device array's data on the host; any other value unchanged."""
    from ..autograd import Tensor

    if isinstance(value, Tensor):
        try:
            return np.asarray(backend.to_numpy(value.data))
        except Exception:
            raise ExerciseError(
                f"{name} returned a Tensor on {case} whose data could not be read"
            ) from None
    if backend.array_module(value) != "numpy":
        return np.asarray(backend.to_numpy(value))
    return value


def as_array(
    value: Any, name: str, case: str, shape: Sequence[int] | None = None, finite: bool = True
) -> Any:
    """The learner's output as a host array of real numbers (of ``shape``), or an error that
    says what came back: only arrays, NumPy scalars, Python ints and floats and ``Tensor`` s
    are read; a bool, a complex number, a list or any other object is refused. NaN and inf
    are refused too unless ``finite`` is False."""
    if value is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    value = _host(value, name, case)
    if type(value) in (int, float) or isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
    else:
        hint = " (build an array with np.array or np.stack)" if type(value) is list else ""
        raise ExerciseError(
            f"{name} returned {describe(value)} on {case}; expected numbers: a NumPy array "
            f"or a single number{hint}"
        )
    if array.dtype == bool:
        raise ExerciseError(
            f"{name} returned booleans ({describe(value)}) on {case}; expected numbers"
        )
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ExerciseError(
            f"{name} returned complex numbers ({describe(value)}) on {case}; expected real "
            "numbers (a square root or power of a negative number gives a complex result)"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ExerciseError(
            f"{name} returned an array of {array.dtype} on {case}; expected numbers"
        )
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ExerciseError(
            f"{name} returned shape {tuple(array.shape)} on {case}; expected {tuple(shape)}"
        )
    if finite and np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
        raise ExerciseError(f"{name} returned NaN or inf on {case}")
    return array


def as_items(value: Any, n: int, name: str, case: str, what: str) -> tuple:
    """The learner's output as a tuple of exactly ``n`` items (from a tuple or a list)."""
    if value is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    if isinstance(value, tuple):
        items = tuple(tuple.__iter__(value))
    elif isinstance(value, list):
        items = tuple(list.__iter__(value))
    else:
        raise ExerciseError(f"{name} returned {describe(value)} on {case}; expected {what}")
    if len(items) != n:
        raise ExerciseError(
            f"{name} returned {describe(value)} on {case}; expected {n} items: {what}"
        )
    return items


def as_whole_number(value: Any, name: str, case: str, what: str) -> int:
    """The learner's output as an int (a Python or NumPy integer; a bool or a float is refused)."""
    if value is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    if type(value) is int or isinstance(value, np.integer):
        return int(value)
    raise ExerciseError(
        f"{name} returned {describe(value)} on {case}; expected a whole number (an int): {what}"
    )


def precision_of(*inputs: Any) -> Any:
    """The least precise floating dtype among the inputs (float64 when none is a float array):
    an answer is judged at the precision its inputs allow, whatever dtype it comes back in."""
    dtypes = [np.asarray(a).dtype for a in inputs if isinstance(a, np.ndarray | np.generic)]
    floats = [d for d in dtypes if np.issubdtype(d, np.floating)]
    return min(floats, key=lambda d: np.finfo(d).bits) if floats else np.dtype(np.float64)


def _tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) at ``dtype``'s precision: float32 inputs are judged at float32 precision."""
    if np.issubdtype(dtype, np.floating) and np.finfo(dtype).bits <= 32:
        return 2e-4, 2e-5
    return 1e-7, 1e-9


def _close(a, b, rtol: float, atol: float) -> bool:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def compare(
    got: Any,
    want: Any,
    name: str,
    case: str,
    mistakes: Sequence[tuple[str, Any]] = (),
    what: str = "output",
    precision: Any = None,
) -> None:
    """Raise an :class:`ExerciseError` unless ``got`` equals ``want`` to the inputs' precision.

    ``precision`` is the least precise dtype of the case's inputs (:func:`precision_of`): the
    answer is judged at that precision or its own, whichever is coarser (a float32 answer to
    float64 inputs, or a float64 answer computed from float32 inputs, both pass). ``mistakes`` lists ``(explanation, wrong_answer)`` pairs: the
    answers that known wrong versions give on this case. A match names the mistake; otherwise
    the message gives the largest difference and where it is.
    """
    got = as_array(got, name, case, np.shape(want))
    judged_at = got.dtype if precision is None else precision_of(np.zeros(0, precision), got)
    rtol, atol = _tolerance(judged_at)
    scale = max(1.0, float(np.max(np.abs(want))) if np.size(want) else 1.0)
    if _close(got, want, rtol, atol * scale):
        return
    for explanation, wrong in mistakes:
        if wrong is not None and not _close(wrong, want, rtol, atol * scale):
            if _close(got, wrong, rtol, atol * scale):
                raise ExerciseError(f"{name}: wrong {what} on {case}. {explanation}")
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    where = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    index = f" at index {tuple(int(i) for i in where)}" if diff.ndim else ""
    mine, theirs = float(np.asarray(got)[where]), float(np.asarray(want)[where])
    digits = 6 if f"{mine:.6g}" != f"{theirs:.6g}" else 12
    raise ExerciseError(
        f"{name}: wrong {what} on {case}: largest difference {float(diff.max()):.3g}{index} "
        f"(yours {mine:.{digits}g}, expected {theirs:.{digits}g})"
    )


def is_shape_error(message: str) -> bool:
    """Whether an error message is NumPy's complaint about mismatched shapes in a product."""
    return any(word in message for word in ("matmul", "shapes", "aligned", "broadcast"))


def with_hint(err: ExerciseError, hint: str) -> ExerciseError:
    """``err`` with ``hint`` added to its message, keeping what it carries (the learner's
    traceback, the mark of an unsolved exercise)."""
    error = ExerciseError(str(err) + hint)
    error.__dict__.update(err.__dict__)
    return error


def call_explained(
    fn: Any, name: str, case: str, *args: Any, shape_hint: str = "", none_hint: str = ""
) -> Any:
    """:func:`call`, with ``shape_hint`` added when the learner's code multiplied mismatched
    shapes and ``none_hint`` when it used a None it did not expect."""
    try:
        return call(fn, name, case, *args)
    except ExerciseError as err:
        text = str(err)
        hint = shape_hint if is_shape_error(text) else none_hint if "NoneType" in text else ""
        if not hint:
            raise
        raise with_hint(err, hint) from None


def passed(name: str, n_cases: int, quiet: bool = False) -> None:
    """The one line a checker prints when every case passes."""
    if not quiet:  # one write: print's separate newline can land in a second stream output
        sys.stdout.write(f"✓ {name}: all {n_cases} checks passed\n")


def passing_or_reference(fn: Any, name: str, *, carry: bool = False) -> Any:
    """Your ``fn`` when it passes its checker, otherwise the library's version (with a note).

    Cells after an exercise call this, so a notebook still runs while an exercise is unsolved.
    ``fn`` may be a tuple when an exercise has several answers (its checker takes the tuple).
    With ``carry=True`` a passing answer is also saved to ``mine/<name>.py`` for the notebooks
    that follow (:mod:`._mine`; they call :func:`yours_or_reference`).
    """
    checker, reference = _registered(name)
    try:
        checker(fn, quiet=True)
    except AssertionError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            f"note: using the library's {name} below, since yours does not pass yet ({first_line})"
        )
        return reference
    if carry:
        objects = fn if isinstance(fn, tuple) else (fn,)
        try:
            path = _mine.save(name, objects)
        except (OSError, ValueError) as err:
            print(f"note: your {name} passes but could not be saved for later notebooks: {err}")
        else:
            print(f"your {name} passes: saved to {path} for the notebooks that follow")
    return fn


def yours_or_reference(name: str) -> Any:
    """Your ``name`` saved by an earlier notebook (``mine/<name>.py``) when it still passes its
    checker, otherwise the library's; prints one line saying which and why."""
    checker, reference = _registered(name)
    path = _mine.path_of(name)
    try:
        objects = _mine.load(name)
    except FileNotFoundError:
        print(
            f"mine: the library's {name} below: {path} does not exist yet "
            f"(it is written when your {name} passes its checker)"
        )
        return reference
    except (Exception, SystemExit) as err:  # the learner's file: anything may go wrong in it
        print(
            f"mine: the library's {name} below: running {path} raised "
            f"{type(err).__name__}: {safe_str(err)}"
        )
        return reference
    yours = objects if len(objects) > 1 else objects[0]
    try:
        checker(yours, quiet=True)
    except AssertionError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"mine: the library's {name} below: yours in {path} does not pass ({first_line})")
        return reference
    print(f"mine: your own {name} below, from {path}")
    return yours


def _registered(name: str) -> tuple[Callable[..., None], Any]:
    if name not in _REGISTRY:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
