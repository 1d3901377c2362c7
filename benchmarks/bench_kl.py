"""KL(N(mu, exp(logvar)) || N(0, I)) per row, forward + backward: fastvae.cpu.kl vs plain NumPy.

bytes per call (float32, 4 bytes/element), forward + backward:
  forward reads mu, logvar (2 N L), writes kl (N); backward reads dkl (N), mu, logvar (2 N L),
  writes dmu, dlogvar (2 N L): 4 (6 N L + 2 N).
"""
import numpy as np
import pytest

import common
from fastvae.cpu import kl

L = 20


def numpy_kl(mu, logvar, dkl):
    out = 0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar, axis=1)
    return out, dkl[:, None] * mu, dkl[:, None] * np.expm1(logvar) / 2


def fastvae_kl(mu, logvar, dkl, kl=kl):   # kl: fastvae.cuda.kl for the CUDA column
    out, cache = kl.kl_forward(mu, logvar)
    return (out,) + kl.kl_backward(dkl, cache)


@pytest.mark.parametrize("n", [128, 4096])
def test_kl_forward_backward(benchmark, n):
    rng = np.random.default_rng(0)
    mu, logvar = (rng.standard_normal((n, L)).astype(np.float32) for _ in range(2))
    dkl = rng.standard_normal(n).astype(np.float32)
    for a, b in zip(fastvae_kl(mu, logvar, dkl), numpy_kl(mu, logvar, dkl)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    common.run_pair(benchmark, lambda: fastvae_kl(mu, logvar, dkl),
                    lambda: numpy_kl(mu, logvar, dkl), op="kl fwd+bwd", size=(n, L),
                    cuda_fn=common.maybe_cuda("kl", lambda k, *d: lambda: fastvae_kl(*d, kl=k),
                                              mu, logvar, dkl),
                    dtype=np.float32, nbytes=4 * (6 * n * L + 2 * n))
