"""Per-row ELBO = log p(x | z) - beta KL(q(z | x) || p(z)) on the GPU: forward, backward, and the
fused loss-and-gradients pass used by training. Launchers of kernels/elbo.cu.

Same public names, signatures, caches and return conventions as fastvae/cpu/elbo.py: the cache of
``elbo_forward`` is ``(x, dec_out, mu, logvar, likelihood, dec_logvar, inv_var, beta)`` and
``elbo_backward`` composes the kl / loglik backwards of this package (fastvae/cuda/kl.py,
loglik.py) from it, as on the CPU.

``elbo_loss_and_grads`` launches one fused kernel (one block per row for Bernoulli; row blocks for
Gaussian, whose ``ddec_logvar`` is a sum over rows: per-block float64 partials, then
loglik.gaussian_dlogvar_reduce, no atomics), then ``elbo_loss_kernel`` (Gaussian) or
``elbo_loss_checked_kernel`` (Bernoulli: with the first bad x, see refuse_bad_x) sums the float64
per-row ELBOs in one block on the device. Its copy to the host at the very end is the ONLY host
round trip (the CPU API returns the loss as a Python float); every gradient stays on the device.

Numerics as on the CPU: row sums and the loss accumulate in double for every input dtype; results
are rounded once to the input dtype.
"""
import numpy as np

from fastvae._device import to_host
from fastvae._compose import bad_x_message
from fastvae._reference import LIKELIHOODS
from fastvae.cuda import _module
from fastvae.cuda import kl as _kl
from fastvae.cuda import loglik as _loglik
from fastvae.cuda._module import array_module, dtype_suffix, kernel
from fastvae.cuda.loglik import gaussian_dlogvar_reduce, gaussian_inv_var, row_blocks

# One block per row (block-strided): threads over D = 784, then over L = 20.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap of the block-strided row loops.
MAX_BLOCKS = _module.MAX_BLOCKS

_INT_MAX = 2**31 - 1


def _check(op, x, dec_out, mu, logvar, likelihood, dec_logvar):
    assert likelihood in LIKELIHOODS, \
        f"{op}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}"
    assert x.ndim == 2 and mu.ndim == 2 and mu.shape[0] == x.shape[0], \
        f"{op}: x {x.shape} must be (N, D) and mu {mu.shape} (N, L)"
    named = [("x", x, x.shape), ("dec_out", dec_out, x.shape), ("mu", mu, mu.shape),
             ("logvar", logvar, mu.shape)]
    if likelihood == "gaussian":
        assert dec_logvar is not None, f"{op}: the Gaussian likelihood needs dec_logvar (D,)"
        named.append(("dec_logvar", dec_logvar, (x.shape[1],)))
    for name, a, shape in named:
        assert a.shape == shape and a.dtype == x.dtype and a.flags.c_contiguous, (
            f"{op}: {name} is {a.dtype} {a.shape}; expected a C-contiguous {x.dtype} array of "
            f"shape {shape}")
    if max(x.shape + mu.shape) > _INT_MAX:
        raise ValueError(f"{op}: sizes must be < 2^31, got x {x.shape}, mu {mu.shape}")
    return dtype_suffix(x.dtype)


def _row_grid(n_rows):
    return min(max(1, n_rows), MAX_BLOCKS)


# The Bernoulli likelihood's data check, as on the CPU (fastvae/cpu/elbo.py::refuse_bad_x): the
# kernels that read x for it (the ELBO forward and fused pass here, log_weight_forward in iwae.py)
# also record, in that loop, the smallest flat index n D + d of an x outside [0, 1] or NaN in a
# (1,) uint64 device array (kernels/loglik.cuh::report_bad_x; an atomicMin only for a bad x);
# the launcher reads it back and raises ValueError naming x[n, d]. elbo_forward and
# log_weight_forward pay one 8-byte device-to-host copy (a synchronization) for it; the fused
# pass reads it with its loss, in its one transfer.
NO_BAD_X = np.iinfo(np.uint64).max   # first_bad's fill: no bad x seen
def first_bad_buffer(xp):
    """The kernels' (1,) uint64 first_bad, filled with NO_BAD_X."""
    return xp.full(1, np.uint64(NO_BAD_X), dtype=np.uint64)


def refuse_bad_x(op, x, flat):
    """Raise ValueError naming x's flat element ``flat`` (a Python int: the kernel's first_bad;
    NO_BAD_X or a negative number: none)."""
    if flat < 0 or flat == NO_BAD_X:
        return
    row, col = divmod(flat, x.shape[1])
    value = to_host(x[row:row + 1, col])[0]   # the error path's one extra read of x
    raise ValueError(bad_x_message(op, row, col, value))


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
def elbo_forward(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """``elbo_n = loglik(x_n | dec_out_n) - beta kl(mu_n, logvar_n)``, one pass over the rows.

    x, dec_out (N, D) (logits for Bernoulli, means for Gaussian); mu, logvar (N, L);
    dec_logvar (D,) for Gaussian -> (elbo (N,), cache).
    """
    suffix = _check("elbo_forward", x, dec_out, mu, logvar, likelihood, dec_logvar)
    beta = float(beta)
    (n_rows, n_cols), n_latent = x.shape, mu.shape[1]
    elbo = array_module(x).empty(n_rows, dtype=x.dtype)
    grid, block = (_row_grid(n_rows),), (THREADS_PER_BLOCK,)
    sizes = (np.int32(n_rows), np.int32(n_cols), np.int32(n_latent))
    if likelihood == "bernoulli":
        inv_var = None
        if n_rows:
            first_bad = first_bad_buffer(array_module(x))
            kernel("elbo", f"elbo_bernoulli_forward_kernel_{suffix}")(
                grid, block, (elbo, first_bad, x, dec_out, mu, logvar, np.float64(beta), *sizes))
            refuse_bad_x("elbo_forward", x, int(to_host(first_bad)[0]))
    else:
        inv_var = gaussian_inv_var(dec_logvar)
        if n_rows:
            kernel("elbo", f"elbo_gaussian_forward_kernel_{suffix}")(
                grid, block, (elbo, x, dec_out, mu, logvar, dec_logvar, inv_var, np.float64(beta),
                              *sizes))
    return elbo, (x, dec_out, mu, logvar, likelihood, dec_logvar, inv_var, beta)


# ---------------------------------------------------------------------------------------------
# backward (composed from the loglik and kl backward kernels)
# ---------------------------------------------------------------------------------------------
def elbo_backward(delbo, cache):
    """-> (ddec_out, dmu, dlogvar) for Bernoulli, (ddec_out, dmu, dlogvar, ddec_logvar) for
    Gaussian: new arrays (overwrites nothing). ``dmu, dlogvar = kl_backward(-beta delbo)``."""
    x, dec_out, mu, logvar, likelihood, dec_logvar, inv_var, beta = cache
    dmu, dlogvar = _kl.kl_backward((-beta * delbo).astype(delbo.dtype, copy=False), (mu, logvar))
    if likelihood == "bernoulli":
        return _loglik.bernoulli_loglik_backward(delbo, (x, dec_out)), dmu, dlogvar
    ddec_out, ddec_logvar = _loglik.gaussian_loglik_backward(
        delbo, (x, dec_out, dec_logvar, inv_var))
    return ddec_out, dmu, dlogvar, ddec_logvar


# ---------------------------------------------------------------------------------------------
# fused: loss = -mean_n elbo_n and every gradient, one pass
# ---------------------------------------------------------------------------------------------
def elbo_loss_device(elbo):
    """``-mean(elbo)`` of the float64 per-row ELBOs as a 0-d float64 device array (one block, a
    fixed summation order)."""
    loss = array_module(elbo).empty((), dtype=np.float64)
    kernel("elbo", "elbo_loss_kernel")((1,), (THREADS_PER_BLOCK,),
                                       (loss, elbo, np.int32(elbo.shape[0])))
    return loss


def elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None,
                        beta=1.0):
    """``loss = -mean_n elbo_n`` (a Python float) and its gradients, as ``elbo_backward`` returns
    them for the upstream ``delbo = -1/N``, all in one pass over the rows; new arrays.

    -> (loss, (ddec_out, dmu, dlogvar)) for Bernoulli,
       (loss, (ddec_out, dmu, dlogvar, ddec_logvar)) for Gaussian.

    The loss is computed on the device and copied to the host at the very end: the one host
    synchronization of the call (the CPU API returns a Python float). For Bernoulli, the kernel's
    first bad x (refuse_bad_x) comes back in the same copy.
    """
    suffix = _check("elbo_loss_and_grads", x, dec_out, mu, logvar, likelihood, dec_logvar)
    xp = array_module(x)
    (n_rows, n_cols), n_latent = x.shape, mu.shape[1]
    assert n_rows >= 1, "elbo_loss_and_grads: the loss is a mean over rows; x has no rows"
    g, beta = -1.0 / n_rows, float(beta)
    elbo = xp.empty(n_rows, dtype=np.float64)   # float64: the loss is summed in float64
    ddec_out, dmu, dlogvar = xp.empty_like(dec_out), xp.empty_like(mu), xp.empty_like(logvar)
    sizes = (np.int32(n_rows), np.int32(n_cols), np.int32(n_latent))
    if likelihood == "bernoulli":
        first_bad = first_bad_buffer(xp)
        kernel("elbo", f"elbo_bernoulli_loss_grads_kernel_{suffix}")(
            (_row_grid(n_rows),), (THREADS_PER_BLOCK,),
            (elbo, first_bad, ddec_out, dmu, dlogvar, x, dec_out, mu, logvar, np.float64(g),
             np.float64(beta), *sizes))
        loss_and_bad = xp.empty(2, dtype=np.float64)   # [loss, first bad x's index or -1]
        kernel("elbo", "elbo_loss_checked_kernel")(
            (1,), (THREADS_PER_BLOCK,), (loss_and_bad, elbo, first_bad, np.int32(n_rows)))
        loss, bad = to_host(loss_and_bad)
        refuse_bad_x("elbo_loss_and_grads", x, int(bad))
        return float(loss), (ddec_out, dmu, dlogvar)
    n_blocks = row_blocks(n_rows)
    partial = xp.empty((n_blocks, n_cols), dtype=np.float64)   # all written (n_blocks <= N)
    kernel("elbo", f"elbo_gaussian_loss_grads_kernel_{suffix}")(
        (n_blocks,), (THREADS_PER_BLOCK,),
        (elbo, ddec_out, partial, dmu, dlogvar, x, dec_out, mu, logvar, dec_logvar,
         gaussian_inv_var(dec_logvar), np.float64(g), np.float64(beta), *sizes,
         np.int32(n_blocks)))
    ddec_logvar = gaussian_dlogvar_reduce(partial, dec_logvar.dtype)
    return float(elbo_loss_device(elbo)), (ddec_out, dmu, dlogvar, ddec_logvar)
