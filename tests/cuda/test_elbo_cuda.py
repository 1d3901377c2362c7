"""fastvae.cuda.elbo (kernels/elbo.cu) against fastvae/_reference.py: forward, backward (composed
from the CUDA kl / loglik backwards through the forward's cache) and the fused
``elbo_loss_and_grads`` (float loss + every gradient; the Gaussian ddec_logvar by row-block
partials).

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants); the gpu-marked test runs them on CuPy arrays
against the CPU backend.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cuda import elbo
from tests.helpers import check3

# (N, D, L): one element; D, L < a warp; D > a tiny block; D > a real block and L > a warp;
# several rows per Gaussian row block (real and tiny).
SIZES = [(1, 1, 1), (3, 31, 20), (5, 257, 7), (2, 1100, 40), (37, 20, 5)]
LIKELIHOODS = ["bernoulli", "gaussian"]
TOL = dict(rtol32=1e-6, rtol64=1e-13)
BETA = 0.7


def inputs(rng, likelihood, n, d, l):
    """x, dec_out, mu, logvar, dec_logvar (None for Bernoulli), delbo."""
    if likelihood == "bernoulli":
        x, dec_out, dec_logvar = rng.random((n, d)), 3.0 * rng.standard_normal((n, d)), None
    else:
        x, dec_out, dec_logvar = (rng.standard_normal((n, d)), rng.standard_normal((n, d)),
                                  rng.standard_normal(d))
    return (x, dec_out, rng.standard_normal((n, l)), rng.standard_normal((n, l)), dec_logvar,
            rng.standard_normal(n))


def forward_backward(module):
    def run(x, dec_out, mu, logvar, likelihood, dec_logvar, beta, delbo):
        out, cache = module.elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
        return (out,) + tuple(module.elbo_backward(delbo, cache))
    return run


def fused(module):
    def run(x, dec_out, mu, logvar, likelihood, dec_logvar, beta):
        loss, grads = module.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood, dec_logvar,
                                                 beta)
        return (np.asarray(loss, dtype=x.dtype),) + tuple(grads)
    return run


def _check_both(likelihood, x, dec_out, mu, logvar, dec_logvar, delbo, name):
    check3(forward_backward(elbo), forward_backward(ref),
           (x, dec_out, mu, logvar, likelihood, dec_logvar, BETA, delbo), **TOL,
           name=f"{name} forward/backward")
    check3(fused(elbo), fused(ref), (x, dec_out, mu, logvar, likelihood, dec_logvar, BETA), **TOL,
           name=f"{name} fused")


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", SIZES)
def test_elbo_matches_reference(host_cuda, likelihood, shape):
    rng = np.random.default_rng(shape[0] * 1_000_000 + shape[1] * 100 + shape[2])
    x, dec_out, mu, logvar, dec_logvar, delbo = inputs(rng, likelihood, *shape)
    _check_both(likelihood, x, dec_out, mu, logvar, dec_logvar, delbo, likelihood)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_extremes_and_nonfinite(host_cuda, likelihood):
    """logits +-1e4, logvar and dec_logvar +-30; then NaN/Inf in x, dec_out, mu, logvar, dec_logvar
    (the reference's NaN/Inf placement in the ELBO, the loss and every gradient)."""
    rng = np.random.default_rng(11)
    x, dec_out, mu, logvar, dec_logvar, delbo = inputs(rng, likelihood, 9, 45, 6)
    pick = rng.random(x.shape)
    if likelihood == "bernoulli":
        dec_out[pick < 0.3] = 1e4
        dec_out[(pick >= 0.3) & (pick < 0.6)] = -1e4
    else:
        dec_logvar[::3], dec_logvar[1::3] = 30.0, -30.0
    logvar[:, 0], logvar[:, 1] = 30.0, -30.0
    _check_both(likelihood, x, dec_out, mu, logvar, dec_logvar, delbo, f"{likelihood} extreme")
    if likelihood == "gaussian":   # a Bernoulli NaN x is refused (test_bernoulli_x_is_checked)
        x[1, 3] = np.nan
    dec_out[4, 44] = np.nan
    mu[6, 2] = np.inf
    logvar[7, 5] = np.nan
    if likelihood == "gaussian":
        dec_logvar[10] = np.nan
    _check_both(likelihood, x, dec_out, mu, logvar, dec_logvar, delbo, f"{likelihood} nonfinite")
    loss, _ = elbo.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood, dec_logvar, BETA)
    assert isinstance(loss, float) and np.isnan(loss)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_cache_loss_type_and_determinism(host_cuda, likelihood):
    """The forward's cache is the CPU's; the fused loss is a Python float; fused = forward +
    backward(-1/N); two fused runs are bit-identical (no atomics)."""
    rng = np.random.default_rng(12)
    x, dec_out, mu, logvar, dec_logvar, _ = (
        a if a is None else a.astype(np.float32) for a in inputs(rng, likelihood, 21, 40, 5))
    out, cache = elbo.elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, BETA)
    assert len(cache) == 8 and cache[4] == likelihood and cache[7] == BETA
    assert (cache[6] is None) == (likelihood == "bernoulli")
    loss, grads = elbo.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood, dec_logvar, BETA)
    assert type(loss) is float and len(grads) == (3 if likelihood == "bernoulli" else 4)
    np.testing.assert_allclose(loss, -float(out.astype(np.float64).mean()), rtol=1e-6)
    composed = elbo.elbo_backward(np.full(21, -1 / 21, np.float32), cache)
    for g, c in zip(grads, composed):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-7 * max(1, np.abs(c).max()))
    loss2, grads2 = elbo.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood, dec_logvar, BETA)
    assert loss2 == loss
    for g, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(g, g2)


@pytest.mark.parametrize("op", ["elbo_forward", "elbo_loss_and_grads", "log_weight_forward"])
def test_bernoulli_x_is_checked(host_cuda, op):
    """kernels/loglik.cuh's data check through the launchers: the first x outside [0, 1] or NaN
    (row-major) is named; 0, 1 and -0.0 pass with the same numbers; Gaussian x is not checked."""
    from fastvae.cuda import iwae
    rng = np.random.default_rng(14)
    n, d, l, k = 37, 45, 5, 3
    x, dec_out, mu, logvar, _, _ = inputs(rng, "bernoulli", n, d, l)
    x[0, 0], x[1, 1], x[2, 2], x[3, :] = 0.0, 1.0, -0.0, 1.0

    def run(x):
        if op == "log_weight_forward":
            dec = np.repeat(dec_out[:, None], k, axis=1)
            return iwae.log_weight_forward(x, dec, mu, logvar, rng.standard_normal((n, k, l)))[0]
        out = getattr(elbo, op)(x, dec_out, mu, logvar)
        return out[0]
    run(x)
    for bad, value in (((36, 44), -1e-3), ((17, 40), 1 + 1e-3), ((5, 0), np.nan)):
        x_bad = x.copy()
        for later in ((30, 2), (bad[0], d - 1)):   # later bad values: the first one is named
            if later > bad:
                x_bad[later] = 7.0
        x_bad[bad] = value
        with pytest.raises(ValueError, match=rf"{op}: x has .* at row {bad[0]}, column {bad[1]}, "
                                             r".*dec_out the decoder's logits"):
            run(x_bad)
    if op != "log_weight_forward":
        getattr(elbo, op)(3.0 * x, dec_out, mu, logvar, "gaussian", np.zeros(d))   # unchecked


def test_checks():
    """The launcher asserts its preconditions (fastvae.ops gives the user-facing errors),
    before any kernel is looked up: no harness needed."""
    a = np.ones((4, 3), np.float32)
    with pytest.raises(AssertionError, match="likelihood must be one of"):
        elbo.elbo_forward(a, a, a, a, "poisson")
    with pytest.raises(AssertionError, match="needs dec_logvar"):
        elbo.elbo_loss_and_grads(a, a, a, a, "gaussian")
    with pytest.raises(AssertionError, match="mu is float64"):
        elbo.elbo_forward(a, a, np.ones((4, 3)), a)
    with pytest.raises(AssertionError, match="no rows"):
        z = np.ones((0, 3), np.float32)
        elbo.elbo_loss_and_grads(z, z, z, z)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (128, 784, 20), (4099, 7, 3)])
def test_gpu_matches_cpu_backend(cp, dtype, likelihood, shape):
    from fastvae.cpu import elbo as cpu
    x, dec_out, mu, logvar, dec_logvar, delbo = (
        a if a is None else a.astype(dtype)
        for a in inputs(np.random.default_rng(13), likelihood, *shape))
    dev = lambda a: a if a is None else cp.asarray(a)   # noqa: E731
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    args = (x, dec_out, mu, logvar, likelihood, dec_logvar, BETA)
    dev_args = tuple(dev(a) if isinstance(a, np.ndarray) else a for a in args)
    out, cache = elbo.elbo_forward(*dev_args)
    got = (out, *elbo.elbo_backward(cp.asarray(delbo), cache))
    want_out, cpu_cache = cpu.elbo_forward(*args)
    want = (want_out, *cpu.elbo_backward(delbo, cpu_cache))
    loss, grads = elbo.elbo_loss_and_grads(*dev_args)
    want_loss, want_grads = cpu.elbo_loss_and_grads(*args)
    assert type(loss) is float
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    for o, w in zip((*got, *grads), (*want, *want_grads)):
        assert isinstance(o, cp.ndarray) and o.dtype == dtype
        np.testing.assert_allclose(cp.asnumpy(o), w, rtol=rtol,
                                   atol=rtol * max(1.0, float(np.abs(w).max())))
