"""Counter-based random numbers: Philox4x32-10 and the standard normals derived from it.

The stream is a pure function of ``(seed, index)``, so any part of it can be generated
independently, in any order, on any backend, and a backward pass can regenerate the noise of its
forward pass instead of storing it.

Stream layout (the specification is fastvae/_reference.py: ``philox4x32_10``, ``seed_to_key``,
``philox_blocks``, ``uniform_from_bits``, ``normal``):

- ``seed`` in [0, 2^64) gives the Philox key ``(k0, k1) = (seed & 0xffffffff, seed >> 32)``.
- Numbers are indexed by a global index ``g = offset + j`` (j the C-order flat index of the
  output). Index g lives in lane ``g % 4`` of Philox block ``b = g // 4``, whose counter is
  ``(b & 0xffffffff, b >> 32, 0, 0)``.
- ``uniform``: ``u = ((bits >> 9) + 0.5) * 2^-23`` of the lane's 32-bit word: the values
  ``(2k + 1) 2^-24`` are exact in float32, so both dtypes and all backends give the same numbers,
  in the open interval (0, 1).
- ``normal``: block b's four normals are ``(r cos t, r sin t, r' cos t', r' sin t')`` with the
  float32 uniforms u0..u3 of the block, ``r = sqrt(-2 log u0)``, ``t = 2 pi u1``,
  ``r' = sqrt(-2 log u2)``, ``t' = 2 pi u3`` (Box-Muller).
- ``offset`` counts numbers, not blocks: ``normal(m, seed, offset=n)`` continues exactly where
  ``normal(n, seed)`` stopped, i.e. ``normal(n + m, seed) == concat(normal(n, seed),
  normal(m, seed, offset=n))``, whatever n % 4 is. Streams of different seeds are independent;
  within a seed, disjoint index ranges give independent numbers.

Precision: the Philox words and uniforms are bit-identical on every backend. float64 normals
match the reference to ~1e-15; float32 normals are computed in float32 and agree with the
float64 reference to ~5e-7 absolute (see fastvae/cpu/random.py).

Backends: ``device="cpu"`` (Numba kernels, NumPy arrays) or ``device="cuda"`` (kernels/random.cu,
CuPy arrays): the same seed and offset give the same uniforms on both.
"""
import operator

import numpy as np

from fastvae import _device
from fastvae._reference import INDEX_LIMIT as _INDEX_LIMIT   # offset + size stays below 2^62
from fastvae.cpu import random as _cpu

__all__ = ["philox4x32_10", "normal", "uniform"]

_UINT32_MAX = 0xFFFFFFFF


def _as_uint32(values, name):
    """Integer array-like with every value in [0, 2^32) -> uint32 array, else TypeError."""
    a = np.asarray(values)
    if a.dtype.kind not in "ui" or a.dtype == np.bool_:
        raise TypeError(f"{name} must be an integer array convertible to uint32, got dtype "
                        f"{a.dtype}")
    if a.size and (a.min() < 0 or a.max() > _UINT32_MAX):
        raise TypeError(f"{name} must hold values in [0, 2**32) to convert to uint32, got "
                        f"values in [{a.min()}, {a.max()}]")
    return a.astype(np.uint32)


def _as_int(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _check_stream(shape, seed, offset, dtype):
    """Validate the arguments of normal/uniform -> (shape tuple, seed, offset, dtype)."""
    shape_seq = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    shape_t = tuple(_as_int(s, "shape entries") for s in shape_seq)
    if any(s < 0 for s in shape_t):
        raise ValueError(f"shape entries must be non-negative, got {shape_t}")
    seed = _as_int(seed, "seed")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    offset = _as_int(offset, "offset")
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    size = int(np.prod(shape_t, dtype=object)) if shape_t else 1
    if offset + size >= _INDEX_LIMIT:
        raise ValueError(f"offset + size must be below 2**62, got {offset} + {size}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return shape_t, seed, offset, dtype


def philox4x32_10(counters, key):
    """Philox4x32-10 block function (Salmon et al. 2011; Random123, cuRAND).

    counters (..., 4) integers in [0, 2^32), key (2,) integers in [0, 2^32) -> (..., 4) uint32.
    Raises TypeError for non-integer input or values outside uint32, ValueError for a last
    dimension other than 4 or a key whose shape is not (2,).
    """
    counters = _as_uint32(counters, "counters")
    key = _as_uint32(key, "key")
    if counters.ndim == 0 or counters.shape[-1] != 4:
        raise ValueError(f"counters must have shape (..., 4), got {counters.shape}")
    if key.shape != (2,):
        raise ValueError(f"key must have shape (2,), got {key.shape}")
    return _cpu.philox4x32_10(counters, key)


def _kernels_of(device):
    if device == "cpu":
        return _cpu
    if device == "cuda":
        return _device.kernels("cuda").random   # clear RuntimeError without CuPy or a GPU
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def normal(shape, seed, offset=0, dtype=np.float32, device="cpu"):
    """Standard normals from the Philox stream of ``seed``, starting at index ``offset``.

    shape: int or tuple of non-negative ints; seed: int in [0, 2^64); offset: int >= 0, counted
    in numbers (``offset=n`` continues where a draw of n numbers stopped); dtype: float32 or
    float64. Element j (C order) is the normal of global index ``offset + j``: lane
    ``(offset + j) % 4`` of Philox block ``(offset + j) // 4``, by Box-Muller (module docstring).
    Raises TypeError for non-integer shape/seed/offset and ValueError for values out of range or
    another dtype. device "cuda" returns a CuPy array.
    """
    shape, seed, offset, dtype = _check_stream(shape, seed, offset, dtype)
    return _kernels_of(device).normal(shape, seed, offset, dtype)


def uniform(shape, seed, offset=0, dtype=np.float32, device="cpu"):
    """Uniforms ``((bits >> 9) + 0.5) * 2^-23`` from the Philox stream of ``seed``.

    Same indexing and arguments as ``normal``: element j is built from word
    ``(offset + j) % 4`` of block ``(offset + j) // 4``; values lie in (0, 1), exact in float32
    (see the module docstring). These are the
    uniforms that ``normal`` transforms, four per block.
    """
    shape, seed, offset, dtype = _check_stream(shape, seed, offset, dtype)
    return _kernels_of(device).uniform(shape, seed, offset, dtype)
