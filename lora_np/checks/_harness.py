"""What every exercise checker shares: calling the learner's function safely, reading its
output, comparing it with the library's answer, and naming the likely mistake.

A checker (``check_<name>(fn)``) is written as a list of cases. For each case it computes the
library's answer and the answers that the classic wrong versions would give, then calls
:func:`compare`: when the learner's output matches a wrong version, the message names that
mistake; otherwise it reports where and by how much the output is off. Every failure is an
:class:`ExerciseError` (an ``AssertionError``) with one readable message, never a traceback
from inside the checker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import backend
from ..graph import short

np = backend.np  # checkers work on host NumPy arrays whatever the backend

__all__ = [
    "ExerciseError",
    "as_array",
    "call",
    "compare",
    "exercise",
    "is_shape_error",
    "passed",
    "passing_or_reference",
]


class ExerciseError(AssertionError):
    """A learner's function gave a wrong answer (or none); the message says which case and why."""


_REGISTRY: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {}


def exercise(name: str, reference: Callable[..., Any]):
    """Register a checker for exercise ``name`` with the library function that solves it."""

    def register(checker):
        _REGISTRY[name] = (checker, reference)
        return checker

    return register


def call(fn: Any, name: str, case: str, *args: Any) -> Any:
    """``fn(*args)``, with anything it raises turned into a clear :class:`ExerciseError`."""
    if not callable(fn):
        raise ExerciseError(
            f"{name}: expected your function, got {type(fn).__name__} {short(fn)}; "
            f"pass the function itself, e.g. check_{name}({name})"
        )
    try:
        return fn(*args)
    except NotImplementedError:
        raise ExerciseError(
            f"{name} is not written yet: replace `raise NotImplementedError` with your code"
        ) from None
    except Exception as err:  # the learner's bug, reported in one line
        raise ExerciseError(f"{name} raised {type(err).__name__}: {err} (on {case})") from None


def as_array(value: Any, name: str, case: str, shape: Sequence[int] | None = None) -> Any:
    """The learner's output as a host float array of ``shape``, or an error that says what it was."""
    if hasattr(value, "numpy") and callable(value.numpy):  # a Tensor: accept it, read its data
        value = value.numpy()
    if backend.array_module(value) != "numpy":  # a device array
        value = backend.to_numpy(value)
    if value is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    try:
        array = np.asarray(value)
    except Exception as err:
        raise ExerciseError(
            f"{name} returned {type(value).__name__}, not an array, on {case} ({err})"
        ) from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ExerciseError(
            f"{name} returned an array of {array.dtype} on {case}; expected numbers"
        )
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ExerciseError(
            f"{name} returned shape {tuple(array.shape)} on {case}; expected {tuple(shape)}"
        )
    if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
        raise ExerciseError(f"{name} returned NaN or inf on {case}")
    return array


def _tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for an output of ``dtype``: float32 answers are judged at float32 precision."""
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
) -> None:
    """Raise an :class:`ExerciseError` unless ``got`` equals ``want`` to the output's precision.

    ``mistakes`` lists ``(explanation, wrong_answer)`` pairs: the answers that known wrong
    versions give on this case. A match names the mistake; otherwise the message gives the
    largest difference and where it is.
    """
    got = as_array(got, name, case, np.shape(want))
    rtol, atol = _tolerance(got.dtype)
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
    raise ExerciseError(
        f"{name}: wrong {what} on {case}: largest difference {float(diff.max()):.3g}{index} "
        f"(yours {float(np.asarray(got)[where]):.6g}, expected {float(np.asarray(want)[where]):.6g})"
    )


def is_shape_error(message: str) -> bool:
    """Whether an error message is NumPy's complaint about mismatched shapes in a product."""
    return any(word in message for word in ("matmul", "shapes", "aligned", "broadcast"))


def passed(name: str, n_cases: int, quiet: bool = False) -> None:
    """The one line a checker prints when every case passes."""
    if not quiet:
        print(f"✓ {name}: all {n_cases} checks passed")


def passing_or_reference(fn: Any, name: str) -> Callable[..., Any]:
    """Your ``fn`` when it passes its checker, otherwise the library's version (with a note).

    Cells after an exercise call this, so a notebook still runs while an exercise is unsolved.
    """
    if name not in _REGISTRY:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    checker, reference = _REGISTRY[name]
    try:
        checker(fn, quiet=True)
    except AssertionError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            f"note: using the library's {name} below, since yours does not pass yet ({first_line})"
        )
        return reference
    return fn
