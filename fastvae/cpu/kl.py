"""KL(N(mu, exp(logvar)) || N(0, I)) per row on the CPU, and its backward.

``kl_n = 1/2 sum_l (mu^2 + expm1(logvar) - logvar)`` (fastvae/_reference.py::kl_forward).
Elements are computed in float64 whatever the input dtype and row sums accumulate in float64;
results are rounded once to the input dtype. ``expm1`` is libm's, one call per element
(~20 ns; L = 20 is small next to the decoder's D = 784). A vectorizable polynomial expm1 in the
style of _math.exp_nonpositive (tried: 2 ulp) is too large for LLVM to inline into the row loop,
so the loop stayed scalar and it gained only 1.4x; Numba-level inlining would hand it the
caller's reassociation flags, which break its range reduction. Not worth it for 2.5% of the data.

Row functions for other kernels: ``kl_row(mu_row, logvar_row)`` (float64 sum),
``kl_backward_row(dmu_row, dlogvar_row, dkl_n, mu_row, logvar_row)`` and both at once,
``kl_row_and_backward`` (used by the fused ELBO).
"""
import math

import numpy as np
from numba import prange

from fastvae.cpu._numba import jit, jit_twins

# Elements (N * L) from which the row-parallel kernels win: libm expm1 ~20 ns/element vs ~3.5 us
# prange start-up; forward, 2 threads, float32, min of 200 runs: 8x20 0.83x, 32x20 1.41x,
# 128x20 1.80x, 4096x20 1.97x.
KL_PARALLEL_MIN_ELEMENTS = 1 << 9


@jit
def kl_row(mu_row, logvar_row):
    """``1/2 sum_l (mu_l^2 + expm1(lv_l) - lv_l)`` of one row, float64 (any float dtype)."""
    # math: fastvae/_reference.py::kl_forward
    acc = 0.0   # float64 accumulator, also for float32 rows
    for j in range(mu_row.shape[0]):
        m = np.float64(mu_row[j])
        lv = np.float64(logvar_row[j])
        acc += m * m + (math.expm1(lv) - lv)
    return 0.5 * acc


@jit
def kl_backward_row(dmu_row, dlogvar_row, dkl_n, mu_row, logvar_row):
    """``dmu = dkl_n mu``, ``dlogvar = dkl_n expm1(lv) / 2`` for one row (overwrites)."""
    # math: fastvae/_reference.py::kl_backward
    for j in range(mu_row.shape[0]):
        dmu_row[j] = dkl_n * np.float64(mu_row[j])
        dlogvar_row[j] = dkl_n * math.expm1(np.float64(logvar_row[j])) * 0.5


@jit
def kl_row_and_backward(dmu_row, dlogvar_row, dkl_n, mu_row, logvar_row):
    """``kl_row`` and ``kl_backward_row`` in one pass (one expm1 per element): writes
    dmu_row, dlogvar_row (overwrites) and returns the row's KL, float64."""
    # math: fastvae/_reference.py::kl_forward, kl_backward
    acc = 0.0   # float64 accumulator, also for float32 rows
    for j in range(mu_row.shape[0]):
        m = np.float64(mu_row[j])
        lv = np.float64(logvar_row[j])
        em1 = math.expm1(lv)
        acc += m * m + (em1 - lv)
        dmu_row[j] = dkl_n * m
        dlogvar_row[j] = dkl_n * em1 * 0.5
    return 0.5 * acc


def kl_forward_kernel(kl, mu, logvar):
    # kl (N,); mu, logvar (N, L)
    for n in prange(mu.shape[0]):
        kl[n] = kl_row(mu[n], logvar[n])


kl_forward_kernel, kl_forward_kernel_parallel = jit_twins(kl_forward_kernel)


def kl_backward_kernel(dmu, dlogvar, dkl, mu, logvar):
    # dmu, dlogvar (N, L); dkl (N,); mu, logvar (N, L)
    for n in prange(mu.shape[0]):
        kl_backward_row(dmu[n], dlogvar[n], np.float64(dkl[n]), mu[n], logvar[n])


kl_backward_kernel, kl_backward_kernel_parallel = jit_twins(kl_backward_kernel)


def kl_forward(mu, logvar):
    """KL of the diagonal Gaussian posterior from the standard normal prior, per row.
    mu, logvar (N, L) -> (kl (N,), cache). ``cache = (mu, logvar)``."""
    kl = np.empty(mu.shape[0], dtype=mu.dtype)
    if mu.size >= KL_PARALLEL_MIN_ELEMENTS and mu.shape[0] > 1:
        kl_forward_kernel_parallel(kl, mu, logvar)
    else:
        kl_forward_kernel(kl, mu, logvar)
    return kl, (mu, logvar)


def kl_backward(dkl, cache):
    """-> (dmu, dlogvar), each (N, L): new arrays (overwrites nothing).
    ``dmu = dkl[:, None] mu``; ``dlogvar = dkl[:, None] expm1(logvar) / 2``."""
    mu, logvar = cache
    dmu = np.empty_like(mu)
    dlogvar = np.empty_like(logvar)
    if mu.size >= KL_PARALLEL_MIN_ELEMENTS and mu.shape[0] > 1:
        kl_backward_kernel_parallel(dmu, dlogvar, dkl, mu, logvar)
    else:
        kl_backward_kernel(dmu, dlogvar, dkl, mu, logvar)
    return dmu, dlogvar
