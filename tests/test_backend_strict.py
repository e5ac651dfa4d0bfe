"""The numpy-strict test backend refuses what CuPy refuses, and allows what CuPy allows.

CuPy's rules (cupy.ndarray): ``__array__`` raises TypeError ("Implicit conversion to a NumPy
array is not allowed"); a ufunc or operator with a host ndarray operand raises TypeError;
NumPy functions on device arrays alone dispatch to CuPy (``__array_function__``); scalars mix
freely; ``float()``/``int()``/``format()`` of a one-element array and ``.item()``/``.tolist()``
work; ``cupy.asarray(host)`` and ``.get()`` are the explicit ways across.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from lora_np import backend
from lora_np.backend_strict import StrictArray, xp


@pytest.fixture
def a():
    return xp.asarray([[1.0, 2.0], [3.0, 4.0]], dtype=xp.float32)


@pytest.mark.parametrize(
    "convert",
    [np.asarray, np.array, np.ascontiguousarray, lambda x: np.float64(x) + np.zeros(2)],
    ids=["asarray", "array", "ascontiguousarray", "float64-of-array"],
)
def test_implicit_conversion_is_refused(a, convert):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        convert(a)


def test_no_back_doors_to_the_buffer(a):
    with pytest.raises(AttributeError):
        a.__array_interface__  # noqa: B018
    with pytest.raises(TypeError):
        memoryview(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.mean([a, a])  # a list of device arrays: NumPy would convert each one


@pytest.mark.parametrize(
    "mix",
    [
        lambda s, h: s + h,
        lambda s, h: h + s,
        lambda s, h: s @ h,
        lambda s, h: h @ s,
        lambda s, h: s * h,
        lambda s, h: np.add(s, h),
        lambda s, h: np.maximum(h, s),
        lambda s, h: np.einsum("ij,jk->ik", s, h),
        lambda s, h: np.concatenate([s, h]),
        lambda s, h: xp.matmul(s, h),
        lambda s, h: s == h,
    ],
)
def test_mixing_with_a_host_array_is_refused(a, mix):
    with pytest.raises(TypeError):
        mix(a, np.ones((2, 2), dtype=np.float32))


@pytest.mark.parametrize(
    "call",
    [lambda s: s + [1.0, 2.0], lambda s: xp.exp([1.0, 2.0]), lambda s: xp.maximum(s, [0.0, 0.0])],
    ids=["operator", "xp-ufunc", "xp-ufunc-mixed"],
)
def test_ufuncs_refuse_lists_as_cupy_does(a, call):
    with pytest.raises(TypeError, match="unsupported operand type list"):
        call(a)


def test_in_place_and_out_refuse_host_arrays(a):
    h = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(TypeError):
        a += h
    with pytest.raises(TypeError):
        np.add(a, a, out=h)
    with pytest.raises(TypeError):
        a[0] = np.array([5.0, 6.0])
    with pytest.raises(TypeError):
        a[0] = [5.0, 6.0]


def test_what_goes_through_xp_stays_strict(a):
    for result in (
        a + 1,
        2.0 * a,
        a * np.float32(3),
        a @ a,
        -a,
        a.T,
        a.reshape(4),
        a.sum(axis=0),
        a.astype(xp.float64),
        a[0],
        a[a > 2],
        xp.exp(a),
        np.exp(a),  # NumPy functions dispatch to the backend, as they do to CuPy
        np.einsum("ij,jk->ik", a, a),
        xp.stack([a, a]),
        xp.linalg.svd(a)[1],
        xp.random.default_rng(0).standard_normal((2, 3)),
    ):
        assert isinstance(result, StrictArray), type(result)
    u, s, vt = xp.linalg.svd(a)
    assert all(isinstance(x, StrictArray) for x in (u, s, vt))
    assert backend.to_numpy(a @ a).tolist() == [[7.0, 10.0], [15.0, 22.0]]
    b = a
    b += 1  # in place keeps the object
    assert b is a and a.get()[0, 0] == 2.0


def test_scalars_and_explicit_exits(a):
    total = a.sum()
    assert isinstance(total, StrictArray) and total.ndim == 0
    assert float(total) == 10.0 and int(a[0, 1]) == 2 and bool(a[1, 1] > 3)
    assert f"{total:.2f}" == "10.00" and a.item(0) == 1.0 and a.tolist()[1] == [3.0, 4.0]
    assert len(a) == 2 and [row.shape for row in a] == [(2,), (2,)]
    e = xp.exp(0.0)  # a ufunc on a scalar alone: a 0-d backend array, as cupy.exp(0.0)
    assert isinstance(e, StrictArray) and e.ndim == 0 and float(e) == 1.0
    host = a.get()
    assert type(host) is np.ndarray and host.dtype == np.float32
    host[0, 0] = 99  # a copy
    assert a.get()[0, 0] == 1.0
    assert type(backend.to_numpy(a)) is np.ndarray


def test_indexing_and_scatter(a):
    assert a[np.array([1, 0])].get().tolist() == [[3.0, 4.0], [1.0, 2.0]]  # host index: allowed
    assert a[xp.asarray([1])].shape == (1, 2)
    a[0] = xp.asarray([5.0, 6.0])
    a[1, 1] = 7.0
    assert a.get().tolist() == [[5.0, 6.0], [3.0, 7.0]]
    target = xp.zeros(3)
    np.add.at(target, xp.asarray([0, 0, 2]), xp.asarray([1.0, 2.0, 3.0]))
    np.add.at(target, np.array([1]), xp.asarray([1.0]))  # host indices: allowed, as indexing
    with pytest.raises(TypeError):
        np.add.at(target, xp.asarray([1]), np.array([1.0]))
    assert target.get().tolist() == [3.0, 1.0, 3.0]


def test_copy_and_pickle_keep_the_type(a):
    for clone in (copy.copy(a), copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert isinstance(clone, StrictArray) and clone.get().tolist() == a.get().tolist()


def test_the_backend_switch(a):
    backend.set_backend("numpy-strict")
    try:
        assert backend.get_backend() == "numpy-strict" and backend.xp is xp
        assert isinstance(backend.rng().standard_normal(3), StrictArray)
        assert backend.array_module(a) == "numpy-strict"
        assert backend.array_module(np.zeros(1)) == "numpy"
        from lora_np import Tensor

        t = Tensor([[1.0, 2.0]], requires_grad=True)
        assert isinstance(t.data, StrictArray)
        (t * t).sum().backward()
        assert t.grad is not None and backend.to_numpy(t.grad).tolist() == [[2.0, 4.0]]
        with pytest.raises(TypeError, match="Implicit conversion"):
            np.asarray(t.data)
    finally:
        backend.set_backend("numpy")
    assert backend.xp is np
