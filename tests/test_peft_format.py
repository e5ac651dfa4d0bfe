"""Adapter folders on disk (lora.save_adapter / load_adapter): a save writes only its own two
files and keeps everything else in the folder; a load is one save's pair, even while another
save runs or after one was killed; hostile files are refused from their header."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora, nn

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class Net(nn.Module):
    """blocks.{0,1}.{q,v} (8 -> 8)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(), nn.Sequential()])
        for block in self.blocks:
            block.q, block.v = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        for block in self.blocks:
            x = x + block.q(x) * block.v(x)
        return x


def make_net():
    ln.manual_seed(0)
    return Net()


def adapted(seed=0, r=2, alpha=4, targets=("q", "v")):
    model = make_net()
    lora.inject(model, list(targets), r=r, alpha=alpha)
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        layer.A.data = rng.standard_normal(layer.A.shape).astype(np.float32)
        layer.B.data = rng.standard_normal(layer.B.shape).astype(np.float32)
    return model


def adapter_state(model):
    """What an adapter is: per layer, A, B and the scaling."""
    return {
        name: (layer.A.data.copy(), layer.B.data.copy(), layer.scaling)
        for name, layer in lora.lora_layers(model)
    }


def loaded_state(folder):
    fresh = make_net()
    lora.load_adapter(fresh, folder)
    return adapter_state(fresh)


def same(a, b):
    return a.keys() == b.keys() and all(
        np.array_equal(a[n][0], b[n][0]) and np.array_equal(a[n][1], b[n][1]) and a[n][2] == b[n][2]
        for n in a
    )


def listing(folder):
    """Every entry under ``folder``: path -> ('link', target) / ('dir',) / ('file', bytes)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    found[rel] = ("file", f.read())
    return found


def _populate(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step_100.safetensors").write_bytes(b"weights of a run")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "notes.txt").write_text("my notes")
    (folder / "notes_link").symlink_to("notes.txt")


# ------------------------------------------------------------------ a save writes only its own
def test_a_save_keeps_every_other_entry_of_the_folder(tmp_path):
    folder = tmp_path / "run"
    _populate(folder)
    lora.save_adapter(adapted(), folder)  # a new adapter
    lora.save_adapter(adapted(seed=1), folder)  # and one replacing it
    before = listing(folder)
    assert {k: v for k, v in before.items() if k not in (CONFIG, WEIGHTS)} == {
        "checkpoints": ("dir",),
        "checkpoints/step_100.safetensors": ("file", b"weights of a run"),
        ".git": ("dir",),
        ".git/HEAD": ("file", b"ref: refs/heads/main\n"),
        "notes.txt": ("file", b"my notes"),
        "notes_link": ("link", "notes.txt"),
    }
    assert same(loaded_state(folder), adapter_state(adapted(seed=1)))


def test_saving_into_the_working_directory_leaves_it_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print('hi')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    lora.save_adapter(adapted(), os.getcwd())
    after = listing(tmp_path)
    assert sorted(set(after) - set(before)) == [CONFIG, WEIGHTS]
    assert {k: after[k] for k in before} == before


def test_a_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("step,loss\n1,2.0\n")
    with pytest.raises(NotADirectoryError, match=r"results\.csv: it is a file"):
        lora.save_adapter(adapted(), path)
    assert path.read_text() == "step,loss\n1,2.0\n"
    with pytest.raises(NotADirectoryError, match=r"results\.csv is a file"):
        lora.load_adapter(make_net(), path)


def test_symlinked_files_are_written_through(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in (CONFIG, WEIGHTS):
        (store / name).write_bytes(b"old")
        (folder / name).symlink_to(store / name)
    lora.save_adapter(adapted(), folder)
    for name in (CONFIG, WEIGHTS):
        assert (folder / name).is_symlink()
        assert (store / name).read_bytes() != b"old"
    assert sorted(p.name for p in store.iterdir()) == [CONFIG, WEIGHTS]
    assert same(loaded_state(folder), adapter_state(adapted()))


def test_overwriting_keeps_the_mode_and_new_files_follow_the_umask(tmp_path):
    folder = lora.save_adapter(adapted(), tmp_path / "a")
    for name in (CONFIG, WEIGHTS):
        os.chmod(folder / name, 0o600)
    os.chmod(folder, 0o750)
    lora.save_adapter(adapted(seed=1), folder)
    assert [stat.S_IMODE(os.stat(folder / n).st_mode) for n in (CONFIG, WEIGHTS)] == [0o600] * 2
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750
    old = os.umask(0o077)
    try:
        fresh = lora.save_adapter(adapted(), tmp_path / "b")
    finally:
        os.umask(old)
    assert [stat.S_IMODE(os.stat(fresh / n).st_mode) for n in (CONFIG, WEIGHTS)] == [0o600] * 2


# ------------------------------------------------------------------ a load is one save's pair
def test_loads_during_resaves_always_get_one_whole_adapter(tmp_path):
    """A writer thread re-saves two different adapters (different r, alpha and weights) into
    one folder, over and over, while this thread loads it: every load is exactly one of them."""
    x, y = adapted(seed=1, r=2, alpha=4), adapted(seed=2, r=3, alpha=9, targets=("q",))
    expected = [adapter_state(x), adapter_state(y)]
    folder = lora.save_adapter(x, tmp_path / "shared")
    started, done, errors = threading.Event(), threading.Event(), []

    def writer():
        try:
            started.wait()
            for i in range(200):
                lora.save_adapter((x, y)[i % 2], folder)
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = [0, 0]
    try:
        for _ in range(2000):  # bounded; stops when the writer is done
            state = loaded_state(folder)
            matches = [same(state, e) for e in expected]
            assert any(matches), "a load mixed two saves"
            seen[matches.index(True)] += 1
            started.set()
            if done.is_set():
                break
    finally:
        thread.join()
    assert not errors, errors
    assert min(seen) > 0, seen  # x before the re-saves, y (the last saved) after them
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS]


KILLED_SAVE = """
import os, signal, sys
import numpy as np
import lora_np as ln
from lora_np import lora, serialization
sys.path.insert(0, {tests!r})
from test_peft_format import adapted

kill_at = int(sys.argv[2])
calls = []
real = os.replace

def replace(*args):
    calls.append(args)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)

serialization.os.replace = replace
lora.save_adapter(adapted(seed=2, r=3, alpha=9, targets=("q",)), sys.argv[1])
"""


@pytest.mark.parametrize("kill_at, loads", [(1, "old"), (2, "old"), (3, "new")])
def test_a_save_killed_between_its_renames_leaves_a_whole_adapter(tmp_path, kill_at, loads):
    """SIGKILL at each rename of a save (the staged config, the weights, the config): the
    folder then loads as the old adapter or the new one, never fails and never mixes them;
    the next save removes what was left."""
    x, y = adapted(seed=1), adapted(seed=2, r=3, alpha=9, targets=("q",))
    folder = lora.save_adapter(x, tmp_path / "a")
    (folder / ".keep").write_text("mine")
    (folder / ".adapter_config.json.notes.tmp").write_text("not the library's")
    script = KILLED_SAVE.format(tests=os.path.dirname(__file__))
    run = subprocess.run([sys.executable, "-c", script, str(folder), str(kill_at)])
    assert run.returncode == -9
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) > 4, left  # the killed save left temporary files
    assert same(loaded_state(folder), adapter_state(x if loads == "old" else y))
    lora.save_adapter(x, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".adapter_config.json.notes.tmp", ".keep", CONFIG, WEIGHTS]
    )
    assert same(loaded_state(folder), adapter_state(x))


def test_a_config_edited_after_saving_is_read_as_it_is(tmp_path):
    folder = lora.save_adapter(adapted(), tmp_path / "a")
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps(config | {"lora_alpha": 8}))
    model = make_net()
    lora.load_adapter(model, folder)
    assert all(layer.scaling == 4.0 for _, layer in lora.lora_layers(model))


# ------------------------------------------------------------------ hostile and odd files
def test_gigabytes_after_the_tensors_are_refused_without_reading_them(tmp_path):
    folder = lora.save_adapter(adapted(), tmp_path / "a")
    weights = folder / WEIGHTS
    size = weights.stat().st_size
    os.truncate(weights, size + 2 * 2**30)  # sparse: 2 GiB of zeros that take no disk
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match=r"2147483648 bytes after the tensors"):
        lora.load_adapter(make_net(), folder)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 256 * 1024, f"loading grew the process by {grown} KiB"


def _bf16_file(path, arrays):
    """A safetensors file with bf16 tensors, written byte by byte (NumPy has no bfloat16)."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in arrays.items():
        top = (np.ascontiguousarray(array, np.float32).view(np.uint32) >> 16).astype("<u2")
        chunks.append(top.tobytes())
        header[name] = {
            "dtype": "BF16",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + top.nbytes],
        }
        offset += top.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def test_a_bf16_adapter_loads_as_float32(tmp_path):
    model = adapted()
    for _, layer in lora.lora_layers(model):  # values bf16 holds exactly: low 16 bits zero
        for p in (layer.A, layer.B):
            p.data = (p.data.view(np.uint32) & 0xFFFF0000).view(np.float32)
    folder = lora.save_adapter(model, tmp_path / "a")
    arrays = {}
    for name, layer in lora.lora_layers(model):
        arrays[f"base_model.model.{name}.lora_A.weight"] = layer.A.data
        arrays[f"base_model.model.{name}.lora_B.weight"] = layer.B.data
    _bf16_file(folder / WEIGHTS, arrays)
    state = loaded_state(folder)
    assert same(state, adapter_state(model))
    assert all(a.dtype == np.float32 for a, _, _ in state.values())


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS])
def test_a_folder_where_a_file_belongs_says_so(tmp_path, name):
    folder = lora.save_adapter(adapted(), tmp_path / "a")
    (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(IsADirectoryError, match=rf"{name} is a folder; expected a file"):
        lora.load_adapter(make_net(), folder)
    with pytest.raises(IsADirectoryError, match=rf"{name}: it is a folder"):
        lora.save_adapter(adapted(), folder)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS]  # nothing written


def test_target_modules_that_match_no_layer_are_refused_even_when_the_keys_fit(tmp_path):
    folder = lora.save_adapter(adapted(), tmp_path / "a")
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps(config | {"target_modules": ["attn_proj"]}))
    model = make_net()
    with pytest.raises(ValueError, match=r"\['attn_proj'\] match no Linear layer"):
        lora.load_adapter(model, folder)
    assert list(lora.lora_layers(model)) == []
