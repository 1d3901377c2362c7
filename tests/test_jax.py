"""fastvae.jax: the fused ELBO loss and the reparameterization as custom_vjp functions, against
jax.grad of the same formulas, eagerly and under jax.jit.

float64 runs inside ``jax.enable_x64(True)`` (a context manager: other tests keep JAX's float32
default). float32 checks use DESIGN.md's three-way tolerance: fastvae in float32 against the JAX
formula in float64, allowed twice the error of the JAX formula in float32.
"""
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is an optional extra: pip install 'fastvae[jax]'")
import jax.numpy as jnp  # noqa: E402

import fastvae.jax as fvj  # noqa: E402
from fastvae import random as frandom  # noqa: E402

from .helpers import assert_close3  # noqa: E402

RNG = np.random.default_rng(20261209)
LOG_2PI = math.log(2 * math.pi)


def jax_elbo_loss(x, dec_out, mu, logvar, dec_logvar=None, beta=1.0):
    """-mean_n ELBO_n in plain jax.numpy (differentiated by jax.grad); Gaussian iff dec_logvar."""
    if dec_logvar is None:
        ll = jnp.sum(x * dec_out - jnp.logaddexp(0.0, dec_out), axis=1)
    else:
        ll = -0.5 * jnp.sum(LOG_2PI + dec_logvar + (x - dec_out) ** 2 * jnp.exp(-dec_logvar),
                            axis=1)
    kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1 - logvar, axis=1)
    return -jnp.mean(ll - beta * kl)


def fastvae_elbo_loss(x, dec_out, mu, logvar, dec_logvar=None, beta=1.0):
    likelihood = "bernoulli" if dec_logvar is None else "gaussian"
    return fvj.elbo_loss(x, dec_out, mu, logvar, likelihood=likelihood, dec_logvar=dec_logvar,
                         beta=beta)


def _inputs(n, d, l, likelihood):
    x = RNG.uniform(0.02, 0.98, (n, d)) if likelihood == "bernoulli" else RNG.normal(0, 2, (n, d))
    arrays = [x, RNG.normal(0, 2, (n, d)), RNG.normal(0, 1, (n, l)), RNG.normal(0, 1, (n, l))]
    return arrays + ([RNG.normal(0, 0.5, d)] if likelihood == "gaussian" else [])


def _value_and_grads(loss_fn, arrays, dtype, beta, jit=True):
    """(loss, gradients of beta, x, dec_out, mu, logvar[, dec_logvar]), each as float64 NumPy.

    Jitted by default: eager JAX compiles every primitive for every new shape (3 s a shape for the
    reference formula here), one jit compiles the whole function once (0.3 s)."""
    def scaled(beta, *arrays):            # an upstream gradient other than one
        return 1.7 * loss_fn(*arrays, beta=beta)
    argnums = tuple(range(len(arrays) + 1))
    f = jax.value_and_grad(scaled, argnums=argnums)
    f = jax.jit(f) if jit else f
    with jax.enable_x64(dtype == np.float64):
        value, grads = f(jnp.asarray(beta, dtype), *(jnp.asarray(a, dtype) for a in arrays))
        assert value.dtype == dtype and all(g.dtype == dtype for g in grads)
        return [np.asarray(value, np.float64)] + [np.asarray(g, np.float64) for g in grads]


@pytest.mark.parametrize("n,d,l", [(37, 131, 7), (1, 1, 1), (5, 4099, 3)])
@pytest.mark.parametrize("likelihood,beta", [("bernoulli", 1.0), ("bernoulli", 0.37),
                                             ("gaussian", 2.5)])
def test_elbo_loss_matches_jax_grad(likelihood, beta, n, d, l):
    arrays = _inputs(n, d, l, likelihood)
    ref64 = _value_and_grads(jax_elbo_loss, arrays, np.float64, beta)
    ref32 = _value_and_grads(jax_elbo_loss, arrays, np.float32, beta)
    out64 = _value_and_grads(fastvae_elbo_loss, arrays, np.float64, beta)
    out32 = _value_and_grads(fastvae_elbo_loss, arrays, np.float32, beta)
    names = ["loss", "dbeta", "dx", "ddec_out", "dmu", "dlogvar", "ddec_logvar"]
    for name, o32, r32, o64, r64 in zip(names, out32, ref32, out64, ref64):
        scale = max(1.0, float(np.abs(r64).max()))
        assert_close3(o32, r32, r64, atol=1e-6 * scale, name=f"{name} float32")
        assert_close3(o64, r64, r64, atol=1e-12 * scale, name=f"{name} float64")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_loss_eager_equals_jit(likelihood):
    arrays = _inputs(37, 131, 7, likelihood)
    for dtype in (np.float32, np.float64):
        eager = _value_and_grads(fastvae_elbo_loss, arrays, dtype, 0.37, jit=False)
        jitted = _value_and_grads(fastvae_elbo_loss, arrays, dtype, 0.37, jit=True)
        for e, j in zip(eager, jitted):
            np.testing.assert_allclose(e, j, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_elbo_loss_with_a_traced_beta_compiles_once():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    traces = []

    @jax.jit
    def loss(beta):
        traces.append(1)
        return fvj.elbo_loss(x, dec_out, mu, logvar, beta=beta)

    for beta in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(loss(beta), jax_elbo_loss(x, dec_out, mu, logvar, beta=beta),
                                   rtol=1e-6)
    assert len(traces) == 1


def test_elbo_loss_errors_name_the_argument():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    with pytest.raises(ValueError, match="shape mismatch on N: mu"):
        fvj.elbo_loss(x, dec_out, mu[:4], logvar)
    with pytest.raises(ValueError, match="needs dec_logvar"):
        fvj.elbo_loss(x, dec_out, mu, logvar, likelihood="gaussian")
    with pytest.raises(ValueError, match="beta must be in"):
        fvj.elbo_loss(x, dec_out, mu, logvar, beta=-1.0)
    with pytest.raises(TypeError, match="mu must be a floating array"):
        fvj.elbo_loss(x, dec_out, jnp.ones((9, 3), jnp.int32), logvar)


# ---------------------------------------------------------------------------------------------
# reparameterize
# ---------------------------------------------------------------------------------------------
def _jax_sample(seed, offset, dtype):
    def sample(mu, logvar):
        eps = jnp.asarray(frandom.normal(mu.shape, seed, offset, dtype=dtype))
        return mu + jnp.exp(logvar / 2) * eps
    return sample


def _sample_and_grads(sample, mu, logvar, dz, dtype):
    with jax.enable_x64(dtype == np.float64):
        mu, logvar, dz = (jnp.asarray(a, dtype) for a in (mu, logvar, dz))
        z, vjp = jax.vjp(sample, mu, logvar)
        return [np.asarray(a, np.float64) for a in (z, *vjp(dz))]


@pytest.mark.parametrize("n,l", [(37, 7), (1, 1), (301, 19)])
def test_reparameterize_matches_jax_grad(n, l):
    seed, offset = 2026, 11
    mu, logvar, dz = (RNG.normal(0, 1, (n, l)) for _ in range(3))
    ref = {dt: _sample_and_grads(_jax_sample(seed, offset, dt), mu, logvar, dz, dt)
           for dt in (np.float32, np.float64)}
    for dt, atol in ((np.float32, 1e-6), (np.float64, 1e-13)):
        out = _sample_and_grads(lambda m, lv: fvj.reparameterize(m, lv, seed, offset),
                                mu, logvar, dz, dt)
        r32 = ref[np.float32] if dt == np.float32 else ref[np.float64]
        for name, o, a, b in zip(["z", "dmu", "dlogvar"], out, r32, ref[np.float64]):
            assert_close3(o, a, b, atol=atol, name=f"{name} {np.dtype(dt).name}")


def test_reparameterize_under_jit_with_a_traced_offset():
    n, l, seed = 37, 7, 5
    mu, logvar = (jnp.asarray(RNG.normal(0, 1, (n, l)), jnp.float32) for _ in range(2))

    @jax.jit
    def grads(mu, logvar, step):
        return jax.grad(lambda m, lv: jnp.sum(fvj.reparameterize(m, lv, seed, step * n * l) ** 2),
                        argnums=(0, 1))(mu, logvar)

    for step in (0, 3):
        want = jax.grad(lambda m, lv: jnp.sum(_jax_sample(seed, step * n * l, np.float32)(m, lv)
                                              ** 2), argnums=(0, 1))(mu, logvar)
        for g, w in zip(grads(mu, logvar, step), want):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)
    assert not np.allclose(grads(mu, logvar, 0)[1], grads(mu, logvar, 1)[1])   # fresh noise


def test_reparameterize_errors():
    mu = jnp.ones((3, 2), jnp.float32)
    with pytest.raises(ValueError, match="seed must be in"):
        fvj.reparameterize(mu, mu, -1)
    with pytest.raises(TypeError, match="offset must be an int or an integer 0-d array"):
        fvj.reparameterize(mu, mu, 1, offset=jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="shape mismatch on L: logvar"):
        fvj.reparameterize(mu, jnp.ones((3, 4), jnp.float32), 1)


def test_elbo_loss_under_vmap_matches_a_loop():
    batches = [[jnp.asarray(a, jnp.float32) for a in _inputs(6, 11, 2, "bernoulli")]
               for _ in range(3)]
    stacked = [jnp.stack(parts) for parts in zip(*batches)]
    vmapped = jax.vmap(jax.grad(lambda *a: fvj.elbo_loss(*a), argnums=(1, 2)))(*stacked)
    for i, arrays in enumerate(batches):
        looped = jax.grad(lambda *a: fvj.elbo_loss(*a), argnums=(1, 2))(*arrays)
        for v, w in zip(vmapped, looped):
            np.testing.assert_array_equal(v[i], w)
