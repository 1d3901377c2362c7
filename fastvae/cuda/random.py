"""Philox4x32-10 words, uniforms and standard normals on the GPU: launchers of kernels/random.cu.

Same public names, signatures and stream as fastvae/cpu/random.py (layout in fastvae/random.py):
the Philox words and the uniforms are bit-identical to the CPU backend's; float64 normals agree
to ~1e-15, float32 normals to ~2e-6 (CUDA logf/sincospif against the CPU's polynomials).

Arguments arrive validated (fastvae.random): shape a tuple of ints, 0 <= seed < 2^64,
0 <= offset, offset + size < 2^62, dtype float32/float64. No array argument says which array
module the outputs belong to, so ``ARRAY_MODULE`` does: None means CuPy (device arrays); the host
tests set it to NumPy and run the unchanged kernels on the CPU through the harness.
"""
import numpy as np

from fastvae import _device
from fastvae._reference import INDEX_LIMIT, seed_to_key
from fastvae.cuda import _module
from fastvae.cuda._module import cdiv, dtype_suffix, kernel

# One thread per Philox block of four outputs, the streaming defaults of fastvae/cuda/_module.py
# (4096 x 256 threads = 4M outputs per pass of the grid-stride loops; larger arrays loop).
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
MAX_BLOCKS = _module.MAX_BLOCKS
# None: CuPy. Tests: numpy (see the module docstring).
ARRAY_MODULE = None


def _xp():
    return _device.xp("cuda") if ARRAY_MODULE is None else ARRAY_MODULE


def _grid(n_threads):
    threads = THREADS_PER_BLOCK
    return (min(cdiv(n_threads, threads), MAX_BLOCKS),), (threads,)


def _philox_blocks(offset, n):
    """How many Philox blocks hold global indices offset .. offset + n - 1."""
    return (offset + n + 3) // 4 - offset // 4


def philox4x32_10(counters, key):
    """counters (..., 4) uint32, key (2,) uint32 -> (..., 4) uint32, a new device array.

    ``counters`` may be a NumPy or CuPy array (copied to the device if needed); ``key`` is read
    on the host (two words)."""
    xp = _xp()
    counters = xp.ascontiguousarray(xp.asarray(counters, dtype=np.uint32))
    if hasattr(key, "get"):   # a CuPy key: two words to the host, outside any training step
        key = key.get()
    key = np.asarray(key, dtype=np.uint32)
    out = xp.empty_like(counters)
    n = counters.size // 4
    if n:
        kernel("random", "philox_kernel")(*_grid(n), (out, counters, np.uint32(key[0]),
                                                      np.uint32(key[1]), np.int64(n)))
    return out


def _fill(name, shape, seed, offset, dtype):
    xp = _xp()
    out = xp.empty(shape, dtype=dtype)
    n = out.size
    assert 0 <= offset and offset + n < INDEX_LIMIT
    if n:
        k0, k1 = seed_to_key(seed)   # uint32 scalars, the kernels' key arguments
        kernel("random", f"{name}_kernel_{dtype_suffix(out.dtype)}")(
            *_grid(_philox_blocks(offset, n)), (out, k0, k1, np.int64(offset), np.int64(n)))
    return out


def normal(shape, seed, offset=0, dtype=np.float32):
    """Standard normals at global indices offset .. offset + size - 1, C order -> shape
    (a new device array)."""
    return _fill("normal_fill", shape, seed, offset, dtype)


def uniform(shape, seed, offset=0, dtype=np.float32):
    """Uniforms of the same stream: element g is uniform_from_bits(word g % 4 of block g // 4)
    (a new device array)."""
    return _fill("uniform_fill", shape, seed, offset, dtype)
