"""The importance-weighted estimate of log p(x) and the fused log importance weights, on the CPU.

    iwae:        est_n = logsumexp_k(logw_nk) - log K                       (N, K) -> (N,)
    log_weight:  logw_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n)
                 z_nk = mu_n + exp(logvar_n / 2) eps_nk;  log p(z) - log q(z | x) =
                 -1/2 sum_l (z_l^2 - logvar_l - eps_l^2)  (log 2 pi cancels; eps, not z - mu)

log_weight is one pass per (n, k) pair: the D-term log-likelihood sum and the L-term latent sum,
without the (N K, D) broadcast of x and the temporaries of the reference. Its backward is one pass
per row n: ddec_out for every k, then dmu, dlogvar summed over k; for the Gaussian, ddec_logvar is
summed over all (n, k) in float64 per block of rows (blocks depend on N only, so the serial and the
parallel kernels give identical results), the blocks added afterwards: no races, no atomics.

Bernoulli x is checked in the forward's loop over x (flags per (n, k) pair; fastvae/cpu/elbo.py's
refuse_bad_x raises ValueError naming the first x outside [0, 1] or NaN).

Numerics. Elementwise math runs in the input dtype with the vectorizable polynomials
``fast_exp`` and ``log1p_unit`` of fastvae/cpu/_math.py (float32: 8 AVX2 lanes; loglik.py's
softplus and sigmoid run in float64 whatever the dtype); sums over d of float32 inputs are float32
within blocks of SUM_BLOCK = 1024 and float64 across blocks; latent terms and all sums over k are
float64.
"""
import numpy as np
from numba import prange

from fastvae._reference import LIKELIHOODS, LOG_2PI
from fastvae import _compose
from fastvae.cpu import logsumexp
from fastvae.cpu._math import fast_exp, log1p_unit
from fastvae.cpu._numba import jit, jit_twins
from fastvae.cpu.elbo import refuse_bad_x
from fastvae.cpu.loglik import x_outside_unit
from fastvae.cpu.logsumexp import SUM_BLOCK

# prange from N*K*D >= these on (and >= 2 pairs / row blocks). 2 threads vs 1, float32
# (bench_iwae.py::test_log_weight_parallel_vs_serial), forward / backward:
#   N x K x D       Bernoulli       Gaussian
#   2 x 4 x 784     1.38x / 0.79x   0.56x / 0.65x      (bwd: one row block, nothing to share)
#   16 x 1 x 784    1.59x / 1.38x   0.77x / 0.86x
#   16 x 4 x 784    1.91x / 1.71x   1.42x / 1.43x
#   128 x 1 x 784   1.81x / 1.90x   2.08x / 1.75x
#   128 x 64 x 784  2.00x / 1.88x   2.09x / 1.58x
# (forward, one thread: Bernoulli ~3 ns/element, Gaussian ~0.6 ns/element.)
PARALLEL_MIN_BERNOULLI = 1 << 13
PARALLEL_MIN_GAUSSIAN = 1 << 15

# Backward row blocks (the prange unit; each owns a float64 partial ddec_logvar row): 4 rows per
# block, at most 64 blocks, so a batch of 128 gives 32 blocks to share between threads.
ROWS_PER_BLOCK = 4
MAX_BLOCKS = 64


# ---------------------------------------------------------------------------------------------
# iwae estimate
# ---------------------------------------------------------------------------------------------
def iwae_forward(logw):
    """``est_n = logsumexp_k(logw_nk) - log K``: logw (N, K) -> (est (N,), (logw, lse, lse64));
    fastvae/_compose.py::iwae_forward over fastvae/cpu/logsumexp.py."""
    return _compose.iwae_forward(logsumexp, logw)


def iwae_backward(dest, cache):
    """``dlogw_nk = dest_n softmax_k(logw_n)`` (N, K), a new array;
    fastvae/_compose.py::iwae_backward."""
    return _compose.iwae_backward(logsumexp, dest, cache)


# ---------------------------------------------------------------------------------------------
# row functions (one (n, k) pair; float64 results)
# ---------------------------------------------------------------------------------------------
@jit
def _bernoulli_term(x, l, zero):
    # x l - softplus(l), softplus(l) = max(l, 0) + log1p(exp(-|l|)); NaN through the log1p
    return x * l - ((l if l > zero else zero) + log1p_unit(fast_exp(-abs(l))))


@jit
def bernoulli_ll_row(x_row, l_row):
    """``sum_d x_d l_d - softplus(l_d)`` (float64; dtype blocks of SUM_BLOCK, float64 across)
    and, from the same loop, whether any x_d is outside [0, 1] or NaN -> (float64, bool)."""
    # math: fastvae/_reference.py::bernoulli_loglik_forward
    zero, one = l_row.dtype.type(0), l_row.dtype.type(1)
    total = 0.0
    bad = False
    for j0 in range(0, l_row.shape[0], SUM_BLOCK):
        block = zero
        for j in range(j0, min(j0 + SUM_BLOCK, l_row.shape[0])):
            block += _bernoulli_term(x_row[j], l_row[j], zero)
            bad |= x_outside_unit(x_row[j], zero, one)
        total += block
    return total, bad


@jit
def _gaussian_term(x, m, iv):
    r = x - m
    return r * r * iv


@jit
def gaussian_sq_row(x_row, m_row, inv_var):
    """``sum_d (x_d - m_d)^2 inv_var_d`` (float64; dtype blocks, float64 across)."""
    # math: fastvae/_reference.py::gaussian_loglik_forward (the data-dependent part)
    total = 0.0
    for j0 in range(0, m_row.shape[0], SUM_BLOCK):
        block = m_row.dtype.type(0)
        for j in range(j0, min(j0 + SUM_BLOCK, m_row.shape[0])):
            block += _gaussian_term(x_row[j], m_row[j], inv_var[j])
        total += block
    return total


@jit
def latent_row(mu_row, logvar_row, sigma_row, eps_row):
    """``log p(z) - log q(z | x) = -1/2 sum_l (z_l^2 - logvar_l - eps_l^2)``, float64."""
    # math: fastvae/_reference.py::log_weight_forward (log_pz - log_qz)
    acc = 0.0
    for j in range(mu_row.shape[0]):
        e = np.float64(eps_row[j])
        z = np.float64(mu_row[j]) + sigma_row[j] * e
        acc += z * z - np.float64(logvar_row[j]) - e * e
    return -0.5 * acc


@jit
def _log_weight_pair(x, dec_out, mu, logvar, sigma, eps, inv_var, gauss_const, gaussian, i, j):
    # -> (logw_ij float64, bad: Bernoulli x[i] has a value outside [0, 1] or NaN)
    if gaussian:
        ll, bad = gauss_const - 0.5 * gaussian_sq_row(x[i], dec_out[i, j], inv_var), False
    else:
        ll, bad = bernoulli_ll_row(x[i], dec_out[i, j])
    return ll + latent_row(mu[i], logvar[i], sigma[i], eps[i, j]), bad


@jit
def _bernoulli_grad_row(dl_row, g, x_row, l_row):
    # dl_row = g (x - sigmoid(l)), sigmoid(l) = (l >= 0 ? 1 : e) / (1 + e), e = exp(-|l|)
    # math: fastvae/_reference.py::bernoulli_loglik_backward
    one = l_row.dtype.type(1)
    for d in range(l_row.shape[0]):
        l = l_row[d]
        e = fast_exp(-abs(l))
        dl_row[d] = g * (x_row[d] - (one if l >= 0 else e) / (one + e))


@jit
def _gaussian_grad_row(dm_row, dlv_acc, g, x_row, m_row, inv_var):
    # dm_row = g (x - m) iv (overwrites); dlv_acc += g (1 - (x - m)^2 iv) (float64, accumulates)
    # math: fastvae/_reference.py::gaussian_loglik_backward
    one = m_row.dtype.type(1)
    for d in range(m_row.shape[0]):
        t = (x_row[d] - m_row[d]) * inv_var[d]
        dm_row[d] = g * t
        dlv_acc[d] += np.float64(g * (one - (x_row[d] - m_row[d]) * t))


@jit
def _log_weight_backward_rows(ddec_out, dmu, dlogvar, dlv_acc, dlogw, x, dec_out, mu, sigma, eps,
                              inv_var, gaussian, start, stop):
    # rows start..stop-1; overwrites ddec_out, dmu, dlogvar rows; accumulates into dlv_acc (D,)
    # math: fastvae/_reference.py::log_weight_backward
    n_k, n_l = eps.shape[1], eps.shape[2]
    for i in range(start, stop):
        for j in range(n_k):
            g = dlogw[i, j]
            if gaussian:
                _gaussian_grad_row(ddec_out[i, j], dlv_acc, g, x[i], dec_out[i, j], inv_var)
            else:
                _bernoulli_grad_row(ddec_out[i, j], g, x[i], dec_out[i, j])
        for t in range(n_l):   # dmu = -sum_k g z; dlogvar = sum_k g (1/2 - z eps sigma / 2)
            sig, m = sigma[i, t], np.float64(mu[i, t])
            acc_mu, acc_lv = 0.0, 0.0
            for j in range(n_k):
                g, e = np.float64(dlogw[i, j]), np.float64(eps[i, j, t])
                z = m + sig * e
                acc_mu -= g * z
                acc_lv += g * (0.5 - 0.5 * z * e * sig)
            dmu[i, t] = acc_mu
            dlogvar[i, t] = acc_lv


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
def log_weight_forward_kernel(logw, bad, x, dec_out, mu, logvar, sigma, eps, inv_var,
                              gauss_const, gaussian, n, k):
    # logw (N, K); bad (N, K) bool: pair (n, k) saw an x[n] outside [0, 1] or NaN (Bernoulli;
    # x[n] is read once per k, each time checked); x (N, D); dec_out (N, K, D); mu, logvar (N, L);
    # sigma (N, L) float64; eps (N, K, L); inv_var (D,) (Gaussian; empty for Bernoulli);
    # gauss_const float64
    for p in prange(n * k):   # the (n, k) pairs
        i, j = p // k, p % k
        logw[i, j], bad[i, j] = _log_weight_pair(x, dec_out, mu, logvar, sigma, eps, inv_var,
                                                 gauss_const, gaussian, i, j)


log_weight_forward_kernel, log_weight_forward_kernel_parallel = jit_twins(
    log_weight_forward_kernel)


def log_weight_backward_kernel(ddec_out, dmu, dlogvar, dlv_blocks, dlogw, x, dec_out, mu, sigma,
                               eps, inv_var, gaussian, n):
    # ddec_out (N, K, D); dmu, dlogvar (N, L); dlv_blocks (B, D) float64 zeros: block b's sum;
    # dlogw (N, K); x (N, D); dec_out (N, K, D); mu (N, L); sigma (N, L) float64; eps (N, K, L)
    n_blocks = dlv_blocks.shape[0]
    for b in prange(n_blocks):   # the row blocks
        _log_weight_backward_rows(ddec_out, dmu, dlogvar, dlv_blocks[b], dlogw, x, dec_out, mu,
                                  sigma, eps, inv_var, gaussian, b * n // n_blocks,
                                  (b + 1) * n // n_blocks)


log_weight_backward_kernel, log_weight_backward_kernel_parallel = jit_twins(
    log_weight_backward_kernel)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _parallel_min(gaussian):
    return PARALLEL_MIN_GAUSSIAN if gaussian else PARALLEL_MIN_BERNOULLI


def log_weight_forward(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None):
    """Log importance weights ``logw_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n)``.

    x (N, D); dec_out (N, K, D) = decoder(z) (logits for "bernoulli", means for "gaussian");
    mu, logvar (N, L); eps (N, K, L); dec_logvar (D,) for "gaussian" -> (logw (N, K), cache).
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    n, k, d = dec_out.shape
    gaussian = likelihood == "gaussian"
    sigma = np.exp(0.5 * logvar.astype(np.float64))          # (N, L) float64
    if gaussian:
        lv = dec_logvar.astype(np.float64)
        inv_var = np.exp(-lv).astype(x.dtype)                # (D,), rounded once
        gauss_const = -0.5 * (d * LOG_2PI + float(np.sum(lv)))
    else:
        inv_var, gauss_const = np.empty(0, dtype=x.dtype), 0.0
    logw = np.empty((n, k), dtype=x.dtype)
    bad = np.empty((n, k), dtype=np.bool_)
    parallel = n * k > 1 and n * k * d >= _parallel_min(gaussian)
    kernel = log_weight_forward_kernel_parallel if parallel else log_weight_forward_kernel
    kernel(logw, bad, x, dec_out, mu, logvar, sigma, eps, inv_var, gauss_const, gaussian, n, k)
    if not gaussian:
        refuse_bad_x("log_weight_forward", x, bad)
    return logw, (x, dec_out, mu, sigma, eps, inv_var, gaussian)


def log_weight_backward(dlogw, cache):
    """Gradients of log_weight_forward with eps held fixed (the decoder's own dependence on z is
    not included): ``(ddec_out (N, K, D), dmu (N, L), dlogvar (N, L))``, plus ``ddec_logvar (D,)``
    for "gaussian". New arrays (overwrite nothing)."""
    x, dec_out, mu, sigma, eps, inv_var, gaussian = cache
    n, k, d = dec_out.shape
    ddec_out = np.empty_like(dec_out)
    dmu = np.empty_like(mu)
    dlogvar = np.empty_like(mu)
    n_blocks = max(1, min(MAX_BLOCKS, -(-n // ROWS_PER_BLOCK)))
    dlv_blocks = np.zeros((n_blocks, d if gaussian else 0))   # float64
    kernel = (log_weight_backward_kernel_parallel
              if n_blocks > 1 and n * k * d >= _parallel_min(gaussian)
              else log_weight_backward_kernel)
    kernel(ddec_out, dmu, dlogvar, dlv_blocks, dlogw, x, dec_out, mu, sigma, eps, inv_var,
           gaussian, n)
    if not gaussian:
        return ddec_out, dmu, dlogvar
    return ddec_out, dmu, dlogvar, (-0.5 * dlv_blocks.sum(axis=0)).astype(x.dtype)
