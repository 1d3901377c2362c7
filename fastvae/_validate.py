"""Input checks shared by the public API: clear errors naming the argument, one copy at most.

Every public op converts its array arguments here before a kernel sees them, so the kernels can
assume C-contiguous arrays of one floating dtype (float32 or float64) with consistent shapes.
"""
import importlib
import numbers

import numpy as np

from ._device import is_device_array, on_gpu
from ._device import xp as array_module_of

FLOAT_DTYPES = (np.float32, np.float64)


def same_device(name, a, forward, forward_on_gpu):
    """Refuse a gradient that is not on the device where its forward ran."""
    if is_device_array(a) != forward_on_gpu:
        where, kind = ("a CUDA device", "NumPy") if forward_on_gpu else ("the CPU", "CuPy")
        raise TypeError(f"{name} is a {kind} array, but {forward} ran on {where}; move {name} "
                        f"there first (cupy.asarray / cupy.asnumpy)")


def backend_module(stem, arrays):
    """The backend module ``fastvae.<cpu|cuda>.<stem>`` for the array types of ``arrays``."""
    if on_gpu(arrays):
        try:
            return importlib.import_module(f"fastvae.cuda.{stem}")
        except ModuleNotFoundError:
            raise NotImplementedError(
                f"CuPy arrays were passed, but this fastvae build has no CUDA kernel for "
                f"{stem!r}; pass NumPy arrays to run on the CPU") from None
    return importlib.import_module(f"fastvae.cpu.{stem}")


def check_float_dtype(name, a):
    kind = a.dtype.kind
    if kind == "f":
        return
    what = {"b": "boolean", "i": "integer", "u": "unsigned integer", "c": "complex"}.get(
        kind, f"{a.dtype}")
    raise TypeError(f"{name} must be a floating array (float32 or float64), got {what} dtype "
                    f"{a.dtype}; convert it explicitly, e.g. {name}.astype(np.float32)")


def common_dtype(arrays):
    """float64 if any input is float64 (or wider), else float32 (float16 is widened)."""
    widest = np.result_type(*[a.dtype for a in arrays])
    return np.dtype(np.float64) if widest.itemsize >= 8 else np.dtype(np.float32)


def float_arrays(spec, dtype=None):
    """Convert named arrays to C-contiguous arrays of one floating dtype.

    spec: {name: (value, shape_doc)} where shape_doc is a tuple of dimension names, e.g.
    ("N", "D"); its length is the required rank. Every dimension must be >= 1. Returns the
    arrays in spec order. Copies only what is non-contiguous or of another dtype.
    """
    arrays = {}
    for name, (value, dims) in spec.items():
        if value is None:
            raise TypeError(f"{name} is required, got None")
        a = value if hasattr(value, "dtype") and hasattr(value, "shape") else np.asarray(value)
        check_float_dtype(name, a)
        if a.ndim != len(dims):
            raise ValueError(f"{name} must be {len(dims)}-D with shape ({', '.join(dims)}), "
                             f"got shape {tuple(a.shape)}")
        if 0 in a.shape:
            raise ValueError(f"{name} must not be empty: shape ({', '.join(dims)}) needs every "
                             f"dimension >= 1, got {tuple(a.shape)}")
        arrays[name] = a
    dtype = common_dtype(arrays.values()) if dtype is None else np.dtype(dtype)
    xp = array_module_of("cuda" if on_gpu(arrays.values()) else "cpu")
    return [xp.ascontiguousarray(a, dtype=dtype) for a in arrays.values()]


def match_dims(**named_shapes):
    """Check that dimensions with the same letter agree.

    named_shapes: {arg_name: (array, ("N", "D"))}. Raises ValueError naming both arguments.
    """
    seen = {}
    for name, (a, dims) in named_shapes.items():
        for axis, (dim, size) in enumerate(zip(dims, a.shape)):
            if dim in seen and seen[dim][1] != size:
                other, other_size = seen[dim]
                raise ValueError(f"shape mismatch on {dim}: {name} has {size} along axis {axis} "
                                 f"({name} is ({', '.join(dims)}) = {tuple(a.shape)}), but "
                                 f"{other} has {dim} = {other_size}")
            seen.setdefault(dim, (name, size))


def choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def real_scalar(name, value, low=None, high=None, low_inclusive=True):
    """A finite real number within [low, high] (or (low, high] when low_inclusive=False)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def integer(name, value, low=0, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}], "
                         f"got {value}")
    return value
