"""Per-row log-likelihoods on the CPU: Bernoulli from logits, diagonal Gaussian with a per-dimension
log-variance. Forward ``(N,)`` row sums and their backwards; see ``fastvae/_reference.py``.

Numerics. Every element is computed in float64 whatever the input dtype (float32 inputs are widened
on load) and every row sum is accumulated in float64; results are rounded once to the input dtype.
For float32 this is at least as close to the float64 reference as NumPy in float32 is, and it costs
nothing extra: the elementwise math below is float64 anyway. One exception, on the training path:
the fused forward+backward row (``bernoulli_loglik_and_backward_row``, used by the fused ELBO)
runs float32 rows in float32 arithmetic with float32 partial sums, 2.5x faster (see there).

Speed. Without Intel SVML, Numba calls libm's ``exp``/``log1p`` one element at a time
(~30 ns/element for softplus on this machine). ``softplus``, ``sigmoid``, ``exp_nonpositive`` and
``log1p_unit_f64`` (fastvae/cpu/_math.py) are branch-free float64 polynomials that LLVM vectorizes
(AVX2: 4 lanes), within 2 ulp of NumPy over their domains (tests/test_math.py). Bernoulli
forward, float32 128x784, one thread: 10.5 ns per element with them vs 32 ns with libm exp/log1p
in float64 (10.6 ns with float32 expf/logf, which loses softplus precision for |l| > 16 and was
rejected).

Row functions for other Numba kernels (all ``@jit``; small ones get inlined by LLVM):
``bernoulli_loglik_row(x_row, logit_row)``, ``gaussian_loglik_row(x_row, mean_row, logvar,
inv_var)`` (float64 sums), ``bernoulli_loglik_and_backward_row`` (forward and backward of a row
in one pass). The ``_checked`` variants (``bernoulli_loglik_row_checked``,
``bernoulli_loglik_and_backward_row_checked``; the ELBO's) also return whether the row holds an
x outside [0, 1] or NaN (``x_outside_unit``), from the same loop; the loglik op's own kernels do
not check x.
"""
import numpy as np
from numba import prange, types
from numba.extending import overload

from fastvae._reference import LOG_2PI
from fastvae.cpu._math import (exp_f32, exp_nonpositive, log1p_unit_f32, log1p_unit_f64, sigmoid,
                               softplus)
from fastvae.cpu._numba import FASTMATH, jit, jit_twins

# Elements (N * D) from which the row-parallel kernels win: 2 threads, float32, prange start-up
# ~3.5 us here; min of 200 interleaved runs, serial vs parallel (speed-ups, forward / backward):
# Bernoulli (~9 ns/element forward, ~5 backward): 2x784 1.29x / 1.17x, 8x784 1.62x / 1.63x.
# Gaussian (~0.7 ns/element, no transcendentals): 128x64 1.0x / 1.09x, 32x784 - / 1.24x,
# 128x256 1.51x / 1.59x, 128x784 1.78x / 1.82x.
BERNOULLI_PARALLEL_MIN_ELEMENTS = 1 << 11
GAUSSIAN_PARALLEL_MIN_ELEMENTS = 1 << 14

# Row blocks of the Gaussian dlogvar column sum (a sum over rows): each block writes its own
# float64 partial row and the partials are added afterwards, so there are no atomics and no races.
# The block count depends on N only, so serial and parallel runs give bit-identical results.
GAUSSIAN_ROWS_PER_BLOCK = 16
GAUSSIAN_MAX_BLOCKS = 64


# ---------------------------------------------------------------------------------------------
# Bernoulli: ll_n = sum_d x_nd l_nd - softplus(l_nd)
# ---------------------------------------------------------------------------------------------
@jit
def bernoulli_loglik_row(x_row, logit_row):
    """``sum_d x_d l_d - softplus(l_d)`` of one row, float64 (any float input dtype)."""
    # math: fastvae/_reference.py::bernoulli_loglik_forward
    acc = 0.0   # float64 accumulator, also for float32 rows
    for d in range(x_row.shape[0]):
        l = np.float64(logit_row[d])
        acc += np.float64(x_row[d]) * l - softplus(l)
    return acc


@jit
def x_outside_unit(x, zero, one):
    """True for an x outside [0, 1] or NaN (-0.0 is inside): the Bernoulli data check of the
    fused ELBO and log-weight passes. zero, one: 0 and 1 in x's dtype (a float32 x compared with
    float64 constants would be widened in the loop). Bitwise ``|`` (no branch), so the loops
    stay vectorized; ``x != x`` is NaN (FASTMATH keeps NaN semantics: no ``nnan``)."""
    return (x < zero) | (x > one) | (x != x)


@jit
def bernoulli_loglik_row_checked(x_row, logit_row):
    """``bernoulli_loglik_row`` (the same arithmetic, the same bits) and, in the same loop,
    whether any x_d is outside [0, 1] or NaN -> (float64, bool)."""
    # math: fastvae/_reference.py::bernoulli_loglik_forward
    acc = 0.0   # float64 accumulator, also for float32 rows
    bad = False
    for d in range(x_row.shape[0]):
        l = np.float64(logit_row[d])
        x = np.float64(x_row[d])
        acc += x * l - softplus(l)
        bad |= x_outside_unit(x, 0.0, 1.0)
    return acc, bad


@jit
def bernoulli_loglik_backward_row(dlogit_row, dll_n, x_row, logit_row):
    """``dlogit_row[d] = dll_n (x_d - sigmoid(l_d))`` (overwrites dlogit_row)."""
    # math: fastvae/_reference.py::bernoulli_loglik_backward
    for d in range(x_row.shape[0]):
        dlogit_row[d] = dll_n * (np.float64(x_row[d]) - sigmoid(np.float64(logit_row[d])))


def bernoulli_loglik_and_backward_row_checked(dlogit_row, dll_n, x_row, logit_row):
    """Forward and backward of one row in one pass, sharing one exp per element: writes
    ``dlogit_row[d] = dll_n (x_d - sigmoid(l_d))`` (overwrites) and returns the row's
    log-likelihood (float64) and, from the same loop, whether any x_d is outside [0, 1] or NaN
    (``x_outside_unit``): -> (float64, bool). dll_n must not depend on the result (e.g. a
    constant -1/N). Numba-only: float32 rows run ``_bernoulli_row_grads_f32``, float64 rows
    ``_f64``."""
    raise NotImplementedError("only callable from Numba-compiled code")


@jit
def bernoulli_loglik_and_backward_row(dlogit_row, dll_n, x_row, logit_row):
    """``bernoulli_loglik_and_backward_row_checked`` without the check: the row's
    log-likelihood (float64) only."""
    return bernoulli_loglik_and_backward_row_checked(dlogit_row, dll_n, x_row, logit_row)[0]


@overload(bernoulli_loglik_and_backward_row_checked, jit_options={"fastmath": set(FASTMATH)})
def _bernoulli_row_grads_by_dtype(dlogit_row, dll_n, x_row, logit_row):
    if logit_row.dtype == types.float32:
        return lambda dlogit_row, dll_n, x_row, logit_row: _bernoulli_row_grads_f32(
            dlogit_row, dll_n, x_row, logit_row)
    return lambda dlogit_row, dll_n, x_row, logit_row: _bernoulli_row_grads_f64(
        dlogit_row, dll_n, x_row, logit_row)


@jit
def _bernoulli_row_grads_f64(dlogit_row, dll_n, x_row, logit_row):
    # math: fastvae/_reference.py::bernoulli_loglik_forward, bernoulli_loglik_backward
    # Its own function on purpose: written inline in the fused ELBO row function, next to the
    # KL loop, this loop was left scalar by LLVM (32 ns/element instead of 11, 128x784 float32).
    acc = 0.0   # float64 accumulator
    bad = False
    for d in range(x_row.shape[0]):
        x = np.float64(x_row[d])
        l = np.float64(logit_row[d])
        e = exp_nonpositive(-abs(l))
        acc += x * l - ((l if l > 0.0 else 0.0) + log1p_unit_f64(e))
        dlogit_row[d] = dll_n * (x - (1.0 if l >= 0.0 else e) / (1.0 + e))
        bad |= x_outside_unit(x, 0.0, 1.0)
    return acc, bad


@jit
def _bernoulli_row_grads_f32(dlogit_row, dll_n, x_row, logit_row):
    # math: fastvae/_reference.py::bernoulli_loglik_forward, bernoulli_loglik_backward
    # CUDA twin: kernels/elbo.cu::bernoulli_row_partial_and_backward (elements in T as here; its
    # per-thread partial sums are double, these float32 vector lanes, added in float64 at the end).
    # float32 rows in float32 arithmetic: exp_f32 and log1p_unit_f32 (1 ulp each) in 8 AVX2 lanes,
    # with float32 partial sums (reassociated into vector lanes). 128x784, 1 thread, same run
    # (benchmarks/dev/elbo_row_f32.py): 11.7 ns/element in float64 arithmetic, 6.2 with float32
    # elements
    # and a float64 sum (the mixed-width sum halves the lanes), 4.0 fully float32 (np.exp alone
    # took 3.9 in that run: the machine was loaded). Row error ~3e-7 relative, NumPy-float32-like.
    acc = np.float32(0.0)
    g = np.float32(dll_n)
    zero, one = np.float32(0.0), np.float32(1.0)
    bad = False
    for d in range(x_row.shape[0]):
        x = x_row[d]
        l = logit_row[d]
        e = exp_f32(-abs(l))
        acc += x * l - ((l if l > zero else zero) + log1p_unit_f32(e))
        dlogit_row[d] = g * (x - (one if l >= zero else e) / (one + e))
        bad |= x_outside_unit(x, zero, one)
    return np.float64(acc), bad


def bernoulli_loglik_forward_kernel(ll, x, logits):
    # ll (N,); x, logits (N, D)
    for n in prange(x.shape[0]):
        ll[n] = bernoulli_loglik_row(x[n], logits[n])


bernoulli_loglik_forward_kernel, bernoulli_loglik_forward_kernel_parallel = jit_twins(
    bernoulli_loglik_forward_kernel)


def bernoulli_loglik_backward_kernel(dlogits, dll, x, logits):
    # dlogits (N, D); dll (N,); x, logits (N, D)
    for n in prange(x.shape[0]):
        bernoulli_loglik_backward_row(dlogits[n], np.float64(dll[n]), x[n], logits[n])


bernoulli_loglik_backward_kernel, bernoulli_loglik_backward_kernel_parallel = jit_twins(
    bernoulli_loglik_backward_kernel)


def bernoulli_loglik_forward(x, logits):
    """Bernoulli log-likelihood per row from logits. x (values in [0, 1]), logits (N, D) ->
    (ll (N,), cache). ``cache = (x, logits)``."""
    ll = np.empty(x.shape[0], dtype=x.dtype)
    if x.size >= BERNOULLI_PARALLEL_MIN_ELEMENTS and x.shape[0] > 1:
        bernoulli_loglik_forward_kernel_parallel(ll, x, logits)
    else:
        bernoulli_loglik_forward_kernel(ll, x, logits)
    return ll, (x, logits)


def bernoulli_loglik_backward(dll, cache):
    """``dlogits = dll[:, None] * (x - sigmoid(logits))`` (N, D): a new array (overwrites
    nothing)."""
    x, logits = cache
    dlogits = np.empty_like(logits)
    if x.size >= BERNOULLI_PARALLEL_MIN_ELEMENTS and x.shape[0] > 1:
        bernoulli_loglik_backward_kernel_parallel(dlogits, dll, x, logits)
    else:
        bernoulli_loglik_backward_kernel(dlogits, dll, x, logits)
    return dlogits


# ---------------------------------------------------------------------------------------------
# Gaussian: ll_n = -1/2 sum_d (log 2 pi + lv_d + (x_nd - m_nd)^2 exp(-lv_d))
# ---------------------------------------------------------------------------------------------
def gaussian_inv_var(logvar):
    """``exp(-logvar)`` in float64, (D,): computed once per call, shared by every row."""
    return np.exp(-logvar.astype(np.float64))


@jit
def gaussian_loglik_row(x_row, mean_row, logvar, inv_var):
    """``-1/2 sum_d (log 2 pi + lv_d + (x_d - m_d)^2 inv_var_d)`` of one row, float64.

    x_row, mean_row, logvar (D,) of any float dtype; inv_var = gaussian_inv_var(logvar) (D,)."""
    # math: fastvae/_reference.py::gaussian_loglik_forward
    acc = 0.0   # float64 accumulator, also for float32 rows
    for d in range(x_row.shape[0]):
        diff = np.float64(x_row[d]) - np.float64(mean_row[d])
        acc += LOG_2PI + np.float64(logvar[d]) + diff * diff * inv_var[d]
    return -0.5 * acc


@jit
def gaussian_loglik_backward_rows(dmean, dlogvar_acc, dll, x, mean, inv_var, start, stop):
    """Rows start..stop-1: ``dmean[n] = dll_n (x_n - m_n) inv_var`` (overwrites) and
    ``dlogvar_acc[d] += sum_n dll_n (1 - (x_nd - m_nd)^2 inv_var_d)`` (accumulates, float64)."""
    # math: fastvae/_reference.py::gaussian_loglik_backward
    for n in range(start, stop):
        g = np.float64(dll[n])
        for d in range(x.shape[1]):
            diff = np.float64(x[n, d]) - np.float64(mean[n, d])
            t = diff * inv_var[d]
            dmean[n, d] = g * t
            dlogvar_acc[d] += g * (1.0 - diff * t)


def row_blocks(n):
    """Number of row blocks for a sum over rows: depends on n only (determinism)."""
    return max(1, min(GAUSSIAN_MAX_BLOCKS, -(-n // GAUSSIAN_ROWS_PER_BLOCK)))


def gaussian_loglik_forward_kernel(ll, x, mean, logvar, inv_var):
    # ll (N,); x, mean (N, D); logvar (D,); inv_var (D,) float64
    for n in prange(x.shape[0]):
        ll[n] = gaussian_loglik_row(x[n], mean[n], logvar, inv_var)


gaussian_loglik_forward_kernel, gaussian_loglik_forward_kernel_parallel = jit_twins(
    gaussian_loglik_forward_kernel)


def gaussian_loglik_backward_kernel(dmean, dlogvar_partial, dll, x, mean, inv_var):
    # dmean (N, D); dlogvar_partial (B, D) float64, zeroed: block b's sum over its rows;
    # dll (N,); x, mean (N, D); inv_var (D,) float64
    n_rows, n_blocks = x.shape[0], dlogvar_partial.shape[0]
    for b in prange(n_blocks):
        gaussian_loglik_backward_rows(dmean, dlogvar_partial[b], dll, x, mean, inv_var,
                                      b * n_rows // n_blocks, (b + 1) * n_rows // n_blocks)


gaussian_loglik_backward_kernel, gaussian_loglik_backward_kernel_parallel = jit_twins(
    gaussian_loglik_backward_kernel)


def gaussian_loglik_forward(x, mean, logvar):
    """Diagonal Gaussian log-likelihood per row. x, mean (N, D); logvar (D,) -> (ll (N,), cache).
    ``cache = (x, mean, logvar, inv_var)`` with ``inv_var = exp(-logvar)`` in float64."""
    inv_var = gaussian_inv_var(logvar)
    ll = np.empty(x.shape[0], dtype=x.dtype)
    if x.size >= GAUSSIAN_PARALLEL_MIN_ELEMENTS and x.shape[0] > 1:
        gaussian_loglik_forward_kernel_parallel(ll, x, mean, logvar, inv_var)
    else:
        gaussian_loglik_forward_kernel(ll, x, mean, logvar, inv_var)
    return ll, (x, mean, logvar, inv_var)


def gaussian_loglik_backward(dll, cache):
    """-> (dmean (N, D), dlogvar (D,)): new arrays (overwrites nothing).
    ``dmean = dll (x - m) exp(-lv)``; ``dlogvar_d = -1/2 sum_n dll_n (1 - (x - m)^2 exp(-lv_d))``,
    summed over rows in float64 by row blocks (``row_blocks``) without atomics."""
    x, mean, logvar, inv_var = cache
    dmean = np.empty_like(mean)
    partial = np.zeros((row_blocks(x.shape[0]), x.shape[1]))
    if x.size >= GAUSSIAN_PARALLEL_MIN_ELEMENTS and partial.shape[0] > 1:
        gaussian_loglik_backward_kernel_parallel(dmean, partial, dll, x, mean, inv_var)
    else:
        gaussian_loglik_backward_kernel(dmean, partial, dll, x, mean, inv_var)
    return dmean, (-0.5 * partial.sum(axis=0)).astype(logvar.dtype)
