"""A NumPy-backed stand-in for CuPy, so that the GPU tests of the user paths also run here.

On a machine without a GPU, ``tests/gpu`` runs each test twice: ``[gpu]`` with the real CuPy
(skipped here, with the reason) and ``[host]`` with this module installed as ``sys.modules["cupy"]``
and fastvae's CUDA launchers running their unchanged kernels (kernels/*.cu) through the host
harness (tests/cuda_host). It checks fastvae's device paths (dispatch, array-module choice,
host/device copies, the launchers' arguments) and the tests themselves, not CuPy.

It is as strict as CuPy where fastvae could go wrong:

- ``ndarray`` is not a NumPy array: ``np.asarray(a)``, NumPy's buffer protocol and Numba refuse
  it (CuPy: "Implicit conversion to a NumPy array is not allowed"); ``a.get()``,
  ``cupy.asnumpy(a)`` copy to the host; ``type(a).__module__`` is "cupy".
- Mixing NumPy arrays (ndim >= 1) into its ufuncs, functions or item assignment raises TypeError,
  as CuPy does; only ``asarray``/``array`` take host arrays (the host-to-device copy).
- Reductions and indexing give 0-d arrays, not NumPy scalars.
"""
import sys
import time
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__version__ = "0.0-host-stand-in"

def _refuse_host_arrays(values, where):
    for v in values:
        if isinstance(v, np.ndarray) and v.ndim > 0:
            raise TypeError(f"Unsupported type {type(v)} in {where} (the CuPy stand-in refuses "
                            f"NumPy arrays, as CuPy does: copy them with cupy.asarray first)")
        if isinstance(v, (list, tuple)):
            _refuse_host_arrays(v, where)


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic) and x.dtype.kind in "biufc":
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class Device:
    def __init__(self, device_id=0):
        self.id = int(device_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class ndarray(NDArrayOperatorsMixin):
    """A device array: a NumPy array that NumPy does not accept as one."""
    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host_arrays(inputs, f"cupy.{ufunc.__name__}")
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host_arrays(args, f"numpy.{func.__name__} on CuPy arrays")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("ctypes", "base"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))
        return _wrap(attr)

    # the attributes that are plain values (shape tuples, dtypes, counts)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    device = property(lambda self: Device(0))

    def get(self, stream=None, out=None):
        return self._a.copy()

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        _refuse_host_arrays([value], "ndarray.__setitem__")
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(np.asarray(v)) for v in self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __repr__(self):
        return "stand-in cupy." + repr(self._a)


ndarray.__module__ = "cupy"   # what fastvae's "is this CuPy" checks read


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    host = a._a if isinstance(a, ndarray) else a
    return ndarray(np.array(host, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None):
    return a._a.copy() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def from_dlpack(x):
    raise TypeError("the CuPy stand-in has no device memory to share over DLPack; the DLPack "
                    "paths are tested on a real GPU only")


def _numpy_function(name):
    fn = getattr(np, name)

    def call(*args, **kwargs):
        _refuse_host_arrays(args, f"cupy.{name}")
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))
    call.__name__ = name
    return call


def __getattr__(name):
    """Every other NumPy name: dtypes and types as they are, functions taking device arrays."""
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):
        return attr
    return _numpy_function(name)


class _Stream:
    def synchronize(self):
        pass


class _Event:
    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    return (end.t - start.t) * 1e3


_runtime = types.SimpleNamespace(
    getDeviceProperties=lambda device_id: {"name": b"CuPy stand-in (host harness)",
                                           "totalGlobalMem": 1 << 30, "multiProcessorCount": 1},
    runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
    getDeviceCount=lambda: 1)
cuda = types.SimpleNamespace(is_available=lambda: True, Device=Device, runtime=_runtime,
                             get_current_stream=_Stream, Event=_Event,
                             get_elapsed_time=_elapsed_ms)
