"""The array library in use: NumPy on the CPU, or CuPy on an NVIDIA GPU.

This is the only module of ``lora_np`` that imports ``numpy`` or ``cupy`` (besides
``backend_strict``, the test backend it loads, which wraps NumPy itself). Everything else asks
this module for ``xp`` (the array module that computes) or ``np`` (host-side NumPy, for data
generation and files), so switching to a GPU changes no course code::

    import lora_np as ln
    ln.backend.set_backend("cupy")      # or LORA_NP_BACKEND=cupy before the import
    ln.backend.xp                       # -> the cupy module

Read ``xp`` through the module (``backend.xp``), never with ``from backend import xp``: the name
is rebound when the backend changes.
"""

from __future__ import annotations

import os

import numpy

np = numpy
"""Host NumPy, whatever the backend: synthetic data, files and plots live on the host."""

BACKENDS = ("numpy", "cupy", "numpy-strict")
"""``numpy-strict`` is a test backend: NumPy arrays that refuse to mix with host NumPy as CuPy's
do (``lora_np.backend_strict``), to prove on a CPU that a code path is safe on a GPU."""

xp = numpy
"""The array module that does the computing: ``numpy`` or ``cupy``."""

name = "numpy"
"""The name of the backend in use, one of :data:`BACKENDS`."""

_seed = 0
_rng = numpy.random.default_rng(_seed)

_CUPY_HELP = (
    "Install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` "
    "(or `pip install -e '.[gpu]'`), on a machine with an NVIDIA GPU and its driver."
)


def _load_cupy():
    """Import CuPy and check a GPU is visible; raise a RuntimeError that says how to fix it."""
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            f"the 'cupy' backend needs CuPy, which is not installed. {_CUPY_HELP}"
        ) from err
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA raises its own error types when no driver is present
        raise RuntimeError(f"the 'cupy' backend found no usable GPU ({err}). {_CUPY_HELP}") from err
    if n_devices < 1:
        raise RuntimeError(f"the 'cupy' backend found no GPU (device count 0). {_CUPY_HELP}")
    return cupy


def set_backend(backend_name: str) -> None:
    """Choose the array library: ``"numpy"`` (default) or ``"cupy"``.

    Tensors made before the switch keep their arrays; combining them with new ones in one op
    raises an error instead of silently copying between host and device. The random generator
    restarts from the last seed given to :func:`manual_seed` (0 if none).
    """
    global xp, name, _rng
    if backend_name not in BACKENDS:
        raise ValueError(
            f"unknown backend {backend_name!r}; expected one of {', '.join(map(repr, BACKENDS))}"
        )
    if backend_name == "numpy-strict":
        from . import backend_strict

        module = backend_strict.xp
    else:
        module = numpy if backend_name == "numpy" else _load_cupy()
    xp, name = module, backend_name
    _rng = xp.random.default_rng(_seed)


def get_backend() -> str:
    """The name of the backend in use."""
    return name


def is_gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU (used to add GPU tests only then)."""
    try:
        _load_cupy()
    except RuntimeError:
        return False
    return True


def array_module(array) -> str:
    """``"numpy"``, ``"cupy"`` or ``"numpy-strict"``: which backend an array belongs to.

    Anything but ``"numpy"`` is a device array: it must be copied to the host explicitly
    (:func:`to_numpy`)."""
    module = type(array).__module__
    if module.startswith("cupy"):
        return "cupy"
    return "numpy-strict" if module == "lora_np.backend_strict" else "numpy"


def module_of(array):
    """The array module for ``array``: host NumPy for a host array, else the backend's."""
    return numpy if array_module(array) == "numpy" else xp


def to_numpy(array):
    """A host NumPy array from a NumPy or CuPy array (or anything ``numpy.asarray`` accepts)."""
    if hasattr(array, "numpy") and callable(array.numpy):  # a Tensor
        array = array.data
    if array_module(array) != "numpy":
        return array.get()  # the one explicit copy from the device (CuPy's or the strict test one)
    return numpy.asarray(array)


def manual_seed(seed: int) -> None:
    """Seed the generator behind every random initialisation and dropout mask."""
    global _rng, _seed
    _seed = seed
    _rng = xp.random.default_rng(seed)


def rng():
    """The backend's random generator (a ``numpy.random.Generator`` or CuPy's equivalent)."""
    return _rng


_requested = os.environ.get("LORA_NP_BACKEND", "numpy").strip().lower() or "numpy"
if _requested != "numpy":
    set_backend(_requested)


def set_blas_threads(n: int = 1) -> int:
    """Use ``n`` threads in the BLAS behind NumPy from now on; returns the number asked for.

    The course's matrices are small: a (64, 128) product finishes before a second thread has
    started, so extra threads only add waiting, and two processes that each start one thread
    per core can slow each other down by 40x on a busy machine. One thread also makes a run
    bit-reproducible on one machine (the order of a sum no longer depends on the thread split).
    Every notebook, ``make pretrain`` and ``make experiments`` call this with 1. A no-op for
    the GPU backend (CuPy does not use the host BLAS).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_blas_threads: n must be a whole number >= 1, got {n!r}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
    return n


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` where repeated indices add up (``numpy.add.at``)."""
    if name == "cupy":
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        numpy.add.at(target, index, values)
