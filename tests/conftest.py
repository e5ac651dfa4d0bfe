"""Shared test setup: the PyTorch cross-check switch, the backend fixture, hypothesis settings.

- Tests marked ``crosscheck`` compare lora_np against PyTorch/PEFT. Without PyTorch they are
  skipped, except under ``LORA_NP_CROSSCHECK=1`` (what ``make crosscheck`` sets): there a
  missing PyTorch stops the run with an error, so a cross-check can never pass by skipping.
- ``backend_name`` runs a test once per array backend: ``"numpy"`` and ``"numpy-strict"``
  always, ``"cupy"`` only when CuPy sees a GPU.
- Tests marked ``gpu`` are skipped with a reason when no GPU is usable.
- ``engine_mode`` runs a test once with the engine's fast paths and once in plain mode (every
  op its plain formula, ``lora_np.plain``), as minitorch runs one op suite over two backends.
  The op-level test modules (autograd, functional, gradcheck, nn, lora) request it for every
  test with ``pytestmark = pytest.mark.usefixtures("engine_mode")``; tests/test_fastpaths.py
  compares the two modes directly instead.
- Every test process uses one BLAS thread, as every notebook and experiment script does: the
  course's matrices are small, and two pytest-xdist workers that each start a BLAS thread per
  core slowed a checker's call from 0.6 s to over 20 s (its time limit) on a busy 2-core CI
  machine. The BLAS *kernel* variables (OPENBLAS_CORETYPE, ...) are left as the machine sets them.
- ``rerun_miss`` judges a rerun experiment point against its stored result within a tolerance
  measured across BLAS kernels (tests/test_experiments_*.py).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CROSSCHECK_REQUIRED = os.environ.get("LORA_NP_CROSSCHECK", "") == "1"
_CROSSCHECK_HELP = "run `make crosscheck`, which installs torch==2.13.0 and peft into .venv"


@functools.cache
def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_configure(config):
    from lora_np import backend

    backend.set_blas_threads(1)
    if not CROSSCHECK_REQUIRED:
        return
    missing = [name for name in ("torch", "peft") if importlib.util.find_spec(name) is None]
    if not missing and not _torch_importable():
        missing = ["torch (installed but fails to import)"]
    if missing:
        raise pytest.UsageError(
            f"LORA_NP_CROSSCHECK=1 but {', '.join(missing)} cannot be imported, so the "
            f"cross-checks would only be skipped; {_CROSSCHECK_HELP}"
        )


# The files that take longest, first: under pytest-xdist (make test) a long file that starts
# last leaves the other worker idle at the end. Measured on 2 cores: the student edition's
# execution (test_editions.py) is the longest, then notebooks 08, 07, 05 and 06 and the reruns.
LONGEST_FIRST = ("test_editions.py", "08_", "07_", "05_", "06_", "test_experiments_")


def _longest_first(item) -> int:
    name = item.path.name
    return next((i for i, p in enumerate(LONGEST_FIRST) if name.startswith(p)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_longest_first)  # stable: each file's tests keep their order
    crosscheck_items = [item for item in items if item.get_closest_marker("crosscheck")]
    if crosscheck_items and not CROSSCHECK_REQUIRED and not _torch_importable():
        skip = pytest.mark.skip(reason=f"PyTorch is not installed; {_CROSSCHECK_HELP}")
        for item in crosscheck_items:
            item.add_marker(skip)

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _gpu_available():
        skip = pytest.mark.skip(reason="needs CuPy and a GPU (pip install -e '.[gpu]')")
        for item in gpu_items:
            item.add_marker(skip)


@functools.cache
def _gpu_available() -> bool:
    # Imported here, not at the top, so that a broken lora_np cannot stop tests that ignore it.
    from lora_np import backend

    return backend.is_gpu_available()


def _import_or_skip(name: str):
    if CROSSCHECK_REQUIRED:
        return importlib.import_module(name)  # checked in pytest_configure; fail loudly if not
    return pytest.importorskip(name, reason=f"{name} is not installed; {_CROSSCHECK_HELP}")


@pytest.fixture(scope="session")
def torch():
    """The ``torch`` module (skips the test when it is missing, unless LORA_NP_CROSSCHECK=1)."""
    return _import_or_skip("torch")


@pytest.fixture(scope="session")
def peft():
    """The ``peft`` module (skips the test when it is missing, unless LORA_NP_CROSSCHECK=1)."""
    return _import_or_skip("peft")


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        # numpy-strict: NumPy arrays that refuse host NumPy as CuPy's do (lora_np.backend_strict),
        # so every backend test also proves its path GPU-safe on a CPU.
        names = ["numpy", "numpy-strict"] + (["cupy"] if _gpu_available() else [])
        metafunc.parametrize("backend_name", names, indirect=True, ids=names)


@pytest.fixture
def backend_name(request):
    """Each available backend's name, made the active backend for the test; numpy afterwards."""
    from lora_np import backend

    backend.set_backend(request.param)
    try:
        yield request.param
    finally:
        backend.set_backend("numpy")


@pytest.fixture(params=["fast", "plain"])
def engine_mode(request):
    """The engine mode, "fast" (the speed tricks) or "plain" (every op its plain formula), set
    for the test and restored afterwards; either is set explicitly, whatever LORA_NP_PLAIN
    says."""
    from lora_np import fastpaths

    with fastpaths.plain(request.param == "plain"):
        yield request.param


@pytest.fixture(scope="session")
def load_experiment():
    """``load_experiment("07_finetune")`` imports ``experiments/07_finetune.py`` as a module
    (the scripts are not a package; their names start with a digit)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "experiments"
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(
                f"experiment_{name}", folder / f"{name}.py"
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load


def rerun_miss(what: str, new: float, stored: float, seeds, tolerance: float, relative=False):
    """Why ``new``, a rerun of one stored experiment point, is not the stored result; None when
    it is.

    The same result means: within ``tolerance`` of ``stored`` (``relative``: a fraction of it)
    and inside the stored seeds' range widened by that tolerance. A run repeats bit for bit only
    under the BLAS kernel that made it; another kernel (another CPU) rounds float32 sums in
    another order and training amplifies that, so each test sets ``tolerance`` from the spread
    it measured across kernels, with margin, and records that spread beside it.
    """
    allowed = tolerance * abs(stored) if relative else tolerance
    low, high = min(seeds) - allowed, max(seeds) + allowed
    if abs(new - stored) > allowed:
        return f"{what}: rerun {new:.4g} vs stored {stored:.4g}, more than {allowed:.3g} apart"
    if not low <= new <= high:
        return f"{what}: rerun {new:.4g} outside the stored seeds' range widened to [{low:.4g}, {high:.4g}]"
    return None


@pytest.fixture(name="rerun_miss", scope="session")
def rerun_miss_fixture():
    """:func:`rerun_miss`, for the rerun tests."""
    return rerun_miss
