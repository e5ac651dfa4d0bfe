"""The backend switch: NumPy by default, CuPy on request, clear errors, nothing half-changed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend

PACKAGE = Path(ln.__file__).resolve().parent


def test_numpy_is_the_default():
    assert backend.get_backend() == "numpy"
    assert backend.xp is np and backend.np is np
    assert type(ln.Tensor([1.0]).data) is np.ndarray


@pytest.mark.parametrize("bad", ["torch", "NUMPY", "", "cpu"])
def test_unknown_backend_lists_the_valid_ones_and_changes_nothing(bad):
    with pytest.raises(ValueError) as info:
        backend.set_backend(bad)
    message = str(info.value)
    assert repr(bad) in message and "'numpy'" in message and "'cupy'" in message
    assert backend.get_backend() == "numpy" and backend.xp is np


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail as it does where CuPy is not installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_cupy_not_installed_says_how_to_install_and_changes_nothing(no_cupy):
    ln.manual_seed(3)
    expected_draw = np.random.default_rng(3).random()
    with pytest.raises(RuntimeError) as info:
        backend.set_backend("cupy")
    message = str(info.value)
    assert "not installed" in message and "pip install cupy" in message
    assert backend.get_backend() == "numpy" and backend.xp is np
    assert backend.rng().random() == expected_draw  # the generator was not reset either
    assert not backend.is_gpu_available()


def _fake_cupy(device_count):
    """A module that imports as ``cupy`` but whose CUDA runtime finds no GPU."""
    module = types.ModuleType("cupy")

    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    module.cuda = types.SimpleNamespace(runtime=runtime)
    return module


@pytest.mark.parametrize(
    ("device_count", "shown"),
    [
        (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "no usable GPU"),
        (0, "no GPU"),
    ],
)
def test_cupy_without_a_gpu_says_how_to_fix_it(monkeypatch, device_count, shown):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count))
    with pytest.raises(RuntimeError) as info:
        backend.set_backend("cupy")
    assert shown in str(info.value) and "pip install cupy" in str(info.value)
    assert backend.get_backend() == "numpy" and backend.xp is np
    assert not backend.is_gpu_available()


def test_environment_variable_chooses_the_backend():
    code = "import lora_np as ln; print(ln.backend.get_backend())"
    env = dict(os.environ, LORA_NP_BACKEND=" NumPy ")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"
    env["LORA_NP_BACKEND"] = "tpu"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "'tpu'" in result.stderr and "'cupy'" in result.stderr


def test_manual_seed_makes_draws_repeatable():
    ln.manual_seed(7)
    first = backend.to_numpy(backend.rng().random(5))
    ln.manual_seed(7)
    np.testing.assert_array_equal(backend.to_numpy(backend.rng().random(5)), first)
    ln.manual_seed(8)
    assert not np.array_equal(backend.to_numpy(backend.rng().random(5)), first)


def test_to_numpy_accepts_tensors_arrays_and_lists():
    t = ln.Tensor([[1.0, 2.0]])
    for value in (t, t.data, [[1.0, 2.0]]):
        out = ln.to_numpy(value)
        assert type(out) is np.ndarray
        np.testing.assert_array_equal(out, [[1.0, 2.0]])


def test_scatter_add_adds_repeated_indices():
    target = np.zeros((4, 2))
    backend.scatter_add(target, np.array([1, 1, 3, 1]), np.ones((4, 2)))
    np.testing.assert_array_equal(target, [[0, 0], [3, 3], [0, 0], [1, 1]])


def test_only_backend_imports_numpy_or_cupy():
    # backend_strict is the test backend that backend.py loads: it wraps NumPy itself, since
    # importing backend back would be an import cycle.
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("backend.py", "backend_strict.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [
                f"{path.name}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in ("numpy", "cupy", "cupyx")
            ]
    assert not offenders, offenders


def test_backend_fixture_makes_the_backend_active(backend_name):
    assert backend.get_backend() == backend_name
    t = ln.Tensor(np.arange(6.0).reshape(2, 3))
    assert backend.array_module(t.data) == backend_name
    assert backend.array_module((t @ t.T).data) == backend_name
    ln.manual_seed(0)
    draw = backend.rng().random(3)
    assert backend.array_module(draw) == backend_name
    target = backend.xp.zeros(3)
    backend.scatter_add(target, backend.xp.asarray([0, 0, 2]), backend.xp.ones(3))
    np.testing.assert_array_equal(backend.to_numpy(target), [2, 0, 1])


def test_set_blas_threads_reaches_numpys_openblas():
    """Where NumPy's wheel carries OpenBLAS, set_blas_threads must really change its thread
    count: threadpoolctl releases before 3.5 do not find NumPy 2's scipy-openblas and silently
    change nothing (then two test workers on a busy machine slow each other 5x)."""
    from threadpoolctl import threadpool_info

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if "openblas" not in blas:
        pytest.skip(f"NumPy here uses {blas}, which threadpoolctl may not control")
    backend.set_blas_threads(1)  # as every test process already does (conftest.py)
    threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert threads == [1], f"threadpoolctl sees BLAS thread counts {threads} (NumPy: {blas})"
