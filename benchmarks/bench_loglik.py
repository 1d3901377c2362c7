"""Row log-likelihoods, forward + backward: fastvae.cpu.loglik vs plain NumPy.

bytes per call (float32, 4 bytes/element), forward + backward:
  Bernoulli: forward reads x, logits (2 N D), writes ll (N); backward reads dll (N), x, logits
  (2 N D), writes dlogits (N D): 4 (5 N D + 2 N).
  Gaussian: forward reads x, mean (2 N D), logvar (D), writes ll (N); backward reads dll (N), x,
  mean (2 N D), logvar (D), writes dmean (N D), dlogvar (D): 4 (5 N D + 2 N + 3 D).
"""
import numpy as np
import pytest

import common
from fastvae.cpu import loglik

D = 784
LOG_2PI = np.float32(np.log(2 * np.pi))


def numpy_bernoulli(x, logits, dll):
    ll = np.sum(x * logits - np.logaddexp(np.float32(0), logits), axis=1)
    return ll, dll[:, None] * (x - 1 / (1 + np.exp(-logits)))


def fastvae_bernoulli(x, logits, dll, loglik=loglik):   # or fastvae.cuda.loglik
    ll, cache = loglik.bernoulli_loglik_forward(x, logits)
    return ll, loglik.bernoulli_loglik_backward(dll, cache)


def numpy_gaussian(x, mean, logvar, dll):
    inv_var = np.exp(-logvar)
    r = x - mean
    ll = -0.5 * np.sum(LOG_2PI + logvar + r * r * inv_var, axis=1)
    dmean = dll[:, None] * r * inv_var
    return ll, dmean, -0.5 * np.sum(dll[:, None] * (1 - r * r * inv_var), axis=0)


def fastvae_gaussian(x, mean, logvar, dll, loglik=loglik):
    ll, cache = loglik.gaussian_loglik_forward(x, mean, logvar)
    return (ll,) + loglik.gaussian_loglik_backward(dll, cache)


def _check(fast, slow):
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("n", [128, 4096])
def test_bernoulli_forward_backward(benchmark, n):
    rng = np.random.default_rng(0)
    x = rng.random((n, D)).astype(np.float32)
    logits = (3 * rng.standard_normal((n, D))).astype(np.float32)
    dll = rng.standard_normal(n).astype(np.float32)
    _check(fastvae_bernoulli(x, logits, dll), numpy_bernoulli(x, logits, dll))
    common.run_pair(benchmark, lambda: fastvae_bernoulli(x, logits, dll),
                    lambda: numpy_bernoulli(x, logits, dll), op="bernoulli fwd+bwd",
                    cuda_fn=common.maybe_cuda(
                        "loglik", lambda k, *d: lambda: fastvae_bernoulli(*d, loglik=k), x, logits,
                        dll),
                    size=(n, D), dtype=np.float32, nbytes=4 * (5 * n * D + 2 * n))


@pytest.mark.parametrize("n", [128, 4096])
def test_gaussian_forward_backward(benchmark, n):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, D)).astype(np.float32)
    mean = (x + 0.5 * rng.standard_normal((n, D))).astype(np.float32)
    logvar = (0.3 * rng.standard_normal(D)).astype(np.float32)
    dll = rng.standard_normal(n).astype(np.float32)
    _check(fastvae_gaussian(x, mean, logvar, dll), numpy_gaussian(x, mean, logvar, dll))
    common.run_pair(benchmark, lambda: fastvae_gaussian(x, mean, logvar, dll),
                    lambda: numpy_gaussian(x, mean, logvar, dll), op="gaussian fwd+bwd",
                    cuda_fn=common.maybe_cuda(
                        "loglik", lambda k, *d: lambda: fastvae_gaussian(*d, loglik=k), x, mean,
                        logvar, dll),
                    size=(n, D), dtype=np.float32, nbytes=4 * (5 * n * D + 2 * n + 3 * D))
