"""Per-row log-likelihoods on the GPU (Bernoulli from logits, diagonal Gaussian with a per-dimension
log-variance) and their backwards: launchers of kernels/loglik.cu.

Same public names, signatures and caches as fastvae/cpu/loglik.py (``gaussian_inv_var`` and
``row_blocks`` too, used by fastvae/cuda/elbo.py). Forwards: one block per row (block-strided, grid
capped at MAX_BLOCKS), block reductions in double. The Gaussian ``dlogvar`` (a sum over rows) is
reduced without atomics: ``row_blocks(N)`` CUDA blocks each write one float64 partial row, then
``gaussian_dlogvar_reduce_kernel`` adds the partials of each column in a fixed order, so results are
bit-identical from run to run.

Tests run this file unchanged on NumPy arrays through the host harness, with THREADS_PER_BLOCK and
MAX_BLOCKS patched down (tests/cuda/conftest.py TINY) so several rows per block run on small inputs.
"""
import numpy as np

from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel

# Row reductions over D = 784: 256 threads (the default) read ~3 coalesced elements each;
# block_sum_all is one shuffle round per warp and 32 doubles of shared memory.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap of the block-strided row loops (and of elementwise grid-stride loops).
MAX_BLOCKS = _module.MAX_BLOCKS
# Gaussian dlogvar: rows per CUDA row block, and the most row blocks (the partial buffer is
# (B, D) float64: 1024 x 784 x 8 B = 6.4 MB at most, vs 376 MB of x and mean at N = 60000).
# Small row blocks keep enough blocks in flight at N = 128 (32 blocks).
GAUSSIAN_ROWS_PER_BLOCK = 4
GAUSSIAN_MAX_ROW_BLOCKS = 1024

_INT_MAX = 2**31 - 1


def _check(op, *named, shape=None, dtype=None):
    """All arrays C-contiguous, one dtype; ``shape`` when given; sizes < 2^31 (int kernel args)."""
    first = named[0][1]
    dtype = first.dtype if dtype is None else dtype
    for name, a in named:
        assert a.dtype == dtype and a.flags.c_contiguous and (shape is None or a.shape == shape), (
            f"{op}: {name} is {a.dtype} {a.shape}"
            f"{'' if a.flags.c_contiguous else ' (not C-contiguous)'}; expected a C-contiguous "
            f"{np.dtype(dtype).name} array of shape {shape if shape is not None else first.shape}")
        if any(s > _INT_MAX for s in a.shape):
            raise ValueError(f"{op}: {name} shape {a.shape} too large (sizes < 2^31)")
    return dtype_suffix(dtype)


def _row_grid(n_rows):
    return min(max(1, n_rows), MAX_BLOCKS)


def row_blocks(n):
    """Number of row blocks of a sum over rows: depends on n and the launch constants only, so the
    result is deterministic (no atomics)."""
    return max(1, min(GAUSSIAN_MAX_ROW_BLOCKS, MAX_BLOCKS, cdiv(n, GAUSSIAN_ROWS_PER_BLOCK)))


# ---------------------------------------------------------------------------------------------
# Bernoulli: ll_n = sum_d x_nd l_nd - softplus(l_nd)
# ---------------------------------------------------------------------------------------------
def bernoulli_loglik_forward(x, logits):
    """Bernoulli log-likelihood per row from logits. x (values in [0, 1]), logits (N, D) ->
    (ll (N,), cache). ``cache = (x, logits)``."""
    assert x.ndim == 2, f"bernoulli_loglik_forward: x must be (N, D), got {x.shape}"
    suffix = _check("bernoulli_loglik_forward", ("x", x), ("logits", logits), shape=x.shape)
    n_rows, n_cols = x.shape
    ll = array_module(x).empty(n_rows, dtype=x.dtype)
    if n_rows:
        kernel("loglik", f"bernoulli_loglik_forward_kernel_{suffix}")(
            (_row_grid(n_rows),), (THREADS_PER_BLOCK,),
            (ll, x, logits, np.int32(n_rows), np.int32(n_cols)))
    return ll, (x, logits)


def bernoulli_loglik_backward(dll, cache):
    """``dlogits = dll[:, None] * (x - sigmoid(logits))`` (N, D): a new array (overwrites
    nothing)."""
    x, logits = cache
    suffix = _check("bernoulli_loglik_backward", ("x", x), ("logits", logits), shape=x.shape)
    _check("bernoulli_loglik_backward", ("dll", dll), shape=(x.shape[0],), dtype=x.dtype)
    n_rows, n_cols = x.shape
    dlogits = array_module(x).empty_like(logits)
    if x.size:
        kernel("loglik", f"bernoulli_loglik_backward_kernel_{suffix}")(
            (_row_grid(n_rows),), (THREADS_PER_BLOCK,),
            (dlogits, dll, x, logits, np.int32(n_rows), np.int32(n_cols)))
    return dlogits


# ---------------------------------------------------------------------------------------------
# Gaussian: ll_n = -1/2 sum_d (log 2 pi + lv_d + (x_nd - m_nd)^2 exp(-lv_d))
# ---------------------------------------------------------------------------------------------
def gaussian_inv_var(logvar):
    """``exp(-logvar)`` in float64, (D,): computed once per call (one small kernel), shared by
    every row."""
    suffix = _check("gaussian_inv_var", ("logvar", logvar))
    n_cols = logvar.shape[0]
    inv_var = array_module(logvar).empty(n_cols, dtype=np.float64)
    if n_cols:
        kernel("loglik", f"gaussian_inv_var_kernel_{suffix}")(
            (min(cdiv(n_cols, THREADS_PER_BLOCK), MAX_BLOCKS),), (THREADS_PER_BLOCK,),
            (inv_var, logvar, np.int32(n_cols)))
    return inv_var


def gaussian_loglik_forward(x, mean, logvar):
    """Diagonal Gaussian log-likelihood per row. x, mean (N, D); logvar (D,) -> (ll (N,), cache).
    ``cache = (x, mean, logvar, inv_var)`` with ``inv_var = exp(-logvar)`` in float64."""
    assert x.ndim == 2, f"gaussian_loglik_forward: x must be (N, D), got {x.shape}"
    suffix = _check("gaussian_loglik_forward", ("x", x), ("mean", mean), shape=x.shape)
    _check("gaussian_loglik_forward", ("logvar", logvar), shape=(x.shape[1],), dtype=x.dtype)
    inv_var = gaussian_inv_var(logvar)
    n_rows, n_cols = x.shape
    ll = array_module(x).empty(n_rows, dtype=x.dtype)
    if n_rows:
        kernel("loglik", f"gaussian_loglik_forward_kernel_{suffix}")(
            (_row_grid(n_rows),), (THREADS_PER_BLOCK,),
            (ll, x, mean, logvar, inv_var, np.int32(n_rows), np.int32(n_cols)))
    return ll, (x, mean, logvar, inv_var)


def gaussian_dlogvar_reduce(partial, dtype):
    """``-1/2 sum_b partial[b]`` ((B, D) float64 -> (D,) of ``dtype``), b in order, on the device."""
    n_blocks, n_cols = partial.shape
    dlogvar = array_module(partial).empty(n_cols, dtype=dtype)
    if n_cols:
        kernel("loglik", f"gaussian_dlogvar_reduce_kernel_{dtype_suffix(dtype)}")(
            (min(cdiv(n_cols, THREADS_PER_BLOCK), MAX_BLOCKS),), (THREADS_PER_BLOCK,),
            (dlogvar, partial, np.int32(n_blocks), np.int32(n_cols)))
    return dlogvar


def gaussian_loglik_backward(dll, cache):
    """-> (dmean (N, D), dlogvar (D,)): new arrays (overwrites nothing).
    ``dmean = dll (x - m) exp(-lv)``; ``dlogvar_d = -1/2 sum_n dll_n (1 - (x - m)^2 exp(-lv_d))``,
    summed over rows in float64 by row blocks (``row_blocks``) without atomics."""
    x, mean, logvar, inv_var = cache
    suffix = _check("gaussian_loglik_backward", ("x", x), ("mean", mean), shape=x.shape)
    _check("gaussian_loglik_backward", ("dll", dll), shape=(x.shape[0],), dtype=x.dtype)
    _check("gaussian_loglik_backward", ("inv_var", inv_var), shape=(x.shape[1],), dtype=np.float64)
    xp = array_module(x)
    n_rows, n_cols = x.shape
    dmean = xp.empty_like(mean)
    n_blocks = row_blocks(n_rows)
    # float64 partials: every entry is written when N > 0 (B <= N); zeros give dlogvar = 0 at N = 0
    partial = (xp.empty if n_rows else xp.zeros)((n_blocks, n_cols), dtype=np.float64)
    if x.size:
        kernel("loglik", f"gaussian_loglik_backward_kernel_{suffix}")(
            (n_blocks,), (THREADS_PER_BLOCK,),
            (dmean, partial, dll, x, mean, inv_var, np.int32(n_rows), np.int32(n_cols),
             np.int32(n_blocks)))
    return dmean, gaussian_dlogvar_reduce(partial, logvar.dtype)
