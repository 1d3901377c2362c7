"""fastvae.cpu.loglik against fastvae/_reference.py: Bernoulli and Gaussian row log-likelihoods,
their backwards, and finite differences of the reference backwards."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import loglik
from tests.helpers import check3, check_backward

SIZES = [(1, 1), (31, 257), (257, 31), (4099, 7), (128, 784)]   # serial and prange paths


# forward and backward as functions of plain arrays (the caches differ between implementations)
def fast_bernoulli(x, logits, dll):
    ll, cache = loglik.bernoulli_loglik_forward(x, logits)
    return ll, loglik.bernoulli_loglik_backward(dll, cache)


def ref_bernoulli(x, logits, dll):
    ll, cache = ref.bernoulli_loglik_forward(x, logits)
    return ll, ref.bernoulli_loglik_backward(dll, cache)


def fast_gaussian(x, mean, logvar, dll):
    ll, cache = loglik.gaussian_loglik_forward(x, mean, logvar)
    return (ll,) + loglik.gaussian_loglik_backward(dll, cache)


def ref_gaussian(x, mean, logvar, dll):
    ll, cache = ref.gaussian_loglik_forward(x, mean, logvar)
    return (ll,) + ref.gaussian_loglik_backward(dll, cache)


def bernoulli_inputs(rng, n, d):
    """x in [0, 1] (not binary; some exact 0 and 1), logits ~ 3 N(0, 1), upstream ~ N(0, 1)."""
    x = rng.random((n, d))
    x[rng.random((n, d)) < 0.1] = 0.0
    x[rng.random((n, d)) < 0.1] = 1.0
    return x, 3 * rng.standard_normal((n, d)), rng.standard_normal(n)


def gaussian_inputs(rng, n, d):
    x = rng.standard_normal((n, d))
    mean = x + 0.5 * rng.standard_normal((n, d))
    return x, mean, rng.standard_normal(d), rng.standard_normal(n)


@pytest.mark.parametrize("shape", SIZES)
def test_bernoulli_matches_reference(shape):
    check3(fast_bernoulli, ref_bernoulli, bernoulli_inputs(np.random.default_rng(1), *shape),
           name="bernoulli")


@pytest.mark.parametrize("shape", SIZES)
def test_gaussian_matches_reference(shape):
    check3(fast_gaussian, ref_gaussian, gaussian_inputs(np.random.default_rng(2), *shape),
           name="gaussian")


@pytest.mark.parametrize("shape", [(31, 257), (128, 784)])
def test_bernoulli_extreme_logits(shape):
    """Logits of +-1e4 (exp(1e4) overflows every dtype), +-30, and exactly 0."""
    rng = np.random.default_rng(3)
    x, logits, dll = bernoulli_inputs(rng, *shape)
    pick = rng.random(shape)
    logits[pick < 0.3] = 1e4 * rng.choice([-1.0, 1.0], size=int((pick < 0.3).sum()))
    logits[(pick >= 0.3) & (pick < 0.4)] = 30.0 * np.sign(rng.standard_normal())
    logits[(pick >= 0.4) & (pick < 0.45)] = 0.0
    check3(fast_bernoulli, ref_bernoulli, (x, logits, dll), name="bernoulli extreme")


@pytest.mark.parametrize("shape", [(31, 257), (128, 784)])
def test_gaussian_extreme_logvar(shape):
    """Decoder log-variances of +-30 next to ordinary ones."""
    rng = np.random.default_rng(4)
    x, mean, logvar, dll = gaussian_inputs(rng, *shape)
    logvar[::3] = 30.0
    logvar[1::3] = -30.0
    check3(fast_gaussian, ref_gaussian, (x, mean, logvar, dll), name="gaussian extreme")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bernoulli_nonfinite_inputs():
    """NaN/+-inf logits and NaN x: the reference's NaN/Inf placement (x = 1, l = +inf -> NaN;
    l = -inf -> -inf for x > 0 and NaN for x = 0), never a wrong finite number."""
    rng = np.random.default_rng(5)
    x, logits, dll = bernoulli_inputs(rng, 12, 33)
    logits[0, 3] = np.nan
    logits[1, 4], x[1, 4] = np.inf, 1.0
    logits[2, 5], x[2, 5] = np.inf, 0.0
    logits[3, 6], x[3, 6] = -np.inf, 0.5
    logits[4, 7], x[4, 7] = -np.inf, 0.0
    logits[5, 8], logits[5, 9] = np.inf, -np.inf
    x[6, 10] = np.nan
    check3(fast_bernoulli, ref_bernoulli, (x, logits, dll), name="bernoulli nonfinite")
    ll = fast_bernoulli(*(a.astype(np.float32) for a in (x, logits, dll)))[0]
    assert np.isnan(ll[[0, 1, 2, 4, 5, 6]]).all() and ll[3] == -np.inf
    assert np.isfinite(ll[7:]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_gaussian_nonfinite_inputs():
    """NaN in x, inf in the mean, NaN in one decoder log-variance (every row's ll is NaN)."""
    rng = np.random.default_rng(6)
    x, mean, logvar, dll = gaussian_inputs(rng, 12, 33)
    x[0, 3] = np.nan
    mean[1, 4] = np.inf
    check3(fast_gaussian, ref_gaussian, (x, mean, logvar, dll), name="gaussian nonfinite x")
    logvar[5] = np.nan
    check3(fast_gaussian, ref_gaussian, (x, mean, logvar, dll), name="gaussian nonfinite lv")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_kernels_agree(dtype):
    """Both launcher paths compute bit-identical results (the row blocks depend on N only)."""
    rng = np.random.default_rng(7)
    x, logits, dll = (a.astype(dtype) for a in bernoulli_inputs(rng, 67, 129))
    outs = []
    for fwd, bwd in ((loglik.bernoulli_loglik_forward_kernel,
                      loglik.bernoulli_loglik_backward_kernel),
                     (loglik.bernoulli_loglik_forward_kernel_parallel,
                      loglik.bernoulli_loglik_backward_kernel_parallel)):
        ll, dlogits = np.empty(67, dtype), np.empty_like(logits)
        fwd(ll, x, logits)
        bwd(dlogits, dll, x, logits)
        outs.append((ll, dlogits))
    x, mean, logvar, dll = (a.astype(dtype) for a in gaussian_inputs(rng, 67, 129))
    inv_var = loglik.gaussian_inv_var(logvar)
    for fwd, bwd in ((loglik.gaussian_loglik_forward_kernel,
                      loglik.gaussian_loglik_backward_kernel),
                     (loglik.gaussian_loglik_forward_kernel_parallel,
                      loglik.gaussian_loglik_backward_kernel_parallel)):
        ll, dmean = np.empty(67, dtype), np.empty_like(mean)
        partial = np.zeros((loglik.row_blocks(67), 129))
        fwd(ll, x, mean, logvar, inv_var)
        bwd(dmean, partial, dll, x, mean, inv_var)
        outs.append((ll, dmean, partial))
    for serial, parallel in (outs[:2], outs[2:]):
        for a, b in zip(serial, parallel, strict=True):
            np.testing.assert_array_equal(a, b)


def test_row_functions_in_float64():
    """The row functions other kernels call return float64 sums for float32 rows."""
    rng = np.random.default_rng(9)
    x, logits, _ = bernoulli_inputs(rng, 1, 50)
    x32, l32 = x[0].astype(np.float32), logits[0].astype(np.float32)
    got = loglik.bernoulli_loglik_row(x32, l32)
    want = ref.bernoulli_loglik_forward(x32[None].astype(np.float64), l32[None].astype(np.float64))
    assert isinstance(got, float) and abs(got - want[0][0]) <= 1e-13 * abs(want[0][0])
    lv = rng.standard_normal(50).astype(np.float32)
    got = loglik.gaussian_loglik_row(x32, l32, lv, loglik.gaussian_inv_var(lv))
    want = ref.gaussian_loglik_forward(*(a[None].astype(np.float64) for a in (x32, l32)),
                                       lv.astype(np.float64))[0][0]
    assert isinstance(got, float) and abs(got - want) <= 1e-13 * max(1.0, abs(want))


def test_reference_bernoulli_backward_finite_differences():
    rng = np.random.default_rng(10)
    x, logits, _ = bernoulli_inputs(rng, 7, 13)
    check_backward(ref.bernoulli_loglik_forward, ref.bernoulli_loglik_backward, [x, logits],
                   wrt=(1,), rng=rng)


def test_reference_gaussian_backward_finite_differences():
    rng = np.random.default_rng(11)
    x, mean, logvar, _ = gaussian_inputs(rng, 7, 13)
    check_backward(ref.gaussian_loglik_forward, ref.gaussian_loglik_backward, [x, mean, logvar],
                   wrt=(1, 2), rng=rng)
