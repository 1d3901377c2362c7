"""Compile the CPU kernels into Numba's on-disk cache before the tests run (tests/conftest.py runs
this in a subprocess when the session starts).

Why: Numba's freshly compiled code and the code it later loads from its cache can round
differently (the last bit of a float32 sum; numba/numba#10617 reports that the two are optimized
differently). On a cold cache a test process would mix the two kinds: kernels it compiled itself
next to kernels a child process (a CLI run, a Dask worker) compiled and cached first, and the
tests that compare two paths bit for bit (serial against parallel kernels, a Dask cluster
against one process) then fail on a fresh machine only. With every kernel compiled here first,
every test process runs cached code. Two sizes per op, so that the serial and the parallel
variant of each kernel (chosen by size) are both compiled; both dtypes, both likelihoods.

    python -m tests.warm_numba_cache        # a few seconds on a warm cache, ~1-2 min cold
"""
import numpy as np

from fastvae import ops
from fastvae import random as fv_random
from fastvae.model import VAE

ACTIVATIONS = ("identity", "relu", "tanh", "softplus", "sigmoid")
SHAPES = ((3, 5, 2, 2), (300, 129, 20, 3))   # (N, D, L, K): serial, then parallel variants


def _input(a, readonly):
    a.flags.writeable = not readonly
    return a


def _ops(dtype, n, d, l, k, rng, readonly):
    """Every op once; readonly: with read-only inputs (a JAX array or a memmap opened "r" comes
    in read-only, and Numba compiles separate code for it)."""
    r = lambda *shape: _input(rng.standard_normal(shape).astype(dtype), readonly)   # noqa: E731
    x01 = _input(rng.random((n, d)).astype(dtype), readonly)
    g = lambda a: _input(np.array(a), readonly)   # noqa: E731  an upstream gradient like a
    for act in ACTIVATIONS:
        h, cache = ops.dense_forward(r(n, d), r(d, l), r(l), act)
        ops.dense_backward(g(h), cache)
        ops.dense_backward(g(h), cache, need_dx=False)
    mu, logvar = r(n, l), _input(rng.standard_normal((n, l)).astype(dtype) * 0.1, readonly)
    for eps in (r(n, l), None):
        z, cache = ops.reparam_forward(mu, logvar, eps, seed=None if eps is not None else 1)
        ops.reparam_backward(g(z), cache)
    kl, cache = ops.kl_forward(mu, logvar)
    ops.kl_backward(g(kl), cache)
    ll, cache = ops.bernoulli_loglik_forward(x01, r(n, d))
    ops.bernoulli_loglik_backward(g(ll), cache)
    ll, cache = ops.gaussian_loglik_forward(r(n, d), r(n, d), r(d))
    ops.gaussian_loglik_backward(g(ll), cache)
    for likelihood, x, dec_logvar in (("bernoulli", x01, None), ("gaussian", r(n, d), r(d))):
        kw = dict(likelihood=likelihood, dec_logvar=dec_logvar, beta=0.5)
        out, cache = ops.elbo_forward(x, r(n, d), mu, logvar, **kw)
        ops.elbo_backward(g(out), cache)
        ops.elbo_loss_and_grads(x, r(n, d), mu, logvar, **kw)
        logw, cache = ops.log_weight_forward(x, r(n, k, d), mu, logvar, r(n, k, l),
                                             likelihood=likelihood, dec_logvar=dec_logvar)
        ops.log_weight_backward(g(logw), cache)
    a = r(n, k * 7)
    lse, cache = ops.logsumexp_forward(a)
    ops.logsumexp_backward(g(lse), cache)
    state = ops.logsumexp_merge(*map(g, ops.logsumexp_partial(a)),
                                *map(g, ops.logsumexp_partial(a)))
    ops.logsumexp_finalize(*map(g, state))
    est, cache = ops.iwae_forward(a)
    ops.iwae_backward(g(est), cache)
    p, m, v = (rng.random(n * d * 3).astype(dtype) for _ in range(3))   # updated in place
    ops.adam_update(p, r(p.size), m, v, step=2)
    fv_random.normal((n, d), 3, 0, dtype)
    fv_random.uniform((n, d), 3, 0, dtype)


def _models(dtype, rng):
    x = (rng.random((40, 12)) < 0.4).astype(dtype)
    for likelihood in ("bernoulli", "gaussian"):
        for objective, k in (("elbo", 1), ("elbo", 2), ("iwae", 2)):
            model = VAE(12, (8,), 3, likelihood, dtype=dtype, seed=0)
            model.fit(x, epochs=1, batch_size=16, k=k, objective=objective, progress=False,
                      validation_data=x[:8])
        model.elbo(x, k=2)
        model.log_likelihood(x, K=7, progress=False)
        model.log_likelihood(x[:2], K=3000, max_pairs=1000, progress=False)
        model.reconstruct(x)
        model.sample(3)


def _serial_kernels(dtype, rng):
    """Kernels the library no longer launches but tests compare with the pool's tiles bit for
    bit (tests/test_elbo.py): the serial fused ELBO kernels."""
    from fastvae.cpu import elbo, loglik
    n, d, l = 9, 11, 3
    x, out, mu, logvar = (rng.random(s).astype(dtype) for s in ((n, d), (n, d), (n, l), (n, l)))
    grads = [np.empty(n), np.empty_like(out), np.empty_like(mu), np.empty_like(logvar)]
    bad = np.empty(n, dtype=np.bool_)   # the kernel's per-row bad-x flags
    elbo.elbo_bernoulli_loss_grads_kernel(grads[0], bad, *grads[1:], x, out, mu, logvar,
                                          -1.0 / n, 0.5)
    dec_logvar = rng.random(d).astype(dtype)
    grads.insert(2, np.zeros((loglik.row_blocks(n), d)))
    elbo.elbo_gaussian_loss_grads_kernel(*grads, x, out, mu, logvar, dec_logvar,
                                         loglik.gaussian_inv_var(dec_logvar), -1.0 / n, 0.5)


def main():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for n, d, l, k in SHAPES:
            for readonly in (False, True):
                _ops(dtype, n, d, l, k, rng, readonly)
        _models(dtype, rng)
        _serial_kernels(dtype, rng)


if __name__ == "__main__":
    main()
