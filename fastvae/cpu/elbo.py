"""Per-row ELBO = log p(x | z) - beta KL(q(z | x) || p(z)) on the CPU: forward, backward, and the
fused loss-and-gradients pass used by training.

``elbo_loss_and_grads`` reads every row of x, dec_out, mu, logvar once and writes every gradient
in the same pass: the upstream gradient of ``loss = -mean_n elbo_n`` is the constant -1/N, so no
row needs its forward value before its backward. Bernoulli shares one exp between softplus and
sigmoid. Its rows run as tiles of fastvae's pool (fastvae/_threads.py); the forward alone runs
in parallel (prange) above a size threshold.

The Gaussian ``ddec_logvar`` is a sum over rows. It is reduced without atomics: rows are split
into ``loglik.row_blocks(N)`` blocks (a number that depends on N only), each block adds its rows
into its own float64 partial row of a (B, D) buffer, and the B partials are added at the end
(pynndescent style). The serial kernel and the pool's tiles therefore give bit-identical
results.

Fused vs forward + backward (elbo_forward, then elbo_backward(-1/N)), float32, D = 784, L = 20,
one thread (NUMBA_NUM_THREADS=1; min of 40 / 8 runs of the benchmarks/bench_elbo.py functions):
Bernoulli N = 128: 1.12 ms vs 1.51 ms (1.36x), N = 4096: 58 ms vs 79 ms (1.35x);
Gaussian N = 128: 0.21 ms vs 0.32 ms (1.48x), N = 4096: 6.6 ms vs 14.0 ms (2.14x).
(Plain NumPy: Bernoulli 3.1 / 177 ms, Gaussian 0.41 / 36 ms.) Two threads roughly halve the fused
times on an idle machine (prange speed-ups in ``_parallel``'s docstring).

Numerics as in loglik.py / kl.py: float64 elements and row sums for every input dtype, results
rounded once to the input dtype; the loss is summed in float64 and returned as a Python float.

Bernoulli x is checked in the loop that reads it (``refuse_bad_x``): outside [0, 1] or NaN raises
ValueError naming the row and column; about 3-8% of the fused pass (at elbo_loss_and_grads).
"""
import numpy as np
from numba import prange

from fastvae._compose import bad_x_message
from fastvae._reference import LIKELIHOODS, LOG_2PI
from fastvae._threads import run_tiles
from fastvae.cpu._atomic import fetch_add
from fastvae.cpu._numba import jit, jit_twins
from fastvae.cpu.kl import KL_PARALLEL_MIN_ELEMENTS, kl_backward, kl_row, kl_row_and_backward
from fastvae.cpu.loglik import (
    BERNOULLI_PARALLEL_MIN_ELEMENTS, GAUSSIAN_PARALLEL_MIN_ELEMENTS,
    bernoulli_loglik_and_backward_row_checked, bernoulli_loglik_backward,
    bernoulli_loglik_row_checked, gaussian_inv_var, gaussian_loglik_backward, gaussian_loglik_row,
    row_blocks)


def _parallel(likelihood, x, mu):
    """Row-parallel when either part's work passes its own op's threshold. Fused pass, 2 threads,
    float32, min of 200 runs, serial vs parallel: Bernoulli 4x784 1.68x, 128x784 2.04x;
    Gaussian 16x256 0.90x, 32x784 1.48x, 128x31 (L = 20: KL-bound) 1.84x, 128x784 1.91x."""
    if x.shape[0] < 2:
        return False
    min_elements = (BERNOULLI_PARALLEL_MIN_ELEMENTS if likelihood == "bernoulli"
                    else GAUSSIAN_PARALLEL_MIN_ELEMENTS)
    return x.size >= min_elements or mu.size >= KL_PARALLEL_MIN_ELEMENTS


# The Bernoulli likelihood's data check. Every kernel that reads x for it (the ELBO forward and
# fused pass here, log_weight_forward in iwae.py) also flags, in that loop, each row holding an
# x outside [0, 1] or NaN (loglik.x_outside_unit); the launcher raises naming the first one. NaN
# x is refused too: a NaN datum is bad input, not a value to propagate (NaN in dec_out, mu,
# logvar still propagates). The message: fastvae/_compose.py::bad_x_message.
# Cost: see the comment at elbo_loss_and_grads.
def refuse_bad_x(op, x, bad):
    """Raise ValueError naming the first (row, then column) x outside [0, 1] or NaN. x (N, D);
    bad: the kernel's flags, (N,) per row or (N, K) per (row, sample). The error path alone
    reads x again (one row)."""
    if not bad.any():
        return
    row = int(np.argmax(bad.reshape(x.shape[0], -1).any(axis=1)))
    x_row = x[row]
    col = int(np.argmax(~((x_row >= 0) & (x_row <= 1))))   # NaN compares False: refused
    raise ValueError(bad_x_message(op, row, col, x_row[col]))


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def elbo_bernoulli_forward_kernel(elbo, bad, x, logits, mu, logvar, beta):
    # elbo (N,); bad (N,) bool: row n has an x outside [0, 1] or NaN; x, logits (N, D);
    # mu, logvar (N, L)
    # math: fastvae/_reference.py::elbo_forward
    for n in prange(x.shape[0]):
        ll, bad[n] = bernoulli_loglik_row_checked(x[n], logits[n])
        elbo[n] = ll - beta * kl_row(mu[n], logvar[n])


elbo_bernoulli_forward_kernel, elbo_bernoulli_forward_kernel_parallel = jit_twins(
    elbo_bernoulli_forward_kernel)


def elbo_gaussian_forward_kernel(elbo, x, mean, mu, logvar, dec_logvar, inv_var, beta):
    # elbo (N,); x, mean (N, D); mu, logvar (N, L); dec_logvar (D,); inv_var (D,) float64
    # math: fastvae/_reference.py::elbo_forward
    for n in prange(x.shape[0]):
        elbo[n] = (gaussian_loglik_row(x[n], mean[n], dec_logvar, inv_var)
                   - beta * kl_row(mu[n], logvar[n]))


elbo_gaussian_forward_kernel, elbo_gaussian_forward_kernel_parallel = jit_twins(
    elbo_gaussian_forward_kernel)


def elbo_forward(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """``elbo_n = loglik(x_n | dec_out_n) - beta kl(mu_n, logvar_n)``, one pass over the rows.

    x, dec_out (N, D) (logits for Bernoulli, means for Gaussian); mu, logvar (N, L);
    dec_logvar (D,) for Gaussian -> (elbo (N,), cache).
    """
    assert likelihood in LIKELIHOODS, likelihood
    beta = float(beta)
    elbo = np.empty(x.shape[0], dtype=x.dtype)
    parallel = _parallel(likelihood, x, mu)
    if likelihood == "bernoulli":
        inv_var = None
        kernel = (elbo_bernoulli_forward_kernel_parallel if parallel
                  else elbo_bernoulli_forward_kernel)
        bad = np.empty(x.shape[0], dtype=np.bool_)
        kernel(elbo, bad, x, dec_out, mu, logvar, beta)
        refuse_bad_x("elbo_forward", x, bad)
    else:
        inv_var = gaussian_inv_var(dec_logvar)
        kernel = (elbo_gaussian_forward_kernel_parallel if parallel
                  else elbo_gaussian_forward_kernel)
        kernel(elbo, x, dec_out, mu, logvar, dec_logvar, inv_var, beta)
    return elbo, (x, dec_out, mu, logvar, likelihood, dec_logvar, inv_var, beta)


# ---------------------------------------------------------------------------------------------
# backward (composed from the loglik and kl backward kernels)
# ---------------------------------------------------------------------------------------------
def elbo_backward(delbo, cache):
    """-> (ddec_out, dmu, dlogvar) for Bernoulli, (ddec_out, dmu, dlogvar, ddec_logvar) for
    Gaussian: new arrays (overwrites nothing). ``dmu, dlogvar = kl_backward(-beta delbo)``."""
    x, dec_out, mu, logvar, likelihood, dec_logvar, inv_var, beta = cache
    dmu, dlogvar = kl_backward((-beta * delbo).astype(delbo.dtype, copy=False), (mu, logvar))
    if likelihood == "bernoulli":
        return bernoulli_loglik_backward(delbo, (x, dec_out)), dmu, dlogvar
    ddec_out, ddec_logvar = gaussian_loglik_backward(delbo, (x, dec_out, dec_logvar, inv_var))
    return ddec_out, dmu, dlogvar, ddec_logvar


# ---------------------------------------------------------------------------------------------
# fused: loss = -mean_n elbo_n and every gradient, one pass
# ---------------------------------------------------------------------------------------------
@jit
def elbo_bernoulli_grads_row(dlogit_row, dmu_row, dlogvar_row, x_row, logit_row, mu_row,
                             logvar_row, g, beta):
    """One row of the fused Bernoulli ELBO with upstream ``g``: writes the three gradient rows
    (overwrites) and returns ``elbo_n`` (float64) and whether the row has an x outside [0, 1]
    or NaN (checked in the loop that reads x)."""
    # math: fastvae/_reference.py::elbo_loss_and_grads
    ll, bad = bernoulli_loglik_and_backward_row_checked(dlogit_row, g, x_row, logit_row)
    kl = kl_row_and_backward(dmu_row, dlogvar_row, -beta * g, mu_row, logvar_row)
    return ll - beta * kl, bad


@jit
def elbo_bernoulli_loss_grads_kernel(elbo, bad, dlogits, dmu, dlogvar, x, logits, mu, logvar, g,
                                     beta):
    # elbo (N,) float64; bad (N,) bool (row n: an x outside [0, 1] or NaN); dlogits (N, D);
    # dmu, dlogvar (N, L); x, logits (N, D); mu, logvar (N, L)
    for n in range(x.shape[0]):
        elbo[n], bad[n] = elbo_bernoulli_grads_row(dlogits[n], dmu[n], dlogvar[n], x[n],
                                                   logits[n], mu[n], logvar[n], g, beta)


@jit
def elbo_gaussian_grads_rows(elbo, dmean, ddec_logvar_acc, dmu, dlogvar, x, mean, mu, logvar,
                             dec_logvar, inv_var, g, beta, start, stop):
    """Rows start..stop-1 of the fused Gaussian ELBO with upstream ``g``: writes elbo, dmean, dmu,
    dlogvar rows (overwrites); ``ddec_logvar_acc[d] += sum_n g (1 - (x - m)^2 inv_var_d)``
    (accumulates, float64; the caller applies the -1/2)."""
    # math: fastvae/_reference.py::elbo_loss_and_grads
    for n in range(start, stop):
        acc = 0.0   # float64 accumulator, also for float32 rows
        for d in range(x.shape[1]):
            diff = np.float64(x[n, d]) - np.float64(mean[n, d])
            t = diff * inv_var[d]
            q = diff * t
            acc += LOG_2PI + np.float64(dec_logvar[d]) + q
            dmean[n, d] = g * t
            ddec_logvar_acc[d] += g * (1.0 - q)
        kl = kl_row_and_backward(dmu[n], dlogvar[n], -beta * g, mu[n], logvar[n])
        elbo[n] = -0.5 * acc - beta * kl


@jit
def elbo_gaussian_loss_grads_kernel(elbo, dmean, ddec_logvar_partial, dmu, dlogvar, x, mean, mu,
                                    logvar, dec_logvar, inv_var, g, beta):
    # elbo (N,) float64; dmean (N, D); ddec_logvar_partial (B, D) float64, zeroed; dmu, dlogvar,
    # mu, logvar (N, L); x, mean (N, D); dec_logvar (D,); inv_var (D,) float64
    n_rows, n_blocks = x.shape[0], ddec_logvar_partial.shape[0]
    for b in range(n_blocks):
        elbo_gaussian_grads_rows(elbo, dmean, ddec_logvar_partial[b], dmu, dlogvar, x, mean, mu,
                                 logvar, dec_logvar, inv_var, g, beta,
                                 b * n_rows // n_blocks, (b + 1) * n_rows // n_blocks)


# Pool tiles (fastvae/_threads.py): Bernoulli by blocks of ROW_TILE rows; Gaussian by the
# loglik.row_blocks(N) blocks, each with its own partial row, as the serial kernel above runs
# them: so the pool gives the serial kernel's bits for any thread count.
ROW_TILE = 32


@jit
def elbo_bernoulli_forward_tiles(counter, n_tiles, elbo, bad, x, logits, mu, logvar, beta,
                                 tile_rows):
    # as elbo_bernoulli_forward_kernel, tile t = rows t * tile_rows .. (a Phase's work,
    # fastvae/_threads.py: counter [claimed, done]; True in the thread that did the last tile).
    # Run by fastvae/_xla.py on XLA's threads.
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        for n in range(t * tile_rows, min(x.shape[0], (t + 1) * tile_rows)):
            ll, bad[n] = bernoulli_loglik_row_checked(x[n], logits[n])
            elbo[n] = ll - beta * kl_row(mu[n], logvar[n])
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def elbo_gaussian_forward_tiles(counter, n_tiles, elbo, x, mean, mu, logvar, dec_logvar,
                                inv_var, beta, tile_rows):
    # as elbo_gaussian_forward_kernel, by tiles (see elbo_bernoulli_forward_tiles)
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        for n in range(t * tile_rows, min(x.shape[0], (t + 1) * tile_rows)):
            elbo[n] = (gaussian_loglik_row(x[n], mean[n], dec_logvar, inv_var)
                       - beta * kl_row(mu[n], logvar[n]))
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def elbo_bernoulli_loss_grads_tiles(counter, n_tiles, elbo, bad, dlogits, dmu, dlogvar, x,
                                    logits, mu, logvar, g, beta, tile_rows):
    # as elbo_bernoulli_loss_grads_kernel, tile t = rows t * tile_rows ..
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        for n in range(t * tile_rows, min(x.shape[0], (t + 1) * tile_rows)):
            elbo[n], bad[n] = elbo_bernoulli_grads_row(dlogits[n], dmu[n], dlogvar[n], x[n],
                                                       logits[n], mu[n], logvar[n], g, beta)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def elbo_gaussian_loss_grads_tiles(counter, n_tiles, elbo, dmean, ddec_logvar_partial, dmu,
                                   dlogvar, x, mean, mu, logvar, dec_logvar, inv_var, g, beta):
    # as elbo_gaussian_loss_grads_kernel, tile b = block b of its partial rows
    n_rows, n_blocks = x.shape[0], ddec_logvar_partial.shape[0]
    last = False
    while True:
        b = fetch_add(counter, 0, 1)
        if b >= n_tiles:
            return last
        elbo_gaussian_grads_rows(elbo, dmean, ddec_logvar_partial[b], dmu, dlogvar, x, mean, mu,
                                 logvar, dec_logvar, inv_var, g, beta,
                                 b * n_rows // n_blocks, (b + 1) * n_rows // n_blocks)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


def elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None,
                        beta=1.0):
    """``loss = -mean_n elbo_n`` (a Python float) and its gradients, as ``elbo_backward`` returns
    them for the upstream ``delbo = -1/N``, all in one pass over the rows; new arrays.

    -> (loss, (ddec_out, dmu, dlogvar)) for Bernoulli,
       (loss, (ddec_out, dmu, dlogvar, ddec_logvar)) for Gaussian.
    """
    assert likelihood in LIKELIHOODS, likelihood
    n = x.shape[0]
    assert n >= 1, "elbo_loss_and_grads: the loss is a mean over rows; x has no rows"
    g, beta = -1.0 / n, float(beta)
    elbo = np.empty(n)   # float64: the loss is summed in float64
    ddec_out, dmu, dlogvar = np.empty_like(dec_out), np.empty_like(mu), np.empty_like(logvar)
    if likelihood == "bernoulli":
        # (N,): row n has an x outside [0, 1] or NaN. The check's cost, float32, 2 threads,
        # medians of 31 interleaved repeats, with / without it (benchmarks/dev/x_check_cost.py,
        # same bits; 2 shared cores, loaded): (128, 784, 20) 0.113 / 0.105 ms (1.08x), 0.182 /
        # 0.175 ms (1.04x); (4096, 784, 20) 2.42 / 2.31 ms (1.05x), 4.23 / 4.09 ms (1.03x).
        bad = np.empty(n, dtype=np.bool_)
        run_tiles(-(-n // ROW_TILE), elbo_bernoulli_loss_grads_tiles, elbo, bad, ddec_out, dmu,
                  dlogvar, x, dec_out, mu, logvar, g, beta, ROW_TILE)
        refuse_bad_x("elbo_loss_and_grads", x, bad)
        return -float(elbo.sum()) / n, (ddec_out, dmu, dlogvar)
    partial = np.zeros((row_blocks(n), x.shape[1]))
    run_tiles(partial.shape[0], elbo_gaussian_loss_grads_tiles, elbo, ddec_out, partial, dmu,
              dlogvar, x, dec_out, mu, logvar, dec_logvar, gaussian_inv_var(dec_logvar), g, beta)
    ddec_logvar = (-0.5 * partial.sum(axis=0)).astype(dec_logvar.dtype)
    return -float(elbo.sum()) / n, (ddec_out, dmu, dlogvar, ddec_logvar)
