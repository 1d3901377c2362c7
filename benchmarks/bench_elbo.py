"""ELBO loss and all its gradients (upstream -1/N): the fused one-pass
fastvae.cpu.elbo.elbo_loss_and_grads, elbo_forward + elbo_backward ("separate"), and plain NumPy.

bytes per call (float32, 4 bytes/element): what one pass must move, the same for all three
variants so their GB/s compare directly: reads x, dec_out (2 N D), mu, logvar (2 N L), and for
Gaussian dec_logvar (D); writes ddec_out (N D), dmu, dlogvar (2 N L), and for Gaussian
ddec_logvar (D): 4 (3 N D + 4 N L) + Gaussian 4 (2 D).
(The separate path also writes and re-reads elbo (N) and reads x, dec_out, mu, logvar twice.)
"""
import numpy as np
import pytest

import common
from fastvae.cpu import elbo

D, L, BETA = 784, 20, 1.0
LOG_2PI = np.float32(np.log(2 * np.pi))


def numpy_elbo(x, dec_out, mu, logvar, likelihood, dec_logvar, beta):
    """loss = -mean(elbo) and its gradients, written straightforwardly."""
    n = x.shape[0]
    g = np.float32(-1.0 / n)
    if likelihood == "bernoulli":
        ll = np.sum(x * dec_out - np.logaddexp(np.float32(0), dec_out), axis=1)
        grads = (g * (x - 1 / (1 + np.exp(-dec_out))),)
    else:
        inv_var = np.exp(-dec_logvar)
        r = x - dec_out
        ll = -0.5 * np.sum(LOG_2PI + dec_logvar + r * r * inv_var, axis=1)
        grads = (g * r * inv_var, -0.5 * g * np.sum(1 - r * r * inv_var, axis=0))
    em1 = np.expm1(logvar)
    kl = 0.5 * np.sum(mu * mu + em1 - logvar, axis=1)
    dmu, dlogvar = -beta * g * mu, -beta * g * em1 / 2
    return -np.mean(ll - beta * kl), (grads[0], dmu, dlogvar) + grads[1:]


def separate_elbo(x, dec_out, mu, logvar, likelihood, dec_logvar, beta, elbo=elbo):
    out, cache = elbo.elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    n = x.shape[0]   # np.mean / np.full_like dispatch to CuPy for the CUDA column
    return -float(np.mean(out, dtype=np.float64)), elbo.elbo_backward(
        np.full_like(out, -1.0 / n), cache)


def inputs(n, likelihood):
    rng = np.random.default_rng(0)
    if likelihood == "bernoulli":
        x, dec_out, dec_logvar = rng.random((n, D)), 3 * rng.standard_normal((n, D)), None
    else:
        x = rng.standard_normal((n, D))
        dec_out, dec_logvar = x + 0.5 * rng.standard_normal((n, D)), 0.3 * rng.standard_normal(D)
    arrays = (x, dec_out, rng.standard_normal((n, L)), rng.standard_normal((n, L)))
    arrays = tuple(a.astype(np.float32) for a in arrays)
    dec_logvar = None if dec_logvar is None else dec_logvar.astype(np.float32)
    return arrays + (likelihood, dec_logvar, BETA)


def _check(fast, slow):
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-5)
    for a, b in zip(fast[1], slow[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def _nbytes(n, likelihood):
    return 4 * (3 * n * D + 4 * n * L) + (4 * 2 * D if likelihood == "gaussian" else 0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n", [128, 4096])
def test_elbo_fused(benchmark, n, likelihood):
    args = inputs(n, likelihood)
    _check(elbo.elbo_loss_and_grads(*args), numpy_elbo(*args))
    common.run_pair(benchmark, lambda: elbo.elbo_loss_and_grads(*args), lambda: numpy_elbo(*args),
                    op=f"elbo fused {likelihood[:5]}", size=(n, D, L), dtype=np.float32,
                    cuda_fn=common.cuda_call("elbo", "elbo_loss_and_grads", *args),
                    nbytes=_nbytes(n, likelihood))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n", [128, 4096])
def test_elbo_separate(benchmark, n, likelihood):
    args = inputs(n, likelihood)
    _check(separate_elbo(*args), numpy_elbo(*args))
    common.run_pair(benchmark, lambda: separate_elbo(*args), lambda: numpy_elbo(*args),
                    op=f"elbo fwd+bwd {likelihood[:5]}", size=(n, D, L), dtype=np.float32,
                    cuda_fn=common.maybe_cuda(
                        "elbo", lambda k, *d: lambda: separate_elbo(*d, elbo=k), *args),
                    nbytes=_nbytes(n, likelihood))
