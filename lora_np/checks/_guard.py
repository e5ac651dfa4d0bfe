"""What keeps a checker sound whatever the learner's function does: a time limit on each call,
the learner's traceback without the checker's frames, a safe description of any returned value,
private snapshots of the inputs (to prove they were left unchanged), and the library's functions
as they were when the checkers were imported (so a learner who reassigns
``ln.analysis.best_rank_approximation = mine`` does not also change the reference answer).

Why a thread for the time limit: a checker runs inside Jupyter on Linux, macOS and Windows.
``signal.alarm`` exists only on Unix and only in the main thread, and a subprocess would have to
pickle the learner's function (a notebook's functions and lambdas often do not pickle) and
costs a second start-up per call. A daemon thread works everywhere: the checker waits for it
at most ``TIME_LIMIT_S`` seconds, then gives up with a clear message and asks the thread to stop
(CPython's ``PyThreadState_SetAsyncExc`` raises an exception in it at its next Python line, so
an endless Python loop does not keep burning a core; a single NumPy call that never returns
cannot be interrupted, but a daemon thread never keeps the kernel from shutting down). The call
runs in a copy of the caller's ``contextvars`` context, so ``print`` inside the learner's
function still reaches the notebook cell and NumPy's ``errstate`` still applies.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import inspect
import os
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

from .. import backend

np = backend.np

__all__ = [
    "TIME_LIMIT_S",
    "Outcome",
    "as_originally_imported",
    "describe",
    "fingerprint",
    "freeze_library",
    "learners_world",
    "learner_traceback",
    "learner_where",
    "run_limited",
    "safe_str",
]

TIME_LIMIT_S = 20.0
"""Seconds one call of a learner's function may take before the checker gives up on it."""

_STACK_BYTES = 64 * 1024 * 1024  # room for a deep recursion to end in RecursionError, not a crash
_CHECKS_DIR = os.path.dirname(os.path.abspath(__file__))


class _Abandoned(BaseException):
    """Raised inside a worker thread the checker gave up on, so that it stops."""


class Outcome:
    """What one call gave: ``value``, or ``error`` (the learner's exception), or ``timed_out``."""

    __slots__ = ("error", "timed_out", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.timed_out = False


def _stop(thread: threading.Thread) -> None:
    """Ask ``thread`` to raise :class:`_Abandoned` at its next Python line (CPython only)."""
    try:
        set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except AttributeError:  # not CPython: the daemon thread is left to finish on its own
        return
    set_async(ctypes.c_ulong(thread.ident or 0), ctypes.py_object(_Abandoned))


def run_limited(fn: Callable[..., Any], args: tuple, kwargs: dict | None = None) -> Outcome:
    """``fn(*args, **kwargs)`` in a daemon thread, waited for at most ``TIME_LIMIT_S`` seconds."""
    outcome = Outcome()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome.value = context.run(fn, *args, **(kwargs or {}))
        except _Abandoned:
            pass
        except BaseException as err:  # the learner's, reported by the caller
            outcome.error = err

    limit = float(sys.modules[__name__].TIME_LIMIT_S)
    worker = threading.Thread(target=work, name="lora_np-checker-call", daemon=True)
    try:
        previous = threading.stack_size(_STACK_BYTES)
    except (ValueError, RuntimeError):
        previous = None
    try:
        worker.start()
    finally:
        if previous is not None:
            threading.stack_size(previous)
    deadline = time.monotonic() + limit
    try:
        while worker.is_alive():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                _stop(worker)
                worker.join(1.0)
                break
            worker.join(min(remaining, 0.1))  # short waits: Ctrl-C reaches us on every OS
    except BaseException:  # Ctrl-C while waiting: stop the learner's call too
        _stop(worker)
        raise
    return outcome


# ----------------------------------------------------------------------------- tracebacks


def _library_dirs() -> tuple[str, ...]:
    dirs = {os.path.dirname(_CHECKS_DIR), os.path.dirname(os.path.abspath(np.__file__))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError, OSError):
            dirs.add(os.path.abspath(sysconfig.get_paths()[key]))
    return tuple(d + os.sep for d in dirs)


_LIBRARY_DIRS = _library_dirs()


def learner_traceback(err: BaseException) -> types.TracebackType | None:
    """``err``'s traceback without the checker's own frames (its thread and wrappers)."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_CHECKS_DIR + os.sep):
            frames.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for tb in reversed(frames):
        rebuilt = types.TracebackType(rebuilt, tb.tb_frame, tb.tb_lasti, tb.tb_lineno)
    return rebuilt


def learner_where(tb: types.TracebackType | None) -> str:
    """' (your line N: `code`)' for the deepest frame of the learner's own code, or ''."""
    last = None
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not filename.startswith(_LIBRARY_DIRS):
            last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    try:
        import linecache

        line = linecache.getline(last.tb_frame.f_code.co_filename, last.tb_lineno).strip()
    except Exception:
        line = ""
    where = f"line {last.tb_lineno} of {last.tb_frame.f_code.co_name}"
    return f" at {where}: `{line}`" if line else f" at {where}"


def safe_str(err: BaseException) -> str:
    """``str(err)``, or a note when the exception cannot even be printed."""
    try:
        return str(err)
    except Exception as inner:
        return f"(its message could not be shown: str() raised {type(inner).__name__})"


# ----------------------------------------------------------------------------- describing values


def describe(value: Any) -> str:
    """A short description of any value for a message; it never calls the value's own methods
    beyond what plain containers, arrays and numbers provide."""
    kind = type(value)
    try:
        if value is None:
            return "None"
        if kind in (bool, int, float, complex):
            return f"the {kind.__name__} {value!r}"
        if isinstance(value, np.ndarray):
            array = np.asarray(value)
            return f"an array of shape {array.shape} and dtype {array.dtype}"
        if isinstance(value, np.generic):
            return f"a NumPy {np.asarray(value).dtype} scalar"
        if kind in (tuple, list):
            parts = ", ".join(describe(item) for item in value[:3])
            more = ", ..." if len(value) > 3 else ""
            return f"a {kind.__name__} of {len(value)} items ({parts}{more})"
        if kind is str:
            return f"the string {value[:40]!r}"
    except Exception:
        pass
    return f"an object of type {kind.__qualname__}"


# ----------------------------------------------------------------------------- input snapshots


def fingerprint(value: Any) -> Any:
    """A private, comparable copy of an input: array contents, a model's parameters (values and
    requires_grad), the items of a list; ``None`` for what a function may legitimately change
    (a random generator it draws from)."""
    from ..autograd import Tensor
    from ..nn import Module

    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.copy())
    if isinstance(value, Tensor):
        data = backend.to_numpy(value.data)
        return (
            "tensor",
            data.dtype.str,
            data.shape,
            np.array(data, copy=True),
            value.requires_grad,
        )
    if isinstance(value, Module):
        return ("module",) + tuple((n, id(p), fingerprint(p)) for n, p in value.named_parameters())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(id(v) for v in value)) + tuple(
            fingerprint(v) for v in value
        )
    if isinstance(value, np.random.Generator):
        return None
    return ("value", value)


def _same(before: Any, after: Any) -> bool:
    if type(before) is not type(after):
        return False
    if isinstance(before, np.ndarray):
        return before.shape == after.shape and bool(np.array_equal(before, after, equal_nan=True))
    if isinstance(before, tuple):
        return len(before) == len(after) and all(
            _same(a, b) for a, b in zip(before, after, strict=True)
        )
    return bool(before == after) if not isinstance(before, float) else before == after


def changed(before: Any, value: Any) -> str | None:
    """What changed in ``value`` since its :func:`fingerprint` ``before``, in words; or None."""
    if before is None:
        return None
    after = fingerprint(value)
    if _same(before, after):
        return None
    if before[0] == "module":
        names = {n: fp for n, _, fp in before[1:]}
        now = {n: (i, fp) for n, i, fp in after[1:]}
        for n, i, fp in before[1:]:
            if n not in now or now[n][0] != i:
                return f"its parameter `{n}` was replaced or removed"
            what = changed_tensor(fp, now[n][1], f"parameter `{n}`'s")
            if what:
                return what
        extra = [n for n in now if n not in names]
        return f"a parameter `{extra[0]}` was added" if extra else "its parameters changed"
    if before[0] == "tensor":
        return changed_tensor(before, after, "its")
    if before[0] in ("list", "tuple"):
        if before[1] != after[1]:
            return "items were added, removed or replaced"
        for i, (b, a) in enumerate(zip(before[2:], after[2:], strict=True)):
            if not _same(b, a):
                return f"item {i}: " + (changed_tensor(b, a, "its") or "its values were changed")
    if before[0] == "array" and before[2] != after[2]:
        return f"its shape became {after[2]} (it was {before[2]})"
    return "its values were changed"


def changed_tensor(before: tuple, after: tuple, owner: str) -> str | None:
    """What changed in a Tensor, said of ``owner`` (a possessive: "its", "parameter `w`'s")."""
    if before[0] != "tensor" or after[0] != "tensor":
        return None
    if before[4] != after[4]:
        return f"{owner} requires_grad is now {after[4]} (it was {before[4]})"
    if before[2] != after[2]:
        return f"{owner} data now has shape {after[2]} (it was {before[2]})"
    if not _same(before, after):
        return f"{owner} values (.data) were changed"
    return None


# ----------------------------------------------------------------------------- library snapshot

_ORIGINALS: list[tuple[Any, str, Any]] = []


def _is_code(value: Any) -> bool:
    return inspect.isroutine(value) or inspect.isclass(value) or isinstance(value, property)


def freeze_library() -> None:
    """Remember every function and class of every loaded ``lora_np`` module (and the methods of
    its classes), as they are now: what :func:`as_originally_imported` puts back."""
    _ORIGINALS.clear()
    for mod_name, module in list(sys.modules.items()):
        if module is None or not (mod_name == "lora_np" or mod_name.startswith("lora_np.")):
            continue
        for attr, value in list(vars(module).items()):
            if not _is_code(value):
                continue
            _ORIGINALS.append((module, attr, value))
            if inspect.isclass(value) and value.__module__ == mod_name:
                for method, member in list(vars(value).items()):
                    if _is_code(member) or isinstance(member, (staticmethod, classmethod)):
                        _ORIGINALS.append((value, method, member))


_MISSING = object()
_SWAPPED: list[list] = []  # per running checker: (owner, attr, original, the learner's value)


@contextlib.contextmanager
def as_originally_imported() -> Iterator[None]:
    """Run a checker with the library's functions as imported, whatever was reassigned since;
    the learner's reassignments are put back afterwards (and inside :func:`learners_world`)."""
    swapped = []
    for owner, attr, original in _ORIGINALS:
        current = vars(owner).get(attr, _MISSING)
        if current is not original:
            swapped.append((owner, attr, original, current))
            setattr(owner, attr, original)
    _SWAPPED.append(swapped)
    try:
        yield
    finally:
        _SWAPPED.pop()
        _put(swapped, learners=True)


@contextlib.contextmanager
def learners_world() -> Iterator[None]:
    """Inside a checker: the learner's own reassignments, for the time of their function's call."""
    swapped = _SWAPPED[-1] if _SWAPPED else []
    _put(swapped, learners=True)
    try:
        yield
    finally:
        _put(swapped, learners=False)


def _put(swapped: list, learners: bool) -> None:
    for owner, attr, original, current in reversed(swapped):
        value = current if learners else original
        if value is _MISSING:
            with contextlib.suppress(AttributeError):
                delattr(owner, attr)
        else:
            setattr(owner, attr, value)
