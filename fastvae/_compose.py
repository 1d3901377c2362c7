"""Compositions that are the same on every device, written once over the backend that runs them.

fastvae/cpu/<stem>.py and fastvae/cuda/<stem>.py call these with their own kernels or launchers
(the kernels own the math, the launchers the shapes); what is composed here (the IWAE estimate
from log-sum-exp, the reparam cache and its checks) is then one piece of code for both. No Numba
and no CuPy here: fastvae/cuda/ imports this file too.
"""
import math
from collections import namedtuple

import numpy as np

from fastvae._reference import INDEX_LIMIT


# ---------------------------------------------------------------------------------------------
# iwae estimate over a backend's logsumexp module
# ---------------------------------------------------------------------------------------------
def iwae_forward(logsumexp, logw):
    """``est_n = logsumexp_k(logw_nk) - log K``: logw (N, K) -> (est (N,), cache).

    ``cache = (logw, lse, lse64)``, ``logsumexp.logsumexp_forward``'s: the backward needs the
    float64 lse64 itself (rebuilding lse as est + log K, or using the dtype's lse, would cost an
    ulp of |lse| in every weight: 3e-5 relative at |lse| ~ 500 in float32)."""
    lse, cache = logsumexp.logsumexp_forward(logw)
    est = (lse.astype(np.float64) - math.log(logw.shape[1])).astype(logw.dtype)   # N values
    return est, cache


def iwae_backward(logsumexp, dest, cache):
    """``dlogw_nk = dest_n softmax_k(logw_n)`` (N, K), the normalized importance weights times
    dest, ``exp(logw - lse64)`` with the difference rounded once to the dtype (so the dominant
    weights are exact to the dtype's rounding); 0 on an all -inf row. A new array (overwrites
    nothing)."""
    return logsumexp.logsumexp_backward(dest, cache)


# ---------------------------------------------------------------------------------------------
# reparam over a backend's launchers for given and for generated noise
# ---------------------------------------------------------------------------------------------
ReparamCache = namedtuple("ReparamCache", "logvar eps seed offset")
ReparamCache.__doc__ = """What reparam_backward needs: the forward's logvar (N, L) (a reference, not
a copy), and either eps (N, L) (given noise; seed is None) or eps None with the stream position
(seed, offset) of generated noise."""


def reparam_forward(given, generated, mu, logvar, eps, seed, offset):
    """z = mu + exp(logvar / 2) * eps, all (N, L) -> (z, cache); z a new array.

    eps given: ``z = given(mu, logvar, eps)``, and eps is kept in the cache. eps None:
    ``z = generated(mu, logvar, seed, offset)``, whose noise is element (n, l) = normal number
    ``offset + n L + l`` of the stream of ``seed`` (== the backend's random.normal((N, L), seed,
    offset, mu.dtype)), generated in the kernel; the cache keeps (seed, offset), not eps.
    """
    assert mu.shape == logvar.shape and mu.dtype == logvar.dtype
    if eps is not None:
        assert eps.shape == mu.shape and eps.dtype == mu.dtype
        return given(mu, logvar, eps), ReparamCache(logvar, eps, None, 0)
    assert seed is not None, "reparam_forward needs eps or seed"
    assert 0 <= offset and offset + mu.size < INDEX_LIMIT
    return generated(mu, logvar, seed, offset), ReparamCache(logvar, None, int(seed), int(offset))


def reparam_backward(given, generated, dz, cache):
    """-> (dmu, dlogvar), new (N, L) arrays (nothing is overwritten or accumulated into):
    dmu = dz (a copy), dlogvar = dz * eps * exp(logvar / 2) / 2, from ``given(dz, logvar, eps)``
    with the cached noise or ``generated(dz, logvar, seed, offset)``, which regenerates it."""
    logvar, eps, seed, offset = cache
    assert dz.shape == logvar.shape and dz.dtype == logvar.dtype
    if eps is not None:
        return given(dz, logvar, eps)
    return generated(dz, logvar, seed, offset)


X_HINT = ("x must be the data in [0, 1] and dec_out the decoder's logits; did you swap them? "
          "(torch's F.binary_cross_entropy takes (recon, x))")


def bad_x_message(op, row, col, value):
    """The ValueError text of the Bernoulli data check (fastvae/cpu/elbo.py, fastvae/cuda/elbo.py)
    for x[row, col] = value, outside [0, 1] or NaN."""
    where = "not a number" if value != value else "outside [0, 1]"
    return (f"{op}: x has {value!s} at row {row}, column {col}, {where}, which the Bernoulli "
            f"likelihood refuses; {X_HINT}")
