"""lora_np/checks/_run_all.py: the student edition's checker cells go on past an unsolved
exercise, and only past an unsolved one."""

from __future__ import annotations

import pytest

import lora_np as ln
from lora_np.checks import _harness as harness
from lora_np.checks._run_all import mark_unsolved, unsolved_line


def stub(W0, A, B, scaling):
    # YOUR CODE HERE
    raise NotImplementedError()


def half_written(W0, A, B, scaling):
    _delta = B @ A  # started, then left
    raise NotImplementedError()


def wrong(W0, A, B, scaling):
    return W0 + B @ A  # the scaling forgotten


def right(W0, A, B, scaling):
    return W0 + scaling * (B @ A)


@pytest.mark.parametrize("fn", [stub, half_written], ids=["stub", "half-written"])
def test_an_unsolved_exercise_is_marked_and_the_run_goes_on(fn, capsys):
    with mark_unsolved("02.3", "merge"):
        ln.checks.check_merge(fn)
    out, err = capsys.readouterr()
    assert err == unsolved_line("02.3", "merge") + "\n" and out == ""
    assert err.startswith("✗ Exercise 02.3 not solved yet")


def test_the_bare_checker_still_fails_on_the_stub():
    """What the teacher's edition, nbgrader and CI run."""
    with pytest.raises(harness.ExerciseError, match="merge is not written yet"):
        ln.checks.check_merge(stub)


def test_a_wrong_answer_still_stops_the_run(capsys):
    with pytest.raises(harness.ExerciseError, match="merge"):
        with mark_unsolved("02.3", "merge"):
            ln.checks.check_merge(wrong)
    assert "not solved yet" not in capsys.readouterr().err


def test_other_errors_pass_through_and_a_right_answer_prints_the_checkers_line(capsys):
    with pytest.raises(ValueError), mark_unsolved("02.3", "merge"):
        raise ValueError("not the exercise's")
    with mark_unsolved("02.3", "merge"):
        ln.checks.check_merge(right)
    out, err = capsys.readouterr()
    assert out.startswith("✓ merge: all") and err == ""
