"""Run All through a student edition that still has exercises to do.

The student edition (``make student``, written by ``tools/editions.py``) wraps each checker
call in :func:`mark_unsolved`::

    from lora_np.checks._run_all import mark_unsolved

    with mark_unsolved("02.5", "merge"):
        ln.checks.check_merge(merge)

An exercise whose function still raises ``NotImplementedError`` (the stub, untouched or
half-written) prints one "✗ Exercise 02.5 not solved yet" line and lets "Run All" and
``jupyter nbconvert --execute`` go on; the cells below use the library's version through
``passing_or_reference``. A wrong answer, and anything else, is raised as before and stops
the run. Only the student edition uses this: the teacher's edition, nbgrader's release and CI
call the checker bare, so an unsolved exercise fails there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["mark_unsolved", "unsolved_line"]


def unsolved_line(number: str, name: str) -> str:
    """The line printed for exercise ``number`` (say "02.5") whose function ``name`` is unsolved."""
    return (
        f"✗ Exercise {number} not solved yet: `{name}` still raises NotImplementedError; "
        f"the cells below use the library's {name}"
    )


def _is_unsolved(err: BaseException) -> bool:
    """Whether ``err`` comes from a NotImplementedError: the checker's "not written yet" error
    is marked ``unsolved`` (it hides the stub's exception from the traceback); a checker that
    chains or lets through the stub's exception is recognised by the chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, NotImplementedError) or getattr(err, "unsolved", False) is True:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def mark_unsolved(number: str, name: str) -> Iterator[None]:
    """Let a checker call inside fail quietly only when ``name`` is still the stub (see above).

    The mark goes to stderr, which Jupyter shows on a red background, so it stands out in a
    notebook run from top to bottom.
    """
    try:
        yield
    except AssertionError as err:  # the checkers' ExerciseError is an AssertionError
        if not _is_unsolved(err):
            raise
        print(unsolved_line(number, name), file=sys.stderr)
    except NotImplementedError:  # a checker that let the stub's exception through
        print(unsolved_line(number, name), file=sys.stderr)
