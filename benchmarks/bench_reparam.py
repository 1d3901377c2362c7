"""Reparameterized sampling z = mu + exp(logvar / 2) eps and its backward, fastvae.cpu.reparam
vs plain NumPy, float32, latent L = 20, batch N = 128, 4096, 100000.

Two ways to get the noise:
  given     eps (N, L) is an input (fastvae and NumPy both read it);
  generated fastvae draws eps inside the fused kernel from (seed, offset) and the backward
            regenerates it; NumPy draws it with Generator.standard_normal (and its backward
            reads the eps it kept).
bytes per call (4 bytes per element, n = N L), counting the arrays fastvae reads and writes:
  forward  given 4 * 4n (mu, logvar, eps -> z); generated 4 * 3n (mu, logvar -> z)
  backward given 4 * 5n (dz, logvar, eps -> dmu, dlogvar); generated 4 * 4n (dz, logvar -> ...)
"""
import numpy as np
import pytest

import common
from fastvae.cpu import reparam

L = 20
SEED = 77
SHAPES = [(128, L), (4096, L), (100_000, L)]


def make_case(shape):
    rng = np.random.default_rng(shape[0])
    mu, logvar, eps, dz = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    return mu, logvar, eps, dz


def numpy_forward(mu, logvar, eps):
    return mu + np.exp(logvar / 2) * eps


def numpy_backward(dz, logvar, eps):
    return dz.copy(), dz * eps * np.exp(logvar / 2) / 2


def _close(got, want, name):
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * (np.abs(want).max() + 1),
                               err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("noise", ["given", "generated"])
def test_reparam_forward(benchmark, shape, noise):
    mu, logvar, eps, _ = make_case(shape)
    n = mu.size
    if noise == "given":
        _close(reparam.reparam_forward(mu, logvar, eps)[0], numpy_forward(mu, logvar, eps), "z")
        fast = lambda: reparam.reparam_forward(mu, logvar, eps)              # noqa: E731
        slow = lambda: numpy_forward(mu, logvar, eps)                        # noqa: E731
        nbytes = 4.0 * 4 * n
        cuda_fn = common.cuda_call("reparam", "reparam_forward", mu, logvar, eps)
    else:
        from fastvae.random import normal
        z = reparam.reparam_forward(mu, logvar, seed=SEED)[0]
        _close(z, numpy_forward(mu, logvar, normal(shape, SEED)), "z generated")
        rng = np.random.default_rng(0)
        fast = lambda: reparam.reparam_forward(mu, logvar, seed=SEED)        # noqa: E731
        slow = lambda: numpy_forward(mu, logvar,                             # noqa: E731
                                     rng.standard_normal(shape, dtype=np.float32))
        nbytes = 4.0 * 3 * n
        cuda_fn = common.cuda_call("reparam", "reparam_forward", mu, logvar, seed=SEED)
    common.run_pair(benchmark, fast, slow, op=f"reparam_forward {noise}", size=shape,
                    dtype=np.float32, nbytes=nbytes, cuda_fn=cuda_fn)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("noise", ["given", "generated"])
def test_reparam_backward(benchmark, shape, noise):
    mu, logvar, eps, dz = make_case(shape)
    if noise == "given":
        _, cache = reparam.reparam_forward(mu, logvar, eps)
        nbytes = 4.0 * 5 * mu.size
        cuda_fn = common.cuda_backward("reparam", "reparam", dz, mu, logvar, eps)
    else:
        _, cache = reparam.reparam_forward(mu, logvar, seed=SEED)
        from fastvae.random import normal
        eps = normal(shape, SEED)                 # NumPy's backward reads the noise it kept
        nbytes = 4.0 * 4 * mu.size
        cuda_fn = common.cuda_backward("reparam", "reparam", dz, mu, logvar, seed=SEED)
    for got, want, name in zip(reparam.reparam_backward(dz, cache),
                               numpy_backward(dz, logvar, eps), ("dmu", "dlogvar")):
        _close(got, want, name)
    common.run_pair(benchmark, lambda: reparam.reparam_backward(dz, cache),
                    lambda: numpy_backward(dz, logvar, eps), op=f"reparam_backward {noise}",
                    size=shape, dtype=np.float32, nbytes=nbytes, cuda_fn=cuda_fn)
