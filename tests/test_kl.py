"""fastvae.cpu.kl against fastvae/_reference.py: per-row KL, its backward, extremes, NaN/Inf,
and finite differences of the reference backward."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import kl
from tests.helpers import check3, check_backward

SIZES = [(1, 1), (31, 257), (257, 31), (4099, 7), (128, 20)]   # serial and prange paths


def fast_kl(mu, logvar, dkl):
    out, cache = kl.kl_forward(mu, logvar)
    return (out,) + kl.kl_backward(dkl, cache)


def ref_kl(mu, logvar, dkl):
    out, cache = ref.kl_forward(mu, logvar)
    return (out,) + ref.kl_backward(dkl, cache)


def kl_inputs(rng, n, l):
    return rng.standard_normal((n, l)), rng.standard_normal((n, l)), rng.standard_normal(n)


@pytest.mark.parametrize("shape", SIZES)
def test_kl_matches_reference(shape):
    check3(fast_kl, ref_kl, kl_inputs(np.random.default_rng(1), *shape), name="kl")


@pytest.mark.parametrize("shape", [(31, 257), (4099, 7)])
def test_kl_extremes(shape):
    """logvar at +-30 (exp(30) ~ 1e13 is fine in float32), tiny logvar (expm1 keeps its
    precision), mu up to +-1e3."""
    rng = np.random.default_rng(2)
    mu, logvar, dkl = kl_inputs(rng, *shape)
    pick = rng.random(shape)
    logvar[pick < 0.2] = 30.0
    logvar[(pick >= 0.2) & (pick < 0.4)] = -30.0
    tiny = (pick >= 0.4) & (pick < 0.5)
    logvar[tiny] = 1e-7 * rng.standard_normal(int(tiny.sum()))
    big = rng.random(shape) < 0.2
    mu[big] = 1e3 * np.sign(rng.standard_normal(int(big.sum())))
    check3(fast_kl, ref_kl, (mu, logvar, dkl), name="kl extreme")


def test_kl_small_rows_keep_precision():
    """A row whose KL is ~1e-12 (mu ~ 1e-6, logvar ~ 1e-6): expm1(lv) - lv, not exp(lv) - 1 - lv."""
    rng = np.random.default_rng(3)
    mu, logvar, dkl = kl_inputs(rng, 5, 20)
    check3(fast_kl, ref_kl, (1e-6 * mu, 1e-6 * logvar, dkl), rtol32=1e-6, name="kl tiny")
    out = kl.kl_forward(1e-6 * mu, 1e-6 * logvar)[0]
    want = ref.kl_forward(1e-6 * mu, 1e-6 * logvar)[0]
    np.testing.assert_allclose(out, want, rtol=1e-9)   # exp(lv) - 1 - lv would be off by ~1e-4


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kl_nonfinite_inputs():
    """NaN/Inf in mu or logvar: the reference's NaN/Inf placement in kl, dmu and dlogvar."""
    rng = np.random.default_rng(4)
    mu, logvar, dkl = kl_inputs(rng, 8, 20)
    mu[0, 1] = np.nan
    logvar[1, 2] = np.nan
    mu[2, 3] = np.inf
    logvar[3, 4] = np.inf      # expm1(inf) - inf = NaN
    logvar[4, 5] = -np.inf     # expm1(-inf) - (-inf) = +inf
    check3(fast_kl, ref_kl, (mu, logvar, dkl), name="kl nonfinite")
    out = kl.kl_forward(mu.astype(np.float32), logvar.astype(np.float32))[0]
    assert np.isnan(out[[0, 1, 3]]).all() and out[2] == np.inf and out[4] == np.inf
    assert np.isfinite(out[5:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_serial_and_parallel_kernels_agree(dtype):
    mu, logvar, dkl = (a.astype(dtype) for a in kl_inputs(np.random.default_rng(5), 67, 20))
    outs = []
    for fwd, bwd in ((kl.kl_forward_kernel, kl.kl_backward_kernel),
                     (kl.kl_forward_kernel_parallel, kl.kl_backward_kernel_parallel)):
        out, dmu, dlogvar = np.empty(67, dtype), np.empty_like(mu), np.empty_like(logvar)
        fwd(out, mu, logvar)
        bwd(dmu, dlogvar, dkl, mu, logvar)
        outs.append((out, dmu, dlogvar))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_reference_kl_backward_finite_differences():
    rng = np.random.default_rng(6)
    mu, logvar, _ = kl_inputs(rng, 7, 5)
    check_backward(ref.kl_forward, ref.kl_backward, [mu, logvar], wrt=(0, 1), rng=rng)
