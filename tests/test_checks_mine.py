"""Carrying a learner's passing answer to later notebooks (lora_np/checks/_mine.py)."""

import linecache

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import _mine


def merge(W0, A, B, scaling):  # a correct answer to exercise "merge", defined in a file
    return W0 + scaling * (B @ A)


def merge_in_place(W0, A, B, scaling):  # a wrong one: changes the caller's W0
    W0 += scaling * (B @ A)
    return W0


@pytest.fixture
def mine(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    monkeypatch.setenv(_mine.FOLDER_ENV, str(folder))
    return folder


def _cell(text: str, filename: str) -> dict:
    """Define ``text`` as IPython does for a notebook cell: code whose file exists only in
    ``linecache``."""
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace = {"np": np}
    exec(compile(text, filename, "exec"), namespace)
    return namespace


def test_a_passing_answer_is_saved_and_comes_back(mine, capsys):
    assert ln.checks.passing_or_reference(merge, "merge", carry=True) is merge
    assert "saved to" in capsys.readouterr().out
    saved = (mine / "merge.py").read_text()
    assert "def merge(" in saved and "merge_in_place" not in saved  # its own block only
    yours = ln.checks.yours_or_reference("merge")
    assert "your own merge" in capsys.readouterr().out
    assert yours is not merge and yours.__name__ == "merge"
    W0, A, B = np.ones((3, 4)), np.ones((2, 4)), np.ones((3, 2))
    np.testing.assert_array_equal(yours(W0, A, B, 0.5), merge(W0, A, B, 0.5))


def test_without_carry_nothing_is_written(mine):
    ln.checks.passing_or_reference(merge, "merge")
    assert not mine.exists()


def test_a_failing_answer_is_not_saved(mine, capsys):
    reference = ln.checks.passing_or_reference(merge_in_place, "merge", carry=True)
    assert reference is not merge_in_place
    assert "does not pass yet" in capsys.readouterr().out
    assert not (mine / "merge.py").exists()


def test_a_notebook_cell_is_saved_whole(mine):
    helper = "def _low_rank(A, B):\n    return B @ A\n"
    answer = "def merge(W0, A, B, scaling):\n    return W0 + scaling * _low_rank(A, B)\n"
    call = "print(merge(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)), 2.0))\n"
    namespace = _cell(f"{helper}\n\n{answer}\n{call}", "/tmp/ipykernel_0/123456789.py")
    ln.checks.passing_or_reference(namespace["merge"], "merge", carry=True)
    saved = (mine / "merge.py").read_text()
    assert helper in saved and answer in saved  # the helper beside the answer comes along
    assert "print(" not in saved  # the cell's calls do not
    assert ln.checks.yours_or_reference("merge").__name__ == "merge"


def test_the_library_when_nothing_was_saved(mine, capsys):
    _, reference = ln.checks._harness._REGISTRY["merge"]
    assert ln.checks.yours_or_reference("merge") is reference
    out = capsys.readouterr().out
    assert out.startswith("mine: the library's merge") and "does not exist yet" in out


def test_the_library_when_the_saved_file_no_longer_passes(mine, capsys):
    ln.checks.passing_or_reference(merge, "merge", carry=True)
    path = mine / "merge.py"
    path.write_text(path.read_text().replace("W0 + scaling", "W0 - scaling"))
    _, reference = ln.checks._harness._REGISTRY["merge"]
    capsys.readouterr()
    assert ln.checks.yours_or_reference("merge") is reference
    assert "does not pass" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text", ["raise SystemExit(3)\n", "def merge(:\n", "x = 1\n", "__carried__ = ('merge',)\n"]
)
def test_the_library_when_the_saved_file_is_broken(mine, capsys, text):
    mine.mkdir()
    (mine / "merge.py").write_text(text)
    _, reference = ln.checks._harness._REGISTRY["merge"]
    assert ln.checks.yours_or_reference("merge") is reference
    assert capsys.readouterr().out.startswith("mine: the library's merge below: running")


def test_a_save_touches_nothing_else_and_leaves_no_temp_file(mine):
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    ln.checks.passing_or_reference(merge, "merge", carry=True)
    ln.checks.passing_or_reference(merge, "merge", carry=True)
    assert sorted(p.name for p in mine.iterdir()) == ["merge.py", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "mine"


def test_an_unwritable_folder_is_a_note_not_a_crash(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(_mine.FOLDER_ENV, str(blocker / "mine"))
    assert ln.checks.passing_or_reference(merge, "merge", carry=True) is merge
    assert "could not be saved" in capsys.readouterr().out


def test_names_must_be_identifiers_and_registered(mine):
    with pytest.raises(ValueError, match="identifier"):
        _mine.path_of("../merge")
    with pytest.raises(KeyError, match="no exercise named 'nope'"):
        ln.checks.yours_or_reference("nope")
    with pytest.raises(ValueError, match="expected a function or a class"):
        _mine.source_of(3)
