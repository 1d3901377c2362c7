"""Log-sum-exp over the last axis on the GPU, one-shot and streaming: launchers of
kernels/logsumexp.cu.

Same public names, signatures, special values and caches as fastvae/cpu/logsumexp.py:
``logsumexp_partial(a) -> (m, s)``, ``logsumexp_merge(m1, s1, m2, s2) -> (m, s)``,
``logsumexp_finalize(m, s) -> lse``, ``logsumexp_forward(a) -> (lse, (a, lse, lse64))`` (lse64
(N,) float64: the unrounded m + log s, which the backward's softmax uses),
``logsumexp_backward(dlse, cache) -> da``. Inputs are C-contiguous CuPy arrays of one float dtype
(fastvae.ops validates); the tests run this file unchanged on NumPy arrays through the host harness.

Launch configurations: the row kernels (partial, forward) run one block of THREADS_PER_BLOCK
threads per row, at most MAX_BLOCKS blocks (rows grid-strided); the elementwise kernels (backward,
merge, finalize) run a grid-stride loop over min(cdiv(n, THREADS_PER_BLOCK), MAX_BLOCKS) blocks.
"""
import numpy as np

from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel

# 256 threads (the default) per row block: K = 5000 gives ~20 terms per thread before the block
# tree (8 warps). 128 and 512 are the alternatives to sweep (benchmarks/bench_logsumexp.py).
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap: rows (row kernels) or grid-stride chunks (elementwise kernels) beyond it loop.
MAX_BLOCKS = _module.MAX_BLOCKS


def _row_blocks(n):
    return max(1, min(n, MAX_BLOCKS))


def _elementwise_blocks(n):
    return max(1, min(cdiv(n, THREADS_PER_BLOCK), MAX_BLOCKS))


def logsumexp_partial(a):
    """Streaming state of a chunk of columns: a (N, K) -> (m (N,), s (N,)), ``m = max_k a``,
    ``s = sum_k exp(a - m)``; all -inf row -> (-inf, 0), +inf -> (+inf, 1), NaN -> (NaN, NaN)."""
    xp = array_module(a)
    n, k = a.shape
    m = xp.empty(n, dtype=a.dtype)
    s = xp.empty(n, dtype=a.dtype)
    if n:
        kernel("logsumexp", f"logsumexp_partial_kernel_{dtype_suffix(a.dtype)}")(
            (_row_blocks(n),), (THREADS_PER_BLOCK,), (m, s, a, np.int32(n), np.int64(k)))
    return m, s


def logsumexp_merge(m1, s1, m2, s2):
    """Merge two streaming states (N,) each -> (m, s): ``m = max(m1, m2)``,
    ``s = s1 e^(m1 - m) + s2 e^(m2 - m)``; a side with m = -inf adds 0; m = +inf gives s = 1."""
    xp = array_module(m1)
    n = m1.shape[0]
    m = xp.empty_like(m1)
    s = xp.empty_like(s1)
    if n:
        kernel("logsumexp", f"logsumexp_merge_kernel_{dtype_suffix(m1.dtype)}")(
            (_elementwise_blocks(n),), (THREADS_PER_BLOCK,), (m, s, m1, s1, m2, s2, np.int64(n)))
    return m, s


def logsumexp_finalize(m, s):
    """``lse = m + log s`` (N,): -inf for (-inf, 0), +inf for (+inf, 1), NaN for NaN."""
    xp = array_module(m)
    n = m.shape[0]
    lse = xp.empty_like(m)
    if n:
        kernel("logsumexp", f"logsumexp_finalize_kernel_{dtype_suffix(m.dtype)}")(
            (_elementwise_blocks(n),), (THREADS_PER_BLOCK,), (lse, m, s, np.int64(n)))
    return lse


def logsumexp_forward(a):
    """``lse_n = log sum_k exp(a_nk)``: a (N, K) -> (lse (N,), cache), ``cache = (a, lse,
    lse64)``, lse64 (N,) float64 the unrounded m + log s (lse is lse64 rounded once to the
    dtype), which the backward uses."""
    xp = array_module(a)
    n, k = a.shape
    lse = xp.empty(n, dtype=a.dtype)
    lse64 = xp.empty(n, dtype=np.float64)
    if n:
        kernel("logsumexp", f"logsumexp_forward_kernel_{dtype_suffix(a.dtype)}")(
            (_row_blocks(n),), (THREADS_PER_BLOCK,), (lse, lse64, a, np.int32(n), np.int64(k)))
    return lse, (a, lse, lse64)


def logsumexp_backward(dlse, cache):
    """``da_nk = dlse_n softmax(a_n)_k`` (N, K), 0 on an all -inf row; a new array (overwrites
    nothing). ``exp(a - lse64)``, with ``a - lse64`` rounded once to the dtype."""
    a, _, lse64 = cache
    xp = array_module(a)
    n, k = a.shape
    da = xp.empty_like(a)
    if n * k:
        kernel("logsumexp", f"logsumexp_backward_kernel_{dtype_suffix(a.dtype)}")(
            (_elementwise_blocks(n * k),), (THREADS_PER_BLOCK,),
            (da, dlse, a, lse64, np.int64(n), np.int64(k)))
    return da
