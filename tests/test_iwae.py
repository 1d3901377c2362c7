"""fastvae.cpu.iwae (the IWAE estimate, the fused log importance weights) against the reference."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import iwae
from tests.helpers import check_backward
from tests import helpers
from tests.test_logsumexp import (SHAPES, autograd_softmax_grad, check3, extreme_matrix,
                                  large_lse_rows)

LIKELIHOODS = ["bernoulli", "gaussian"]


# ---------------------------------------------------------------------------------------------
# iwae estimate
# ---------------------------------------------------------------------------------------------
def _fast_est_grad(logw, dest):
    return iwae.iwae_backward(dest, iwae.iwae_forward(logw)[1])


def _ref_est_grad(logw, dest):
    return ref.iwae_backward(dest, ref.iwae_forward(logw)[1])


@pytest.mark.parametrize("shape", SHAPES)
def test_iwae_forward_backward(shape):
    rng = np.random.default_rng(sum(shape) + 1)
    logw = rng.standard_normal(shape) * 10 - 100
    check3(lambda a: iwae.iwae_forward(a)[0], lambda a: ref.iwae_forward(a)[0], [logw],
           name="est")
    check3(_fast_est_grad, _ref_est_grad, [logw, rng.standard_normal(shape[0])], name="dlogw")


def test_iwae_special_rows():
    rng = np.random.default_rng(3)
    logw, names = extreme_matrix(33, rng)
    dest = rng.standard_normal(logw.shape[0])
    for i, name in enumerate(names):   # row by row: each row on its own scale
        check3(lambda a: iwae.iwae_forward(a)[0], lambda a: ref.iwae_forward(a)[0],
               [logw[i:i + 1]], name=f"est {name}")
        check3(_fast_est_grad, _ref_est_grad, [logw[i:i + 1], dest[i:i + 1]], name=f"d {name}")


@pytest.mark.parametrize("shape", [(5, 7), (16, 500), (64, 1000)])
def test_iwae_backward_at_large_lse_within_three_way_of_autograd(shape):
    """log w ~ +-500 (IWAE log weights are hundreds of nats): the normalized weights within the
    plain three-way tolerance of autograd's exp(logw - max) / sum, float32 and float64 (the float32
    lse in exp(logw - lse) gave 6e-6 to 4e-5 errors here against tolerances ~1-1.5e-6)."""
    rng = np.random.default_rng(shape[1] + 2)
    logw = large_lse_rows(shape, rng)
    dest = rng.standard_normal(shape[0]).astype(np.float32).astype(np.float64)
    check3(lambda a: iwae.iwae_forward(a)[0], lambda a: ref.iwae_forward(a)[0], [logw],
           name="est")
    # float64: exp(logw - lse64) keeps ulp(|lse|) of float64 relative in each weight
    helpers.check3(_fast_est_grad, autograd_softmax_grad, [logw, dest], rtol64=1e-12,
                   name="dlogw")


def test_iwae_estimate_value():
    # K equal weights w: the estimate is exactly log w
    for dtype in (np.float32, np.float64):
        logw = np.full((2, 64), -3.5, dtype=dtype)
        est, cache = iwae.iwae_forward(logw)
        assert est.dtype == dtype
        np.testing.assert_allclose(est, -3.5, rtol=1e-6 if dtype == np.float32 else 1e-15)
        dlogw = iwae.iwae_backward(np.array([1.0, 2.0], dtype=dtype), cache)
        np.testing.assert_allclose(dlogw, np.array([[1 / 64], [2 / 64]]) * np.ones((1, 64)),
                                   rtol=1e-5 if dtype == np.float32 else 1e-14)


# ---------------------------------------------------------------------------------------------
# log_weight
# ---------------------------------------------------------------------------------------------
def lw_inputs(n, k, d, l, rng, likelihood, logvar_scale=1.0):
    if likelihood == "bernoulli":
        x = (rng.random((n, d)) < 0.4).astype(np.float64)
        x[:, ::7] = rng.random(x[:, ::7].shape)   # some values inside (0, 1)
        dec_out = rng.standard_normal((n, k, d)) * 3
    else:
        x = rng.standard_normal((n, d))
        dec_out = x[:, None, :] + rng.standard_normal((n, k, d)) * 0.5
    mu = rng.standard_normal((n, l))
    logvar = rng.standard_normal((n, l)) * logvar_scale
    eps = rng.standard_normal((n, k, l))
    dec_logvar = rng.standard_normal(d) * 0.5 if likelihood == "gaussian" else None
    return [x, dec_out, mu, logvar, eps, dec_logvar]


def _lw(module, likelihood):
    """log_weight forward and backward of ``module`` (iwae or the reference) on plain arrays."""
    def forward(x, dec_out, mu, logvar, eps, dec_logvar=None):
        return module.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood, dec_logvar)[0]

    def backward(x, dec_out, mu, logvar, eps, dlogw, dec_logvar=None):
        cache = module.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood, dec_logvar)[1]
        return module.log_weight_backward(dlogw, cache)
    return forward, backward


def check_log_weight(inputs, likelihood, rng, name):
    x, dec_out, mu, logvar, eps, dec_logvar = inputs
    dlogw = rng.standard_normal(dec_out.shape[:2])
    fast_f, fast_b = _lw(iwae, likelihood)
    ref_f, ref_b = _lw(ref, likelihood)
    tail = [] if dec_logvar is None else [dec_logvar]
    check3(fast_f, ref_f, [x, dec_out, mu, logvar, eps] + tail, name=f"logw {name}")
    check3(fast_b, ref_b, [x, dec_out, mu, logvar, eps, dlogw] + tail, name=f"grads {name}")


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("nkdl", [(3, 5, 31, 2), (1, 1, 1, 1), (17, 33, 784, 20), (2, 300, 5, 3),
                                  (40, 1, 257, 7)])
def test_log_weight(likelihood, nkdl):
    rng = np.random.default_rng(sum(nkdl))
    check_log_weight(lw_inputs(*nkdl, rng, likelihood), likelihood, rng, f"{nkdl}")


EXTREMES = [(lik, case) for lik in LIKELIHOODS
            for case in ("logvar +30", "logvar -30", "logits 1e4", "nan", "inf")]
EXTREMES += [("gaussian", "dec_logvar +-30")]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the reference meets NaN and inf
@pytest.mark.parametrize("likelihood, case", EXTREMES)
def test_log_weight_extremes(likelihood, case):
    rng = np.random.default_rng(11)
    inputs = lw_inputs(4, 6, 33, 5, rng, likelihood)
    x, dec_out, mu, logvar, eps, dec_logvar = inputs
    if case == "logvar +30":
        logvar[:] = 30.0 + rng.standard_normal(logvar.shape) * 0.1   # sigma ~ 3e6: no overflow
    elif case == "logvar -30":
        logvar[:] = -30.0 + rng.standard_normal(logvar.shape) * 0.1
    elif case == "logits 1e4":
        dec_out[:, :, ::2] = 1e4
        dec_out[:, :, 1::2] = -1e4
        dec_out[:, 1:] += rng.standard_normal(dec_out[:, 1:].shape)
    elif case == "dec_logvar +-30":
        dec_logvar[::2], dec_logvar[1::2] = 30.0, -30.0
    elif case == "nan":
        dec_out[1, 2, 3] = np.nan
        eps[2, 0, 1] = np.nan
    else:
        dec_out[0, 1, 4] = np.inf
        dec_out[3, 0, 0] = -np.inf
    check_log_weight(inputs, likelihood, rng, case)


def test_log_weight_serial_equals_parallel(monkeypatch):
    """The row-block sums do not depend on the kernel: serial and parallel agree bit for bit."""
    rng = np.random.default_rng(5)
    inputs = lw_inputs(70, 4, 63, 3, rng, "gaussian")
    x, dec_out, mu, logvar, eps, dec_logvar = (a.astype(np.float32) for a in inputs)
    dlogw = rng.standard_normal((70, 4)).astype(np.float32)
    results = []
    for threshold in (1, 1 << 40):
        monkeypatch.setattr(iwae, "PARALLEL_MIN_GAUSSIAN", threshold)
        logw, cache = iwae.log_weight_forward(x, dec_out, mu, logvar, eps, "gaussian", dec_logvar)
        results.append((logw,) + iwae.log_weight_backward(dlogw, cache))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_backward_finite_differences(likelihood):
    """The reference holds eps fixed and treats dec_out as an independent input (the decoder's
    dependence on z runs through the decoder): exactly the derivative wrt (dec_out, mu, logvar)
    (+ dec_logvar) of log_weight_forward with eps fixed."""
    rng = np.random.default_rng(2)
    inputs = lw_inputs(3, 4, 6, 2, rng, likelihood)
    inputs = inputs[:5] + [likelihood, inputs[5]]
    wrt = (1, 2, 3) if likelihood == "bernoulli" else (1, 2, 3, 6)
    check_backward(ref.log_weight_forward, ref.log_weight_backward, inputs, wrt=wrt, rng=rng)


@pytest.mark.parametrize("shape", [(1, 1), (3, 8)])
def test_reference_iwae_backward_finite_differences(shape):
    rng = np.random.default_rng(4)
    check_backward(ref.iwae_forward, ref.iwae_backward, [rng.standard_normal(shape) * 3],
                   wrt=(0,), rng=rng)
