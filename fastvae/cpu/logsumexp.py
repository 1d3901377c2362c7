"""Log-sum-exp over the last axis on the CPU, one-shot and streaming (partial / merge / finalize).

    lse_n = log sum_k exp(a_nk) = m_n + log s_n,   m_n = max_k a_nk,   s_n = sum_k exp(a_nk - m_n)

Streaming: ``logsumexp_partial`` turns a chunk of columns into the state ``(m, s)``,
``logsumexp_merge`` combines two states (associative and commutative), ``logsumexp_finalize``
gives ``m + log s``; K can arrive in chunks in any order (the IWAE evaluation draws its K samples
in chunks). Special rows follow fastvae/_reference.py exactly: all -inf -> (-inf, 0) -> -inf;
holding +inf -> (+inf, 1) -> +inf; holding NaN -> (NaN, NaN) -> NaN.

Row kernel: two passes over the row (max, then the sum of exp), not the online one-pass update.
A row (20 KB for K = 5000 float32) is still in L1/L2 for the second pass, so one pass would save
no memory traffic, while the per-element ``if a > m: rescale`` branch of the online update stops
vectorization. Float32, one thread, us, min of 9 interleaved medians (benchmarks/
bench_logsumexp.py::test_row_kernel_variants has the variants):

    (N, K)       online, libm exp   online, fast exp   online per block   two-pass   NumPy
    128 x 1000         947                730                169             175        514
    128 x 5000        4794               3618               1202            1025       2787
    4096 x 100        3271               2521                799             955       1984

(online per block: block max, rescale the running sum if it grew, add the block's sum of exp:
one pass, vectorized; it ties or wins when K fits in one block and loses 15-25% beyond.)
The online form remains available at the chunk level: partial + merge is exactly the online
update applied to whole chunks.

Numerics. ``exp`` is ``fast_exp`` (fastvae/cpu/_math.py): a branch-free polynomial that LLVM
vectorizes (Numba has no SVML here, so ``math.exp`` is a scalar libm call, ~5 ns/element). It
runs in the input dtype (float32: 8 AVX2 lanes, within 1 ulp of float32; float64: 4 lanes, within
1 ulp of float64).
Row sums of float32 inputs: float32 within blocks of SUM_BLOCK = 1024 terms (vectorized, so each
lane adds at most 128 of them), float64 across blocks; m + log s is formed in float64 and rounded
once to the dtype.

Backward. ``logsumexp_forward`` keeps that float64 ``m + log s`` (``lse64``, (N,)) in its cache
next to the dtype's lse, and the softmax is ``exp(a - lse64)`` with ``a - lse64`` rounded once to
the dtype before the dtype's exp: the dominant weights (a near lse) are then exact to the dtype's
rounding. ``exp(a - lse)`` with the rounded lse would be off by up to ulp(|lse|) relative in every
weight (3e-5 at |lse| ~ 500 in float32), which autograd's ``exp(a - max) / sum`` is not. The
subtraction runs in the dtype on ``lse64 = hi + lo`` (hi = lse64 rounded, lo = the rest rounded):
``(a - hi) - lo``, where ``a - hi`` is exact for a within a factor 2 of hi (Sterbenz), so this is
``a - lse64`` rounded once; elsewhere |a - hi| >= |hi| / 2, both roundings are relative to the
argument (~1 ulp of it), and the weight is tiny unless |lse| is. float64: lo = 0, as before.
"""
import math

import numpy as np
from numba import prange

from fastvae.cpu._math import exp_f64, fast_exp, maxnum
from fastvae.cpu._numba import jit, jit_math, jit_twins

# Terms per float32 partial sum (vectorized: <= 128 terms per lane) before the partial sums are
# added in float64. Two-pass forward, float32, one thread, us (min of 5 interleaved medians):
#   block      128x1000   128x5000   4096x100
#   256          279        1398       1126
#   1024         247        1253       1154
#   8192         247        1137       1126
SUM_BLOCK = 1024

# prange over rows from N*K >= 2^13 on (and N >= 2). 2 threads vs 1, float32
# (bench_logsumexp.py::test_parallel_vs_serial_*), forward / backward:
#   16x256 1.04x / 0.97x, 32x256 1.37x / 1.28x, 64x512 1.77x / 1.68x, 128x1000 1.97x / 1.82x,
#   4096x100 2.22x / 2.12x
PARALLEL_MIN = 1 << 13


# ---------------------------------------------------------------------------------------------
# row functions
# ---------------------------------------------------------------------------------------------
@jit
def block_max(row, j0, j1):
    """``max row[j0:j1]`` ignoring NaN (the caller sees NaN through the sum); -inf if empty."""
    m = row.dtype.type(-np.inf)
    for j in range(j0, j1):
        m = maxnum(m, row[j])
    return m


@jit
def block_sum_exp(row, j0, j1, m):
    """``sum_{j0 <= j < j1} exp(row_j - m)``, summed in the row dtype."""
    acc = row.dtype.type(0)
    for j in range(j0, j1):
        acc += fast_exp(row[j] - m)
    return acc


@jit
def row_state(row):
    """Streaming state ``(m, s)`` of one row, m in the row dtype, s float64, with the reference's
    special rows: all -inf -> (-inf, 0); holding +inf -> (+inf, 1); holding NaN -> (NaN, NaN).

    Two passes over the row: ``m = max`` (NaN ignored), then ``s = sum exp(a - m)`` by blocks of
    SUM_BLOCK (with m = 0 when m is +-inf: each term is then 0, inf or NaN).
    """
    # math: fastvae/_reference.py::logsumexp_partial
    k = row.shape[0]
    m = block_max(row, 0, k)
    mf = m if (m > -np.inf and m < np.inf) else row.dtype.type(0)
    # first block outside the loop: rows of K <= SUM_BLOCK then run 1.2x faster (128x1000)
    s = np.float64(block_sum_exp(row, 0, min(SUM_BLOCK, k), mf))
    for j0 in range(SUM_BLOCK, k, SUM_BLOCK):
        s += block_sum_exp(row, j0, min(j0 + SUM_BLOCK, k), mf)
    if s != s:           # a NaN in the row: exp(a - m) is NaN only for a = NaN
        return row.dtype.type(np.nan), s
    if m == np.inf:
        return m, 1.0
    return m, s          # all -inf: (-inf, 0), each exp(-inf - 0) being 0


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
def logsumexp_partial_kernel(m, s, a, n, k):
    # m, s (N,); a (N, K)
    for i in prange(n):
        m[i], s[i] = row_state(a[i])


logsumexp_partial_kernel, logsumexp_partial_kernel_parallel = jit_twins(logsumexp_partial_kernel)


@jit
def _lse_row(a_row):
    # m + log s in float64: -inf for (-inf, 0), +inf for (+inf, 1), NaN for NaN
    m, s = row_state(a_row)
    return np.float64(m) + math.log(s)


def logsumexp_forward_kernel(lse, a, n, k):
    # lse (N,), float64 from the launcher (it keeps m + log s unrounded for the backward), or the
    # dtype (rounded once on the store); a (N, K)
    # math: fastvae/_reference.py::logsumexp_forward
    for i in prange(n):
        lse[i] = _lse_row(a[i])


logsumexp_forward_kernel, logsumexp_forward_kernel_parallel = jit_twins(logsumexp_forward_kernel)


@jit_math
def _minus_hi_lo(x, hi, lo):
    """``(x - hi) - lo`` in this order: jit_math has no ``reassoc``, which could make it
    ``x - (hi + lo)`` = ``x - hi`` once inlined into the fast-math kernel (flags are per
    instruction)."""
    return (x - hi) - lo


@jit
def _softmax_row(da_row, dlse_i, a_row, lse_i):
    # da_row = dlse_i * exp(a_row - lse_i), lse_i float64 (lse64: see the module docstring; a
    # dtype lse_i works too, then lo = 0); dlse_i * 0 on an all -inf row (lse_i = -inf)
    # math: fastvae/_reference.py::logsumexp_backward
    #
    # a - lse64 as (a - hi) - lo in the dtype, not a - lse64 in float64 rounded to the dtype
    # (the same number but for ~1 ulp of a far-off argument), which halves the vector width.
    # Float32 row kernel alone, serial, us, median of 21 interleaved repeats of 20 calls
    # (2 cores shared with other jobs):
    #   (N, K)       exp(a - lse32)   (a - hi) - lo   float64 a - lse64   exp_f32_via_f64(a - lse64)
    #   128 x 1000         35              35-37             53                   80
    #   128 x 5000        168             172-173           256                  397
    # max |da - w| / max w, w the float64 softmax, |lse| up to 600: 2.7e-5, 1.4e-7, 1.4e-7, 5e-8.
    # logsumexp_backward itself (the prange kernel at these sizes), before -> after, median of 41:
    # 128 x 1000: 79 -> 79 us; 128 x 5000: 137 -> 137 us (runs of 21: +-5%, both ways).
    # The forward (a float64 lse and its rounded copy): 85 -> 86 us, 257 -> 256 us.
    lse64 = np.float64(lse_i)
    if lse64 == -np.inf:
        for j in range(a_row.shape[0]):
            da_row[j] = dlse_i * a_row.dtype.type(0)     # NaN if dlse_i is NaN, as the reference
        return
    hi = a_row.dtype.type(lse64)
    # +inf: lo = 0, not inf - inf (exp(a - inf) = 0 for finite a, NaN at a = +inf); NaN: hi NaN
    lo = a_row.dtype.type(lse64 - np.float64(hi)) if lse64 < np.inf else a_row.dtype.type(0)
    for j in range(a_row.shape[0]):
        da_row[j] = dlse_i * fast_exp(_minus_hi_lo(a_row[j], hi, lo))


def logsumexp_backward_kernel(da, dlse, a, lse, n, k):
    # da, a (N, K); dlse (N,); lse (N,) float64 (the forward's lse64), or the dtype
    for i in prange(n):
        _softmax_row(da[i], dlse[i], a[i], lse[i])


logsumexp_backward_kernel, logsumexp_backward_kernel_parallel = jit_twins(
    logsumexp_backward_kernel)


@jit
def logsumexp_merge_kernel(m, s, m1, s1, m2, s2, n):
    # m, s, m1, s1, m2, s2 (N,); float64 arithmetic
    # math: fastvae/_reference.py::logsumexp_merge
    for i in range(n):
        a1, a2 = np.float64(m1[i]), np.float64(m2[i])
        mm = a1 if a1 > a2 else a2
        mm = np.nan if (a1 != a1 or a2 != a2) else mm
        mf = mm if (mm > -np.inf and mm < np.inf) else 0.0
        t1 = 0.0 if a1 == -np.inf else np.float64(s1[i]) * exp_f64(a1 - mf)
        t2 = 0.0 if a2 == -np.inf else np.float64(s2[i]) * exp_f64(a2 - mf)
        m[i] = mm
        s[i] = 1.0 if mm == np.inf else t1 + t2


@jit
def logsumexp_finalize_kernel(lse, m, s, n):
    # lse, m, s (N,)
    # math: fastvae/_reference.py::logsumexp_finalize
    for i in range(n):
        lse[i] = np.float64(m[i]) + math.log(np.float64(s[i]))


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _parallel(n, k):
    return n > 1 and n * k >= PARALLEL_MIN


def logsumexp_partial(a):
    """Streaming state of a chunk of columns: a (N, K) -> (m (N,), s (N,)), ``m = max_k a``,
    ``s = sum_k exp(a - m)``; all -inf row -> (-inf, 0), +inf -> (+inf, 1), NaN -> (NaN, NaN)."""
    n, k = a.shape
    m = np.empty(n, dtype=a.dtype)
    s = np.empty(n, dtype=a.dtype)
    kernel = logsumexp_partial_kernel_parallel if _parallel(n, k) else logsumexp_partial_kernel
    kernel(m, s, a, n, k)
    return m, s


def logsumexp_merge(m1, s1, m2, s2):
    """Merge two streaming states (N,) each -> (m, s): ``m = max(m1, m2)``,
    ``s = s1 e^(m1 - m) + s2 e^(m2 - m)``; a side with m = -inf adds 0; m = +inf gives s = 1."""
    n = m1.shape[0]
    m = np.empty_like(m1)
    s = np.empty_like(s1)
    logsumexp_merge_kernel(m, s, m1, s1, m2, s2, n)
    return m, s


def logsumexp_finalize(m, s):
    """``lse = m + log s`` (N,): -inf for (-inf, 0), +inf for (+inf, 1), NaN for NaN."""
    lse = np.empty_like(m)
    logsumexp_finalize_kernel(lse, m, s, m.shape[0])
    return lse


def logsumexp_forward(a):
    """``lse_n = log sum_k exp(a_nk)``: a (N, K) -> (lse (N,), cache), ``cache = (a, lse,
    lse64)``, lse64 (N,) float64 the unrounded m + log s (lse is lse64 rounded once to the
    dtype), which the backward uses."""
    n, k = a.shape
    lse64 = np.empty(n, dtype=np.float64)
    kernel = logsumexp_forward_kernel_parallel if _parallel(n, k) else logsumexp_forward_kernel
    kernel(lse64, a, n, k)
    lse = lse64.astype(a.dtype)      # a copy for float64 too: the cache's lse64 stays private
    return lse, (a, lse, lse64)


def logsumexp_backward(dlse, cache):
    """``da_nk = dlse_n softmax(a_n)_k`` (N, K), 0 on an all -inf row; a new array (overwrites
    nothing). ``exp(a - lse64)``, with ``a - lse64`` rounded once to the dtype."""
    a, _, lse64 = cache
    n, k = a.shape
    da = np.empty_like(a)
    kernel = logsumexp_backward_kernel_parallel if _parallel(n, k) else logsumexp_backward_kernel
    kernel(da, dlse, a, lse64, n, k)
    return da
