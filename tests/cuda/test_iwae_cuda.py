"""fastvae.cuda.iwae (kernels/iwae.cu, and kernels/logsumexp.cu for the estimate) against
fastvae/_reference.py.

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants); the gpu-marked test runs them on CuPy arrays and
compares with the CPU backend.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import iwae as cpu
from fastvae.cuda import iwae
from tests.helpers import assert_close3

# (N, K, D, L): tiny, awkward, and P = N K = 35 pairs (several blocks / partial rows, both configs)
SHAPES = [(1, 1, 1, 1), (3, 2, 31, 3), (5, 7, 33, 4), (1, 2, 257, 20)]
RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _inputs(n, k, d, l, seed, likelihood, extreme=False):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)) if likelihood == "gaussian" else (rng.random((n, d)) < 0.4) * 1.0
    dec_out = rng.standard_normal((n, k, d)) * 3
    mu = rng.standard_normal((n, l))
    logvar = rng.standard_normal((n, l))
    eps = rng.standard_normal((n, k, l))
    dec_logvar = rng.standard_normal(d) * 0.5 - 1
    if extreme:
        logvar.flat[::2] = 30 * rng.choice([-1.0, 1.0], size=logvar.flat[::2].shape)
        if likelihood == "bernoulli":
            dec_out.flat[::3] = 1e4 * rng.choice([-1.0, 1.0], size=dec_out.flat[::3].shape)
        else:
            dec_logvar[::2] = rng.choice([-30.0, 10.0], size=dec_logvar[::2].shape)
    return x, dec_out, mu, logvar, eps, dec_logvar


def _scale(a):
    f = np.abs(a[np.isfinite(a)])
    return max(1.0, float(f.max()) if f.size else 1.0)


def _run(fn, args, dtype):
    return fn(*(a.astype(dtype) if isinstance(a, np.ndarray) else a for a in args))


def _check_log_weight(shape, seed, dtype, likelihood, extreme=False, nan_at=None):
    n, k, d, l = shape
    x, dec_out, mu, logvar, eps, dlv = _inputs(n, k, d, l, seed, likelihood, extreme)
    if nan_at is not None:
        dec_out[nan_at] = np.nan
    dlogw = np.random.default_rng(seed + 1).standard_normal((n, k))
    gl = likelihood == "gaussian"
    fwd_args = (x, dec_out, mu, logvar, eps, likelihood, dlv if gl else None)

    def fwd_bwd(forward, backward, dt):
        logw, cache = _run(forward, fwd_args, dt)
        return (logw, *backward(dlogw.astype(dt), cache))

    out = fwd_bwd(iwae.log_weight_forward, iwae.log_weight_backward, dtype)
    with np.errstate(all="ignore"):
        r64 = fwd_bwd(ref.log_weight_forward, ref.log_weight_backward, np.float64)
        r32 = fwd_bwd(ref.log_weight_forward, ref.log_weight_backward, dtype) \
            if dtype == np.float32 else r64
    names = ("logw", "ddec_out", "dmu", "dlogvar", "ddec_logvar")
    assert len(out) == len(r64) == (5 if gl else 4)
    for name, o, a, b in zip(names, out, r32, r64):
        assert o.dtype == dtype and o.shape == b.shape, (name, o.dtype, o.shape, b.shape)
        assert_close3(o, a, b, atol=RTOL[dtype] * _scale(b), name=f"{name} {np.dtype(dtype).name}")
    return out


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_log_weight_matches_reference(host_cuda, shape, dtype, likelihood):
    _check_log_weight(shape, sum(shape), dtype, likelihood)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_weight_extremes(host_cuda, dtype, likelihood):
    """logvar +-30, logits +-1e4 (Bernoulli), decoder log-variances -30 / +10 (Gaussian)."""
    _check_log_weight((3, 4, 37, 5), 21, dtype, likelihood, extreme=True)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_log_weight_nan_propagates(host_cuda, likelihood):
    logw, ddec_out, dmu, dlogvar, *rest = _check_log_weight(
        (3, 4, 37, 5), 22, np.float32, likelihood, nan_at=(1, 2, 5))
    assert np.isnan(logw[1, 2]) and np.isfinite(np.delete(logw.ravel(), 1 * 4 + 2)).all()
    assert np.isnan(ddec_out[1, 2, 5])
    if rest:
        assert np.isnan(rest[0][5]) and np.isfinite(np.delete(rest[0], 5)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 31), (2, 300)])
def test_iwae_estimate_and_backward(host_cuda, shape, dtype):
    rng = np.random.default_rng(shape[1])
    logw = rng.standard_normal(shape) * 30 - 100
    logw[0, 0] = -1e30
    if shape[0] > 2:
        logw[2] = -np.inf                          # all -inf row: est -inf, gradient 0
    dest = rng.standard_normal(shape[0])
    est, cache = iwae.iwae_forward(logw.astype(dtype))
    da = iwae.iwae_backward(dest.astype(dtype), cache)
    with np.errstate(all="ignore"):
        e64, c64 = ref.iwae_forward(logw)
        e32, _ = ref.iwae_forward(logw.astype(dtype))
        # the backward alone on the same (logw, lse), both in dtype (the kernel uses the
        # cache's float64 lse, cache[2]: more precise than this reference in float32)
        r = [ref.iwae_backward(dest.astype(t), (logw.astype(dtype).astype(t), cache[1].astype(t)))
             for t in (dtype, np.float64)]
    assert est.dtype == da.dtype == dtype
    assert_close3(est, e32 if dtype == np.float32 else e64, e64, atol=RTOL[dtype] * _scale(e64),
                  name="est")
    assert_close3(da, r[0] if dtype == np.float32 else r[1], r[1],
                  atol=RTOL[dtype] * _scale(r[1]), name="dlogw")
    if shape[0] > 2:
        assert est[2] == -np.inf and (da[2] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 9), (3, 400)])
def test_iwae_backward_at_large_lse_within_three_way_of_autograd(host_cuda, shape, dtype):
    """log w ~ -500 and +500: the normalized weights within the plain three-way tolerance of
    autograd's exp(logw - max) / sum (the float32 lse in exp(logw - lse) failed it 3-4x over).
    Float32 inputs (held in float64): the float64 reference sees the same values."""
    rng = np.random.default_rng(shape[1] + 3)
    n, k = shape
    offset = np.where(np.arange(n) % 2 == 0, -500.0, 500.0)[:, None]
    logw = (rng.standard_normal(shape) * 3 + offset).astype(np.float32).astype(np.float64)
    dest = rng.standard_normal(n).astype(np.float32).astype(np.float64)

    def autograd(d, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return d[:, None] * (e / e.sum(axis=1, keepdims=True))
    est, cache = iwae.iwae_forward(logw.astype(dtype))
    da = iwae.iwae_backward(dest.astype(dtype), cache)
    r32, r64 = autograd(dest.astype(dtype), logw.astype(dtype)), autograd(dest, logw)
    atol = {np.float32: 1e-6, np.float64: 1e-12}[dtype] * _scale(r64)
    assert est.dtype == da.dtype == dtype
    assert_close3(da, r32 if dtype == np.float32 else r64, r64, atol=atol, name="dlogw")
    assert_close3(est, ref.iwae_forward(logw.astype(dtype))[0], ref.iwae_forward(logw)[0],
                  atol=RTOL[dtype] * _scale(est), name="est")


def test_bad_likelihood():
    a = np.ones((1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="likelihood must be"):
        iwae.log_weight_forward(a[0], a, a[0], a[0], a, likelihood="poisson")


@pytest.mark.gpu
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (128, 1, 784, 20), (16, 500, 784, 20)])
def test_gpu_matches_cpu_backend(cp, shape, dtype, likelihood):
    n, k, d, l = shape
    x, dec_out, mu, logvar, eps, dlv = (a.astype(dtype) for a in
                                        _inputs(n, k, d, l, 5, likelihood, extreme=True))
    dlogw = np.random.default_rng(6).standard_normal((n, k)).astype(dtype)
    dev = [cp.asarray(a) for a in (x, dec_out, mu, logvar, eps)]
    gl = likelihood == "gaussian"
    logw, cache = iwae.log_weight_forward(*dev, likelihood, cp.asarray(dlv) if gl else None)
    out = (logw, *iwae.log_weight_backward(cp.asarray(dlogw), cache))
    est, c2 = iwae.iwae_forward(logw)
    dest = iwae.iwae_backward(cp.full(n, -1.0 / n, dtype=dtype), c2)
    c_logw, c_cache = cpu.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood,
                                             dlv if gl else None)
    c_out = (c_logw, *cpu.log_weight_backward(dlogw, c_cache))
    c_est, c_c2 = cpu.iwae_forward(c_logw)
    c_dest = cpu.iwae_backward(np.full(n, -1.0 / n, dtype=dtype), c_c2)
    names = ("logw", "ddec_out", "dmu", "dlogvar", *(("ddec_logvar",) if gl else ()), "est", "dest")
    for name, o, c in zip(names, (*out, est, dest), (*c_out, c_est, c_dest), strict=True):
        assert isinstance(o, cp.ndarray)
        assert_close3(cp.asnumpy(o), c, c, atol=10 * RTOL[dtype] * _scale(c), name=name)
