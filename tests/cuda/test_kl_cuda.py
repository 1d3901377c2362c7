"""fastvae.cuda.kl (kernels/kl.cu) against fastvae/_reference.py.

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants; tiny = one warp per block, 3 blocks, so a warp
handles several rows); the gpu-marked test runs them on CuPy arrays against the CPU backend.
"""
import numpy as np
import pytest

from fastvae.cuda import kl
from tests.helpers import check3
from tests.test_kl import kl_inputs, ref_kl   # the CPU tests' inputs and reference

# (N, L): one element, L < 32, L > 32 (several elements per lane), N > warps of the tiny grid.
SIZES = [(1, 1), (3, 31), (37, 20), (5, 70)]


def fast_kl(mu, logvar, dkl):
    out, cache = kl.kl_forward(mu, logvar)
    assert cache[0] is mu and cache[1] is logvar
    return (out,) + kl.kl_backward(dkl, cache)


@pytest.mark.parametrize("shape", SIZES)
def test_kl_matches_reference(host_cuda, shape):
    check3(fast_kl, ref_kl, kl_inputs(np.random.default_rng(shape[0] * 100 + shape[1]), *shape),
           rtol32=1e-6, rtol64=1e-13, name="kl")


def test_kl_extremes(host_cuda):
    """logvar at +-30, tiny logvar (expm1 keeps its precision), mu up to +-1e3."""
    rng = np.random.default_rng(2)
    shape = (7, 45)
    mu, logvar, dkl = kl_inputs(rng, *shape)
    pick = rng.random(shape)
    logvar[pick < 0.2] = 30.0
    logvar[(pick >= 0.2) & (pick < 0.4)] = -30.0
    tiny = (pick >= 0.4) & (pick < 0.5)
    logvar[tiny] = 1e-7 * rng.standard_normal(int(tiny.sum()))
    big = rng.random(shape) < 0.2
    mu[big] = 1e3 * np.sign(rng.standard_normal(int(big.sum())))
    check3(fast_kl, ref_kl, (mu, logvar, dkl), rtol32=1e-6, rtol64=1e-13, name="kl extreme")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_kl_nonfinite_inputs(host_cuda):
    """NaN/Inf in mu or logvar: the reference's NaN/Inf placement in kl, dmu and dlogvar."""
    rng = np.random.default_rng(4)
    mu, logvar, dkl = kl_inputs(rng, 6, 33)
    mu[0, 3] = np.nan
    logvar[1, 32] = np.nan
    mu[2, 0] = np.inf
    logvar[3, 5] = np.inf
    logvar[4, 7] = -np.inf
    check3(fast_kl, ref_kl, (mu, logvar, dkl), rtol32=1e-6, rtol64=1e-13, name="kl nonfinite")
    out = kl.kl_forward(mu, logvar)[0]
    assert np.isnan(out[[0, 1, 3]]).all() and out[2] == np.inf and out[4] == np.inf
    assert np.isfinite(out[5])


def test_kl_empty_and_checks(host_cuda):
    e = np.zeros((0, 20), np.float32)
    out, cache = kl.kl_forward(e, e.copy())
    assert out.shape == (0,)
    assert [g.shape for g in kl.kl_backward(np.zeros(0, np.float32), cache)] == [(0, 20)] * 2
    a = np.ones((4, 3), np.float32)
    with pytest.raises(AssertionError, match="one shape and dtype"):
        kl.kl_forward(a, np.ones((4, 3)))
    with pytest.raises(AssertionError, match="dkl is float32 \\(3,\\)"):
        kl.kl_backward(np.ones(3, np.float32), (a, a))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (128, 20), (4099, 7)])
def test_gpu_matches_cpu_backend(cp, dtype, shape):
    from fastvae.cpu import kl as cpu_kl
    mu, logvar, dkl = (a.astype(dtype) for a in kl_inputs(np.random.default_rng(5), *shape))
    out, cache = kl.kl_forward(cp.asarray(mu), cp.asarray(logvar))
    grads = kl.kl_backward(cp.asarray(dkl), cache)
    want, cpu_cache = cpu_kl.kl_forward(mu, logvar)
    want_grads = cpu_kl.kl_backward(dkl, cpu_cache)
    r64 = ref_kl(*(a.astype(np.float64) for a in (mu, logvar, dkl)))
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    for o, w, r in zip((out, *grads), (want, *want_grads), r64):
        assert isinstance(o, cp.ndarray) and o.dtype == dtype
        np.testing.assert_allclose(cp.asnumpy(o), w, rtol=rtol, atol=rtol * max(1, np.abs(r).max()))
