"""The importance-weighted estimate of log p(x) and the fused log importance weights on the GPU:
launchers of kernels/iwae.cu (and of kernels/logsumexp.cu for the estimate).

    iwae:        est_n = logsumexp_k(logw_nk) - log K                       (N, K) -> (N,)
    log_weight:  logw_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n)

Same public names, signatures and caches as fastvae/cpu/iwae.py: ``iwae_forward(logw) -> (est,
(logw, lse, lse64))``, ``iwae_backward(dest, cache) -> dlogw``, ``log_weight_forward(x, dec_out, mu,
logvar, eps, likelihood, dec_logvar) -> (logw, (x, dec_out, mu, sigma, eps, inv_var, gaussian))``
(sigma float64 (N, L), inv_var (D,) in the dtype), ``log_weight_backward(dlogw, cache) ->
(ddec_out, dmu, dlogvar[, ddec_logvar])``. Everything stays on the device: the Gaussian constant
``-1/2 (D log 2 pi + sum dec_logvar)`` is a (1,) float64 device array read by the kernel, not a
Python float.
"""
import numpy as np

from fastvae._reference import LIKELIHOODS, LOG_2PI
from fastvae import _compose
from fastvae.cuda import logsumexp
from fastvae._device import to_host
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel
from fastvae.cuda.elbo import first_bad_buffer, refuse_bad_x

# 256 threads = 8 warps per block: 8 (n, k) pairs (forward) or 8 (n, l) entries (backward latent)
# per block, or the columns of one block of pairs (backward ddec_out). Not yet measured on a GPU.
THREADS_PER_BLOCK = 256
# Grid cap: warps grid-stride beyond it (forward, latent); for the ddec_out kernel it is the number
# of per-block ddec_logvar partial rows (4096 x 784 float64 = 25 MB at most, read once).
MAX_BLOCKS = 4096
# ddec_out kernel: (n, k) pairs per block before MAX_BLOCKS caps the grid (each thread then does
# PAIRS_PER_BLOCK x ceil(D / THREADS_PER_BLOCK) elements: 64 at D = 784).
PAIRS_PER_BLOCK = 16


# ---------------------------------------------------------------------------------------------
# iwae estimate
# ---------------------------------------------------------------------------------------------
def iwae_forward(logw):
    """``est_n = logsumexp_k(logw_nk) - log K``: logw (N, K) -> (est (N,), (logw, lse, lse64));
    fastvae/_compose.py::iwae_forward over fastvae/cuda/logsumexp.py."""
    return _compose.iwae_forward(logsumexp, logw)


def iwae_backward(dest, cache):
    """``dlogw_nk = dest_n softmax_k(logw_n)`` (N, K), a new array;
    fastvae/_compose.py::iwae_backward."""
    return _compose.iwae_backward(logsumexp, dest, cache)


# ---------------------------------------------------------------------------------------------
# log importance weights
# ---------------------------------------------------------------------------------------------
def _warp_blocks(n_items):
    """Blocks for a warp-per-item kernel: cdiv(items, warps per block), capped at MAX_BLOCKS."""
    return max(1, min(cdiv(n_items, THREADS_PER_BLOCK // 32), MAX_BLOCKS))


def log_weight_forward(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None):
    """Log importance weights ``logw_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n)``.

    x (N, D); dec_out (N, K, D) = decoder(z) (logits for "bernoulli", means for "gaussian");
    mu, logvar (N, L); eps (N, K, L); dec_logvar (D,) for "gaussian" -> (logw (N, K), cache).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    xp = array_module(x)
    n, k, d = dec_out.shape
    n_l = mu.shape[1]
    gaussian = likelihood == "gaussian"
    suffix = dtype_suffix(x.dtype)
    sigma = xp.exp(0.5 * logvar.astype(np.float64))                       # (N, L) float64
    if gaussian:
        lv = dec_logvar.astype(np.float64)
        inv_var = xp.exp(-lv).astype(x.dtype)                              # (D,), rounded once
        gauss_const = -0.5 * (d * LOG_2PI + xp.sum(lv, keepdims=True))     # (1,) on the device
    else:
        inv_var, gauss_const = xp.empty(0, dtype=x.dtype), xp.zeros(1)
    logw = xp.empty((n, k), dtype=x.dtype)
    # (1,) uint64: the first bad x (fastvae/cuda/elbo.py::refuse_bad_x); not read for Gaussian
    first_bad = xp.empty(1, dtype=np.uint64) if gaussian else first_bad_buffer(xp)
    if n * k:
        kernel("iwae", f"log_weight_forward_kernel_{suffix}")(
            (_warp_blocks(n * k),), (THREADS_PER_BLOCK,),
            (logw, first_bad, x, dec_out, mu, logvar, sigma, eps, inv_var, gauss_const,
             np.int32(gaussian), np.int64(n), np.int64(k), np.int64(d), np.int64(n_l)))
        if not gaussian:
            refuse_bad_x("log_weight_forward", x, int(to_host(first_bad)[0]))
    return logw, (x, dec_out, mu, sigma, eps, inv_var, gaussian)


def log_weight_backward(dlogw, cache):
    """Gradients of log_weight_forward with eps held fixed (the decoder's own dependence on z is
    not included): ``(ddec_out (N, K, D), dmu (N, L), dlogvar (N, L))``, plus ``ddec_logvar (D,)``
    for "gaussian". New arrays (overwrite nothing).

    ddec_logvar is deterministic: per-block float64 partials (one row per block of the ddec_out
    kernel), summed here by ``xp.sum`` in a fixed order; no atomics."""
    x, dec_out, mu, sigma, eps, inv_var, gaussian = cache
    xp = array_module(x)
    n, k, d = dec_out.shape
    n_l = mu.shape[1]
    suffix = dtype_suffix(x.dtype)
    ddec_out = xp.empty_like(dec_out)
    dmu = xp.empty_like(mu)
    dlogvar = xp.empty_like(mu)
    blocks = max(1, min(cdiv(n * k, PAIRS_PER_BLOCK), MAX_BLOCKS))
    dlv_blocks = xp.zeros((blocks, d if gaussian else 0))                  # float64
    if n * k * d:
        kernel("iwae", f"log_weight_backward_dec_kernel_{suffix}")(
            (blocks,), (THREADS_PER_BLOCK,),
            (ddec_out, dlv_blocks, dlogw, x, dec_out, inv_var, np.int32(gaussian),
             np.int64(n), np.int64(k), np.int64(d)))
    if n * n_l:
        kernel("iwae", f"log_weight_backward_latent_kernel_{suffix}")(
            (_warp_blocks(n * n_l),), (THREADS_PER_BLOCK,),
            (dmu, dlogvar, dlogw, mu, sigma, eps, np.int64(n), np.int64(k), np.int64(n_l)))
    if not gaussian:
        return ddec_out, dmu, dlogvar
    return ddec_out, dmu, dlogvar, (-0.5 * dlv_blocks.sum(axis=0)).astype(x.dtype)
