"""Reparameterized sampling ``z = mu + exp(logvar / 2) * eps`` and its backward (Numba, CPU).

mu, logvar, eps, z (N, L), C-contiguous, one float dtype. The kernels see them flattened
(C order), so the work is balanced over elements whatever L is (parallel over pieces of the flat
arrays rather than over rows: with L = 20 a row is only 20 elements).

Noise. With ``eps`` given, the kernels read it. Without, element (n, l) uses the normal of global
index ``offset + n L + l`` of the Philox stream of ``seed`` (so eps equals
``fastvae.random.normal((N, L), seed, offset)``), generated inside the kernel a chunk of 1024 at
a time into a small buffer that stays in L1 (no (N, L) noise array is written or read). The cache
then holds ``(seed, offset)`` instead of eps and the backward regenerates the same noise.

float32 ``exp`` is a vectorizable polynomial evaluated in float64 (``exp_f32_via_f64`` of
fastvae/cpu/_math.py, within 0.6 ulp), not libm expf, whose scalar call per element keeps the
loop scalar: the given-noise forward kernel takes 3.4-3.7 ns per element with it, 4.1-5.2 ns
with math.exp, NumPy 4.0-6.8 ns (float32, n = 2560 and 16384, one thread, 10th percentile of
300 calls).
"""
import math
from collections import namedtuple

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from fastvae.cpu._math import exp_f32_via_f64
from fastvae.cpu._numba import FASTMATH, PARALLEL_MIN_ELEMENTS, jit, jit_parallel
from fastvae.cpu.random import (CHUNK, INDEX_LIMIT, PARALLEL_PIECE, noise_buffers,
                                normal_chunk_kernel, seed_to_key)

ReparamCache = namedtuple("ReparamCache", "logvar eps seed offset")
ReparamCache.__doc__ = """What reparam_backward needs: the forward's logvar (N, L) (a reference, not
a copy), and either eps (N, L) (given noise; seed is None) or eps None with the stream position
(seed, offset) of generated noise."""


# ---------------------------------------------------------------------------------------------
# exp in the input dtype
# ---------------------------------------------------------------------------------------------
def exp_(x):
    """``exp`` in x's dtype (Python version of the overload below)."""
    return np.exp(x)


@overload(exp_, jit_options={"fastmath": set(FASTMATH)})
def _exp_impl(x):
    if x == types.float32:
        return lambda x: exp_f32_via_f64(x)
    return lambda x: math.exp(x)


# ---------------------------------------------------------------------------------------------
# kernels: flat (n,) = (N * L,) views
# ---------------------------------------------------------------------------------------------
@jit
def reparam_forward_kernel(z, mu, logvar, eps):
    """z, mu, logvar, eps (n,): z = mu + exp(logvar / 2) eps.

    math: fastvae/_reference.py::reparam_forward
    """
    half = z.dtype.type(0.5)
    for j in range(z.size):
        z[j] = mu[j] + exp_(logvar[j] * half) * eps[j]


@jit
def reparam_backward_kernel(dmu, dlogvar, dz, logvar, eps):
    """dmu, dlogvar, dz, logvar, eps (n,): dmu = dz; dlogvar = dz eps exp(logvar / 2) / 2.

    math: fastvae/_reference.py::reparam_backward
    """
    half = dz.dtype.type(0.5)
    for j in range(dz.size):
        dmu[j] = dz[j]
        dlogvar[j] = dz[j] * eps[j] * exp_(logvar[j] * half) * half


@jit
def reparam_noise_forward_kernel(z, mu, logvar, k0, k1, offset):
    """z, mu, logvar (n,); eps[j] = the normal at global index offset + j of key (k0, k1)."""
    wbuf, zbuf = noise_buffers(z.dtype.type)
    n = z.size
    for j0 in range(0, n, CHUNK):
        m = min(CHUNK, n - j0)
        s = normal_chunk_kernel(zbuf, wbuf, k0, k1, offset + j0, m)
        reparam_forward_kernel(z[j0:j0 + m], mu[j0:j0 + m], logvar[j0:j0 + m], zbuf[s:s + m])


@jit
def reparam_noise_backward_kernel(dmu, dlogvar, dz, logvar, k0, k1, offset):
    """dmu, dlogvar, dz, logvar (n,); the noise regenerated as in reparam_noise_forward_kernel."""
    wbuf, zbuf = noise_buffers(dz.dtype.type)
    n = dz.size
    for j0 in range(0, n, CHUNK):
        m = min(CHUNK, n - j0)
        s = normal_chunk_kernel(zbuf, wbuf, k0, k1, offset + j0, m)
        reparam_backward_kernel(dmu[j0:j0 + m], dlogvar[j0:j0 + m], dz[j0:j0 + m],
                                logvar[j0:j0 + m], zbuf[s:s + m])


# Parallel variants: pieces of PARALLEL_PIECE elements (a multiple of 4, so the noise of every
# piece starts at the same lane) run the serial kernels. The launchers use them from
# PARALLEL_MIN_ELEMENTS = 2^15 elements, for given and generated noise alike. Serial vs parallel,
# float32, 2 threads, 10th percentile of 200 calls: generated 16384: 103 vs 106 us (no gain),
# 32768: 205-240 vs 115-135 us (1.8x); given 32768: 93-116 vs 50-60 us (1.9x).
@jit_parallel
def reparam_forward_parallel_kernel(z, mu, logvar, eps):
    n = z.size
    for p in numba.prange((n + PARALLEL_PIECE - 1) // PARALLEL_PIECE):
        sl = slice(p * PARALLEL_PIECE, min((p + 1) * PARALLEL_PIECE, n))
        reparam_forward_kernel(z[sl], mu[sl], logvar[sl], eps[sl])


@jit_parallel
def reparam_backward_parallel_kernel(dmu, dlogvar, dz, logvar, eps):
    n = dz.size
    for p in numba.prange((n + PARALLEL_PIECE - 1) // PARALLEL_PIECE):
        sl = slice(p * PARALLEL_PIECE, min((p + 1) * PARALLEL_PIECE, n))
        reparam_backward_kernel(dmu[sl], dlogvar[sl], dz[sl], logvar[sl], eps[sl])


@jit_parallel
def reparam_noise_forward_parallel_kernel(z, mu, logvar, k0, k1, offset):
    n = z.size
    for p in numba.prange((n + PARALLEL_PIECE - 1) // PARALLEL_PIECE):
        lo = p * PARALLEL_PIECE
        hi = min(lo + PARALLEL_PIECE, n)
        reparam_noise_forward_kernel(z[lo:hi], mu[lo:hi], logvar[lo:hi], k0, k1, offset + lo)


@jit_parallel
def reparam_noise_backward_parallel_kernel(dmu, dlogvar, dz, logvar, k0, k1, offset):
    n = dz.size
    for p in numba.prange((n + PARALLEL_PIECE - 1) // PARALLEL_PIECE):
        lo = p * PARALLEL_PIECE
        hi = min(lo + PARALLEL_PIECE, n)
        reparam_noise_backward_kernel(dmu[lo:hi], dlogvar[lo:hi], dz[lo:hi], logvar[lo:hi],
                                      k0, k1, offset + lo)


# ---------------------------------------------------------------------------------------------
# launchers (inputs validated by fastvae.ops: C-contiguous (N, L) arrays of one float dtype)
# ---------------------------------------------------------------------------------------------
def reparam_forward(mu, logvar, eps=None, seed=None, offset=0):
    """z = mu + exp(logvar / 2) * eps, all (N, L) -> (z, cache).

    eps given: it is used and kept in the cache. eps None: the noise is element (n, l) = normal
    number ``offset + n L + l`` of the stream of ``seed`` (== fastvae.random.normal((N, L),
    seed, offset, mu.dtype)), generated in the kernel; the cache keeps (seed, offset), not eps.
    """
    assert mu.shape == logvar.shape and mu.dtype == logvar.dtype
    z = np.empty_like(mu)
    flat = (z.reshape(-1), mu.reshape(-1), logvar.reshape(-1))
    if eps is not None:
        assert eps.shape == mu.shape and eps.dtype == mu.dtype
        parallel = z.size >= PARALLEL_MIN_ELEMENTS
        kernel = reparam_forward_parallel_kernel if parallel else reparam_forward_kernel
        kernel(*flat, eps.reshape(-1))
        return z, ReparamCache(logvar, eps, None, 0)
    assert seed is not None, "reparam_forward needs eps or seed"
    assert 0 <= offset and offset + z.size < INDEX_LIMIT
    parallel = z.size >= PARALLEL_MIN_ELEMENTS
    kernel = reparam_noise_forward_parallel_kernel if parallel else reparam_noise_forward_kernel
    kernel(*flat, *seed_to_key(seed), np.int64(offset))
    return z, ReparamCache(logvar, None, int(seed), int(offset))


def reparam_backward(dz, cache):
    """-> (dmu, dlogvar), new (N, L) arrays (nothing is overwritten or accumulated into):
    dmu = dz (a copy), dlogvar = dz * eps * exp(logvar / 2) / 2, with eps the cached noise or
    the same generated noise regenerated from (seed, offset)."""
    logvar, eps, seed, offset = cache
    assert dz.shape == logvar.shape and dz.dtype == logvar.dtype
    dmu, dlogvar = np.empty_like(dz), np.empty_like(dz)
    flat = (dmu.reshape(-1), dlogvar.reshape(-1), dz.reshape(-1), logvar.reshape(-1))
    if eps is not None:
        parallel = dz.size >= PARALLEL_MIN_ELEMENTS
        kernel = reparam_backward_parallel_kernel if parallel else reparam_backward_kernel
        kernel(*flat, eps.reshape(-1))
    else:
        parallel = dz.size >= PARALLEL_MIN_ELEMENTS
        kernel = (reparam_noise_backward_parallel_kernel if parallel
                  else reparam_noise_backward_kernel)
        kernel(*flat, *seed_to_key(seed), np.int64(offset))
    return dmu, dlogvar
