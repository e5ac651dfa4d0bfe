"""A test backend that refuses to mix its arrays with NumPy's, the way CuPy does, on a CPU.

``LORA_NP_BACKEND=numpy-strict`` (or ``backend.set_backend("numpy-strict")``) computes with
NumPy, but every array the backend makes is a :class:`StrictArray`: a wrapper around an
``ndarray`` that behaves like a ``cupy.ndarray`` at the border between host and device. So a
code path that would break on a GPU breaks here too, on any machine, in CI:

* ``numpy.asarray(x)``, ``numpy.array(x)`` and anything that converts implicitly (matplotlib,
  ``np.mean`` of a list of arrays, ``float(np_array @ x)``) raise ``TypeError``, as CuPy's
  ``__array__`` does ("Implicit conversion to a NumPy array is not allowed");
* a ufunc or operator that mixes a strict array with a plain ``ndarray`` or a list raises
  ``TypeError`` (CuPy: "Unsupported type <class 'numpy.ndarray'>"), so does a NumPy function
  called with both kinds of array (CuPy's ``__array_function__`` does not accept host arrays),
  and so does ``x[i] = host_array_or_list`` (CuPy refuses it too);
* what CuPy allows works: Python and NumPy scalars with strict arrays; NumPy functions on
  strict arrays alone (they dispatch to the backend, as NumPy functions on CuPy arrays
  dispatch to CuPy); ``float(x)``, ``int(x)``, ``bool(x)`` of a one-element array; ``len``,
  iteration, ``format(x, ".3f")`` of a 0-d array; ``x.item()``, ``x.tolist()``; indexing
  with integers, slices, strict arrays or host integer arrays (CuPy copies those over);
* the sanctioned ways across: ``xp.asarray(host_array)`` in, ``backend.to_numpy(x)`` or
  ``x.get()`` out.

:data:`xp` is the module-like object the backend hands out: every NumPy function through it
takes strict arrays and returns strict arrays. This backend is a test tool (it is slower than
plain NumPy), not a third way to train.
"""

from __future__ import annotations

import types

import numpy  # backend.py loads this module, so it cannot import backend back (imports point down)

NDArrayOperatorsMixin = numpy.lib.mixins.NDArrayOperatorsMixin

_REFUSED = (
    "Implicit conversion to a NumPy array is not allowed (the numpy-strict backend refuses it "
    "as CuPy does). Use lora_np.backend.to_numpy(x) or x.get() to copy to the host."
)


def _mixed(what) -> TypeError:
    return TypeError(
        f"{what}: a numpy-strict array cannot be combined with a host numpy.ndarray (CuPy "
        "refuses this too: Unsupported type <class 'numpy.ndarray'>). Move the host array over "
        "with lora_np.backend.xp.asarray(...) or the strict one back with backend.to_numpy(...)"
    )


def _unwrap(value, what, allow_host: bool = False):
    """The plain ndarrays inside ``value`` (nested lists/tuples/dicts); host arrays refused."""
    if isinstance(value, StrictArray):
        return value._a
    if isinstance(value, numpy.ndarray):
        if allow_host:
            return value
        raise _mixed(what)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, what, allow_host) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, what, allow_host) for k, v in value.items()}
    return value


_SCALARS = (bool, int, float, complex)


def _ufunc_operands(inputs, what):
    """CuPy's ufuncs take device arrays and scalars only: no host arrays, no lists."""
    for value in inputs:
        if isinstance(value, numpy.ndarray):
            raise _mixed(what)
        if not isinstance(value, (StrictArray, numpy.generic, *_SCALARS)) and value is not None:
            raise TypeError(
                f"{what}: unsupported operand type {type(value).__name__} (CuPy's ufuncs take "
                "arrays of the backend and scalars only); wrap it with lora_np.backend.xp.asarray"
            )


def _wrap(value):
    """Strict arrays for the ndarrays (and NumPy scalars, as 0-d arrays) in ``value``."""
    if isinstance(value, numpy.ndarray):
        return StrictArray(value)
    if isinstance(value, numpy.generic):
        return StrictArray(numpy.asarray(value))
    if isinstance(value, tuple):
        return (
            type(value)(*map(_wrap, value))
            if hasattr(value, "_fields")
            else tuple(map(_wrap, value))
        )
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _index(key):
    """An index for the inner ndarray: strict arrays unwrapped, host integer arrays allowed."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, StrictArray):
        return key._a
    return key


class StrictArray(NDArrayOperatorsMixin):
    """An ``ndarray`` held at arm's length: NumPy cannot take it implicitly (see the module)."""

    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, array):
        self._a = array if isinstance(array, numpy.ndarray) else numpy.asarray(array)

    # -- the border ----------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_REFUSED)

    def get(self):
        """A host ``numpy.ndarray`` copy (CuPy's ``ndarray.get``)."""
        return self._a.copy()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        what = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        # ufunc.at(target, indices, values): the indices may be host integers, as in indexing
        _ufunc_operands(inputs[:1] + inputs[2:] if method == "at" else inputs, what)
        if method == "at":
            args = (_unwrap(inputs[0], what), _index(inputs[1]), *_unwrap(inputs[2:], what))
        else:
            args = _unwrap(inputs, what)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = _unwrap(out, what)
        result = getattr(ufunc, method)(*args, **kwargs)
        if method == "at":
            return None  # in place, like numpy.add.at
        if out is not None and len(out) == 1:
            return out[0]  # x += y keeps x the same object
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        if any(issubclass(t, numpy.ndarray) for t in types_):
            return NotImplemented  # NumPy then raises TypeError, as with CuPy and host arrays
        return _wrap(func(*_unwrap(args, func.__name__), **_unwrap(kwargs, func.__name__)))

    # -- what a cupy.ndarray offers --------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))
    real = property(lambda self: StrictArray(self._a.real))
    imag = property(lambda self: StrictArray(self._a.imag))

    def __getattr__(self, name):
        # Methods (reshape, sum, astype, ...) run on the inner array; their arrays come back
        # strict. Dunder lookups (NumPy's __array_interface__, the buffer protocol) are NOT
        # forwarded: those are exactly the implicit conversions CuPy does not offer.
        if name.startswith("__") or name == "_a":
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)

        def method(*args, **kwargs):
            what = f"ndarray.{name}"
            return _wrap(attr(*_unwrap(args, what), **_unwrap(kwargs, what)))

        return method

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        # CuPy takes a device array or a scalar here, not host arrays or lists
        _ufunc_operands((value,), "ndarray.__setitem__")
        self._a[_index(key)] = _unwrap(value, "ndarray.__setitem__")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __format__(self, spec):
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return repr(self._a).replace("array(", "strict_array(", 1)

    def __str__(self):
        return str(self._a)

    def __copy__(self):
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        return StrictArray(self._a.copy())

    def __reduce__(self):  # pickling (multiprocessing) keeps the type
        return (StrictArray, (self._a,))

    __hash__ = None


def _wrapped_callable(fn, name: str):
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args, name), **_unwrap(kwargs, name)))

    call.__name__ = getattr(fn, "__name__", name)
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


class _Namespace(types.ModuleType):
    """NumPy (or one of its submodules) seen through the strict border."""

    def __init__(self, inner, name: str):
        super().__init__(name)
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if isinstance(attr, types.ModuleType):
            wrapped = _Namespace(attr, f"{self.__name__}.{name}")
        elif isinstance(attr, numpy.ufunc):
            wrapped = _StrictUfunc(attr)
        elif isinstance(attr, type) or not callable(attr):
            wrapped = attr  # dtypes (xp.float32), constants (xp.inf, xp.newaxis)
        else:
            wrapped = _wrapped_callable(attr, name)
        setattr(self, name, wrapped)  # cache
        return wrapped


class _StrictUfunc:
    """``xp.exp`` and friends: the NumPy ufunc with CuPy's operand rules."""

    def __init__(self, ufunc):
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        if any(isinstance(a, StrictArray) for a in args):
            return self._u(*args, **kwargs)  # through StrictArray.__array_ufunc__
        _ufunc_operands(args, f"xp.{self.__name__}")  # scalars alone: a 0-d backend array
        return _wrap(self._u(*args, **kwargs))

    def __getattr__(self, name):  # .at, .reduce, .outer, nin, ...
        return getattr(self._u, name)


class _StrictGenerator:
    """``numpy.random.Generator`` whose draws come back as strict arrays."""

    def __init__(self, generator):
        self._g = generator

    def __getattr__(self, name):
        attr = getattr(self._g, name)
        return _wrapped_callable(attr, name) if callable(attr) else attr


class _Random(_Namespace):
    def default_rng(self, seed=None):
        return _StrictGenerator(numpy.random.default_rng(seed))


def _asarray(a, dtype=None, **kwargs):
    """Host data in, strict array out: the explicit transfer (``cupy.asarray``)."""
    return StrictArray(numpy.asarray(_unwrap(a, "asarray", allow_host=True), dtype=dtype, **kwargs))


def _array(a, dtype=None, copy=True, **kwargs):
    return StrictArray(
        numpy.array(_unwrap(a, "array", allow_host=True), dtype=dtype, copy=copy, **kwargs)
    )


def _asnumpy(a):
    return a.get() if isinstance(a, StrictArray) else numpy.asarray(a)


xp = _Namespace(numpy, "lora_np.backend_strict.xp")
"""NumPy through the strict border: the ``xp`` of the ``numpy-strict`` backend."""
xp.ndarray = StrictArray
xp.asarray = _asarray
xp.array = _array
xp.ascontiguousarray = _asarray
xp.asnumpy = _asnumpy
xp.random = _Random(numpy.random, "lora_np.backend_strict.xp.random")
