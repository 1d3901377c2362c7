"""Device against CPU: the three-way tolerance of tests/helpers.py with the CPU backend as the
reference (float32: ``max|dev - cpu64| <= 2 max|cpu32 - cpu64| + atol``; float64: dev against
cpu64 within ``rtol64`` of the values' scale)."""
import numpy as np

from tests.helpers import assert_close3

from .conftest import is_device_array


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def _cast(inputs, dtype):
    return tuple(np.asarray(a, dtype) if isinstance(a, np.ndarray) else a for a in inputs)


def _scale(arrays):
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays if a.size]
    return max([1.0] + [float(f.max()) for f in finite if f.size])


def _host(dev, a):
    if isinstance(a, float):
        return np.float64(a)
    return dev.get(a)


def assert_matches_cpu(dev, run, inputs, dtype, rtol32=1e-6, rtol64=1e-12, name="out"):
    """run(*arrays) -> an array, a float or a tuple of them, computed on NumPy float64 inputs
    cast to ``dtype`` on the CPU backend and, moved by ``dev.put``, on the device. Every array
    result must come back as a device array of ``dtype``."""
    cpu64 = [np.asarray(r, np.float64) for r in _as_tuple(run(*_cast(inputs, np.float64)))]
    ins = _cast(inputs, dtype)
    cpu = [np.asarray(r) for r in _as_tuple(run(*ins))] if dtype == np.float32 else cpu64
    on_device = tuple(dev.put(a) if isinstance(a, np.ndarray) else a for a in ins)
    out = _as_tuple(run(*on_device))
    assert len(out) == len(cpu64), f"{name}: {len(out)} results, the CPU gave {len(cpu64)}"
    scale = _scale(cpu64)
    atol = (rtol32 if dtype == np.float32 else rtol64) * scale
    for i, (o, c, c64) in enumerate(zip(out, cpu, cpu64)):
        if not isinstance(o, float):
            assert is_device_array(o), f"{name}[{i}]: a {type(o).__name__}, not a device array"
            assert o.dtype == dtype, f"{name}[{i}]: dtype {o.dtype}, want {np.dtype(dtype)}"
        assert_close3(_host(dev, o), c, c64, atol=atol,
                      name=f"{name}[{i}] {np.dtype(dtype).name} on {dev.name}")
