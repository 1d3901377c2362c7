"""KL(N(mu, exp(logvar)) || N(0, I)) per row on the GPU, and its backward: launchers of kernels/kl.cu.

Same public names, signatures and cache as fastvae/cpu/kl.py. One warp per row (L is the latent
width, 20 in the VAE: a block per row would idle most of its threads); rows are grid-strided by
warps, so the grid is capped at MAX_BLOCKS. Row sums accumulate in double for float32 inputs too
(as on the CPU); results are rounded once to the input dtype.

Tests run this file unchanged on NumPy arrays through the host harness (tests/cuda/conftest.py),
with THREADS_PER_BLOCK and MAX_BLOCKS patched down (one warp per block, 3 blocks) so several rows
per warp run on small inputs.
"""
import numpy as np

from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel

# 256 threads (the default) = 8 warps = 8 rows per block.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap of the warp-stride row loop: 4096 blocks x 8 warps = 32768 rows per pass.
MAX_BLOCKS = _module.MAX_BLOCKS

_INT_MAX = 2**31 - 1


def _check_rows(op, mu, logvar):
    assert mu.ndim == 2 and logvar.shape == mu.shape and logvar.dtype == mu.dtype, (
        f"{op}: mu {mu.dtype} {mu.shape} and logvar {logvar.dtype} {logvar.shape} must be "
        f"(N, L) arrays of one shape and dtype")
    assert mu.flags.c_contiguous and logvar.flags.c_contiguous, \
        f"{op}: mu and logvar must be C-contiguous"
    if mu.shape[0] > _INT_MAX or mu.shape[1] > _INT_MAX:
        raise ValueError(f"{op}: shape {mu.shape} too large (rows and columns < 2^31)")
    return dtype_suffix(mu.dtype)


def _grid(n_rows):
    rows_per_block = THREADS_PER_BLOCK // 32
    return min(max(1, cdiv(n_rows, rows_per_block)), MAX_BLOCKS)


def kl_forward(mu, logvar):
    """KL of the diagonal Gaussian posterior from the standard normal prior, per row.
    mu, logvar (N, L) -> (kl (N,), cache). ``cache = (mu, logvar)``."""
    suffix = _check_rows("kl_forward", mu, logvar)
    xp = array_module(mu)
    n_rows, n_cols = mu.shape
    kl = xp.empty(n_rows, dtype=mu.dtype)
    if n_rows:
        kernel("kl", f"kl_forward_kernel_{suffix}")(
            (_grid(n_rows),), (THREADS_PER_BLOCK,),
            (kl, mu, logvar, np.int32(n_rows), np.int32(n_cols)))
    return kl, (mu, logvar)


def kl_backward(dkl, cache):
    """-> (dmu, dlogvar), each (N, L): new arrays (overwrites nothing).
    ``dmu = dkl[:, None] mu``; ``dlogvar = dkl[:, None] expm1(logvar) / 2``."""
    mu, logvar = cache
    suffix = _check_rows("kl_backward", mu, logvar)
    assert dkl.shape == (mu.shape[0],) and dkl.dtype == mu.dtype and dkl.flags.c_contiguous, (
        f"kl_backward: dkl is {dkl.dtype} {dkl.shape}, expected a contiguous {mu.dtype} "
        f"({mu.shape[0]},)")
    xp = array_module(mu)
    n_rows, n_cols = mu.shape
    dmu = xp.empty_like(mu)
    dlogvar = xp.empty_like(logvar)
    if mu.size:
        kernel("kl", f"kl_backward_kernel_{suffix}")(
            (_grid(n_rows),), (THREADS_PER_BLOCK,),
            (dmu, dlogvar, dkl, mu, logvar, np.int32(n_rows), np.int32(n_cols)))
    return dmu, dlogvar
