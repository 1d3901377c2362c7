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

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from fastvae import _compose
from fastvae.cpu._math import exp_f32_via_f64
from fastvae.cpu._numba import FASTMATH, PARALLEL_MIN_ELEMENTS, jit, jit_parallel
from fastvae.cpu.random import (CHUNK, PARALLEL_PIECE, kernel_key, noise_buffers,
                                normal_chunk_kernel)


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
# launchers (inputs validated by fastvae.ops: C-contiguous (N, L) arrays of one float dtype); the
# checks and the cache are fastvae/_compose.py's, the same as fastvae/cuda/reparam.py's
# ---------------------------------------------------------------------------------------------
def reparam_forward(mu, logvar, eps=None, seed=None, offset=0):
    """z = mu + exp(logvar / 2) * eps, all (N, L) -> (z, cache), eps given or generated
    from (seed, offset) in the kernel: fastvae/_compose.py::reparam_forward."""
    return _compose.reparam_forward(_forward_given, _forward_generated, mu, logvar, eps, seed,
                                    offset)


def reparam_backward(dz, cache):
    """-> (dmu, dlogvar), new (N, L) arrays: fastvae/_compose.py::reparam_backward."""
    return _compose.reparam_backward(_backward_given, _backward_generated, dz, cache)


def _parallel(a):
    return a.size >= PARALLEL_MIN_ELEMENTS


def _flat(*arrays):
    return tuple(a.reshape(-1) for a in arrays)


def _forward_given(mu, logvar, eps):
    z = np.empty_like(mu)
    kernel = reparam_forward_parallel_kernel if _parallel(z) else reparam_forward_kernel
    kernel(*_flat(z, mu, logvar, eps))
    return z


def _forward_generated(mu, logvar, seed, offset):
    z = np.empty_like(mu)
    kernel = (reparam_noise_forward_parallel_kernel if _parallel(z)
              else reparam_noise_forward_kernel)
    kernel(*_flat(z, mu, logvar), *kernel_key(seed), np.int64(offset))
    return z


def _backward_given(dz, logvar, eps):
    dmu, dlogvar = np.empty_like(dz), np.empty_like(dz)
    kernel = reparam_backward_parallel_kernel if _parallel(dz) else reparam_backward_kernel
    kernel(*_flat(dmu, dlogvar, dz, logvar, eps))
    return dmu, dlogvar


def _backward_generated(dz, logvar, seed, offset):
    dmu, dlogvar = np.empty_like(dz), np.empty_like(dz)
    kernel = (reparam_noise_backward_parallel_kernel if _parallel(dz)
              else reparam_noise_backward_kernel)
    kernel(*_flat(dmu, dlogvar, dz, logvar), *kernel_key(seed), np.int64(offset))
    return dmu, dlogvar
