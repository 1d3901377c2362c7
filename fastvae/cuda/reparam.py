"""Reparameterized sampling ``z = mu + exp(logvar / 2) * eps`` and its backward on the GPU:
launchers of kernels/reparam.cu.

Same public names, signatures and cache semantics as fastvae/cpu/reparam.py: with ``eps`` given
it is read and kept in the cache; without, element (n, l) uses the normal of global index
``offset + n L + l`` of the Philox stream of ``seed`` (== fastvae.cuda.random.normal((N, L), seed,
offset, mu.dtype)), generated inside the kernel, and the cache keeps ``(seed, offset)``: the
backward regenerates the same noise instead of storing it.

Inputs arrive validated (fastvae.ops): C-contiguous (N, L) arrays of one float dtype.
"""
from collections import namedtuple

import numpy as np

from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel
from fastvae.cuda.random import seed_to_key

ReparamCache = namedtuple("ReparamCache", "logvar eps seed offset")
ReparamCache.__doc__ = """What reparam_backward needs (the fields of fastvae.cpu.reparam's cache):
the forward's logvar (N, L) (a reference, not a copy), and either eps (N, L) (given noise; seed is
None) or eps None with the stream position (seed, offset) of generated noise."""

# Elementwise, memory-bound (given noise) or Philox-bound (generated noise): the streaming
# defaults of fastvae/cuda/_module.py.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap for the grid-stride loops; larger arrays loop.
MAX_BLOCKS = _module.MAX_BLOCKS
INDEX_LIMIT = 1 << 62   # offset + size (global noise indices are int64 in the kernels)


def _grid(n_threads):
    threads = THREADS_PER_BLOCK
    return (min(cdiv(n_threads, threads), MAX_BLOCKS),), (threads,)


def _noise_threads(offset, n):
    """One thread per Philox block holding indices offset .. offset + n - 1."""
    return (offset + n + 3) // 4 - offset // 4


def reparam_forward(mu, logvar, eps=None, seed=None, offset=0):
    """z = mu + exp(logvar / 2) * eps, all (N, L) -> (z, cache); z a new array.

    eps given: it is used and kept in the cache. eps None: the noise is element (n, l) = normal
    number ``offset + n L + l`` of the stream of ``seed``, generated in the kernel; the cache keeps
    (seed, offset), not eps.
    """
    assert mu.shape == logvar.shape and mu.dtype == logvar.dtype
    xp = array_module(mu)
    z = xp.empty_like(mu)
    n = z.size
    suffix = dtype_suffix(mu.dtype)
    if eps is not None:
        assert eps.shape == mu.shape and eps.dtype == mu.dtype
        if n:
            kernel("reparam", f"reparam_forward_kernel_{suffix}")(
                *_grid(n), (z, mu, logvar, eps, np.int64(n)))
        return z, ReparamCache(logvar, eps, None, 0)
    assert seed is not None, "reparam_forward needs eps or seed"
    assert 0 <= offset and offset + n < INDEX_LIMIT
    if n:
        kernel("reparam", f"reparam_noise_forward_kernel_{suffix}")(
            *_grid(_noise_threads(offset, n)),
            (z, mu, logvar, *seed_to_key(seed), np.int64(offset), np.int64(n)))
    return z, ReparamCache(logvar, None, int(seed), int(offset))


def reparam_backward(dz, cache):
    """-> (dmu, dlogvar), new (N, L) arrays (nothing is overwritten or accumulated into):
    dmu = dz (a copy), dlogvar = dz * eps * exp(logvar / 2) / 2, with eps the cached noise or
    the same generated noise regenerated from (seed, offset)."""
    logvar, eps, seed, offset = cache
    assert dz.shape == logvar.shape and dz.dtype == logvar.dtype
    xp = array_module(dz)
    dmu, dlogvar = xp.empty_like(dz), xp.empty_like(dz)
    n = dz.size
    if n == 0:
        return dmu, dlogvar
    suffix = dtype_suffix(dz.dtype)
    if eps is not None:
        kernel("reparam", f"reparam_backward_kernel_{suffix}")(
            *_grid(n), (dmu, dlogvar, dz, logvar, eps, np.int64(n)))
    else:
        kernel("reparam", f"reparam_noise_backward_kernel_{suffix}")(
            *_grid(_noise_threads(offset, n)),
            (dmu, dlogvar, dz, logvar, *seed_to_key(seed), np.int64(offset), np.int64(n)))
    return dmu, dlogvar
