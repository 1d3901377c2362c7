"""fastvae.cuda.loglik (kernels/loglik.cu) against fastvae/_reference.py: Bernoulli from logits and
diagonal Gaussian, forward (one block per row) and backward (Gaussian dlogvar by row-block partials).

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants); the gpu-marked tests run them on CuPy arrays
against the CPU backend.
"""
import numpy as np
import pytest

from fastvae.cuda import loglik
from tests.helpers import check3
from tests.test_loglik import ref_bernoulli, ref_gaussian   # the CPU tests' references

# (N, D): one element, D < one warp, D > a tiny block (several per thread), D > a real block.
# (37, 20): several rows per Gaussian row block in both launch configurations.
SIZES = [(1, 1), (3, 31), (5, 257), (2, 1100), (37, 20)]
TOL = dict(rtol32=1e-6, rtol64=1e-13)


def fast_bernoulli(x, logits, dll):
    out, cache = loglik.bernoulli_loglik_forward(x, logits)
    return out, loglik.bernoulli_loglik_backward(dll, cache)


def fast_gaussian(x, mean, logvar, dll):
    out, cache = loglik.gaussian_loglik_forward(x, mean, logvar)
    assert cache[:3] == (x, mean, logvar) and cache[3].dtype == np.float64
    return (out,) + loglik.gaussian_loglik_backward(dll, cache)


def bernoulli_inputs(rng, n, d):
    return rng.random((n, d)), 3.0 * rng.standard_normal((n, d)), rng.standard_normal(n)


def gaussian_inputs(rng, n, d):
    return (rng.standard_normal((n, d)), rng.standard_normal((n, d)), rng.standard_normal(d),
            rng.standard_normal(n))


@pytest.mark.parametrize("shape", SIZES)
def test_bernoulli_matches_reference(host_cuda, shape):
    rng = np.random.default_rng(shape[0] * 10_000 + shape[1])
    check3(fast_bernoulli, ref_bernoulli, bernoulli_inputs(rng, *shape), **TOL, name="bernoulli")


@pytest.mark.parametrize("shape", SIZES)
def test_gaussian_matches_reference(host_cuda, shape):
    rng = np.random.default_rng(shape[0] * 10_000 + shape[1] + 1)
    check3(fast_gaussian, ref_gaussian, gaussian_inputs(rng, *shape), **TOL, name="gaussian")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bernoulli_extremes_and_nonfinite(host_cuda):
    """logits at +-1e4 (softplus without overflow, sigmoid 0/1), a row of -inf logits (ll -inf,
    finite gradient), NaN and +-inf logits (the reference's NaN placement)."""
    rng = np.random.default_rng(3)
    x, logits, dll = bernoulli_inputs(rng, 6, 70)
    pick = rng.random(x.shape)
    logits[pick < 0.3] = 1e4
    logits[(pick >= 0.3) & (pick < 0.6)] = -1e4
    x[:, :10] = np.round(x[:, :10])          # exact 0/1 labels next to the huge logits
    logits[2] = -np.inf                      # x > 0 -> ll = -inf; dlogits = dll * x
    x[2] = 0.01 + 0.99 * rng.random(70)
    logits[3, 4] = np.nan
    logits[4, 5] = np.inf
    x[4, 5] = 1.0                            # 1 * inf - softplus(inf) = inf - inf = NaN
    x[5, 6] = np.nan
    check3(fast_bernoulli, ref_bernoulli, (x, logits, dll), **TOL, name="bernoulli extreme")
    out = loglik.bernoulli_loglik_forward(x, logits)[0]
    assert out[2] == -np.inf and np.isnan(out[[3, 4, 5]]).all() and np.isfinite(out[[0, 1]]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_gaussian_extremes_and_nonfinite(host_cuda):
    """logvar at +-30 (inv_var 1e13 / 1e-13), NaN in x, mean and logvar (the whole dlogvar column
    and every row's ll become NaN where the reference's do)."""
    rng = np.random.default_rng(4)
    x, mean, logvar, dll = gaussian_inputs(rng, 9, 40)
    logvar[::3] = 30.0
    logvar[1::3] = -30.0
    check3(fast_gaussian, ref_gaussian, (x, mean, logvar, dll), **TOL, name="gaussian extreme")
    x[2, 5] = np.nan
    mean[7, 39] = np.inf
    logvar[11] = np.nan
    check3(fast_gaussian, ref_gaussian, (x, mean, logvar, dll), **TOL, name="gaussian nonfinite")


def test_gaussian_dlogvar_is_deterministic_and_checks(host_cuda):
    x, mean, logvar, dll = (a.astype(np.float32) for a in
                            gaussian_inputs(np.random.default_rng(6), 41, 33))
    _, cache = loglik.gaussian_loglik_forward(x, mean, logvar)
    a = loglik.gaussian_loglik_backward(dll, cache)[1]
    b = loglik.gaussian_loglik_backward(dll, cache)[1]
    np.testing.assert_array_equal(a, b)
    empty = np.zeros((0, 33), np.float32)
    ll, cache = loglik.gaussian_loglik_forward(empty, empty.copy(), logvar)
    dmean, dlogvar = loglik.gaussian_loglik_backward(np.zeros(0, np.float32), cache)
    assert ll.shape == (0,) and dmean.shape == (0, 33)
    np.testing.assert_array_equal(dlogvar, np.zeros(33, np.float32))
    with pytest.raises(AssertionError, match="logvar is float32 \\(32,\\)"):
        loglik.gaussian_loglik_forward(x, mean, logvar[:32].copy())
    with pytest.raises(AssertionError, match="logits is float64"):
        loglik.bernoulli_loglik_forward(x, mean.astype(np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (128, 784), (4099, 7)])
def test_gpu_matches_cpu_backend(cp, dtype, shape):
    from fastvae.cpu import loglik as cpu
    rng = np.random.default_rng(7)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    cases = [(loglik.bernoulli_loglik_forward, loglik.bernoulli_loglik_backward,
              cpu.bernoulli_loglik_forward, cpu.bernoulli_loglik_backward,
              bernoulli_inputs(rng, *shape)),
             (loglik.gaussian_loglik_forward, loglik.gaussian_loglik_backward,
              cpu.gaussian_loglik_forward, cpu.gaussian_loglik_backward,
              gaussian_inputs(rng, *shape))]
    for fwd, bwd, cpu_fwd, cpu_bwd, inputs in cases:
        *ins, dll = (a.astype(dtype) for a in inputs)
        out, cache = fwd(*(cp.asarray(a) for a in ins))
        grads = bwd(cp.asarray(dll), cache)
        want, cpu_cache = cpu_fwd(*ins)
        want_grads = cpu_bwd(dll, cpu_cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        want_grads = want_grads if isinstance(want_grads, tuple) else (want_grads,)
        for o, w in zip((out, *grads), (want, *want_grads)):
            assert isinstance(o, cp.ndarray) and o.dtype == dtype
            np.testing.assert_allclose(cp.asnumpy(o), w, rtol=rtol,
                                       atol=rtol * max(1.0, float(np.abs(w).max())))
