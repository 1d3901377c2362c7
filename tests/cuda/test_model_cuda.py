"""The whole VAE on the CUDA backend: every launcher and kernel of fastvae/cuda and kernels/, run
through the host harness, must train step by step like the CPU backend (same data, same noise)."""
import importlib
from types import SimpleNamespace

import numpy as np
import pytest

import fastvae as fv
from fastvae import _backend
from fastvae.cuda import _module
from fastvae.optim import Adam

from .conftest import HOST_UNAVAILABLE, host_module


def _host_cuda_kernels():
    """fastvae._backend.kernels("cuda") with NumPy standing in for CuPy."""
    return SimpleNamespace(**{stem: importlib.import_module(f"fastvae.cuda.{stem}")
                              for stem in _backend.STEMS}, xp=np, device="cuda-host")


@pytest.mark.parametrize("likelihood, objective, k", [("bernoulli", "elbo", 1),
                                                       ("gaussian", "elbo", 1),
                                                       ("bernoulli", "iwae", 3)])
def test_training_steps_match_the_cpu_backend(likelihood, objective, k, monkeypatch):
    if HOST_UNAVAILABLE:
        pytest.skip(HOST_UNAVAILABLE)
    monkeypatch.setattr(importlib.import_module("fastvae.cuda.random"), "ARRAY_MODULE", np)
    cpu = fv.VAE(13, (9,), 3, likelihood, "tanh", seed=4)
    gpu = fv.VAE(13, (9,), 3, likelihood, "tanh", seed=4)
    gpu.k = _host_cuda_kernels()
    opt_cpu, opt_gpu = Adam(cpu, lr=1e-2), Adam(gpu, lr=1e-2)
    rng = np.random.default_rng(5)
    with _module.use_module_factory(host_module):
        for step in range(5):
            x = rng.random((7, 13)).astype(np.float32)
            eps = fv.random.normal((7, k, 3), seed=9, offset=step * 21)
            losses = []
            for model, opt in ((cpu, opt_cpu), (gpu, opt_gpu)):
                loss, grads = model.loss_and_grads(x, eps, objective=objective)
                opt.update(np.concatenate([grads[n].ravel() for n in model.params]))
                losses.append(loss)
            assert losses[1] == pytest.approx(losses[0], rel=1e-5), f"step {step}"
        ll_cpu = cpu.log_likelihood(x, K=6, seed=1, max_pairs=8)
        ll_gpu = gpu.log_likelihood(x, K=6, seed=1, max_pairs=8)
    np.testing.assert_allclose(gpu.params.flat, cpu.params.flat, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ll_gpu, ll_cpu, rtol=1e-5)
