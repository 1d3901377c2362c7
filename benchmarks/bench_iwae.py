"""The IWAE estimate and the fused log importance weights: fastvae.cpu.iwae vs plain NumPy.

bytes per call (float32, 4 bytes/element):
  iwae forward      reads logw (N K), writes est (N):                              4 (N K + N)
  iwae backward     reads logw (N K), dest, lse (2 N), writes dlogw (N K):         4 (2 N K + 2 N)
  log_weight fwd    reads x (N D), dec_out (N K D), mu, logvar (2 N L), eps (N K L),
                    [dec_logvar (D)], writes logw (N K):
                    4 (N D + N K D + 2 N L + N K L + N K [+ D])
  log_weight bwd    reads dlogw (N K), x (N D), dec_out (N K D), mu, logvar (2 N L), eps (N K L),
                    writes ddec_out (N K D), dmu, dlogvar (2 N L), [ddec_logvar (D)]:
                    4 (N K + N D + 2 N K D + 4 N L + N K L [+ D])
Also test_log_weight_parallel_vs_serial: the prange kernels against the serial ones (the "numpy"
column holds the serial kernel in those rows): sets iwae.PARALLEL_MIN_BERNOULLI / _GAUSSIAN.
"""
import numpy as np
import pytest

import common
from fastvae.cpu import iwae

LOG_2PI = np.float32(np.log(2 * np.pi))
N, K, D, L = 128, 64, 784, 20


# ---------------------------------------------------------------------------------------------
# NumPy versions of the same work (float32 throughout)
# ---------------------------------------------------------------------------------------------
def numpy_iwae(logw):
    m = logw.max(axis=1)
    lse = m + np.log(np.exp(logw - m[:, None]).sum(axis=1))
    return lse - np.float32(np.log(logw.shape[1])), lse


def numpy_log_weight(x, dec_out, mu, logvar, eps, likelihood, dec_logvar):
    if likelihood == "bernoulli":
        ll = np.sum(x[:, None, :] * dec_out - np.logaddexp(np.float32(0), dec_out), axis=2)
    else:
        r = x[:, None, :] - dec_out
        ll = -0.5 * (np.sum(r * r * np.exp(-dec_logvar), axis=2)
                     + np.float32(x.shape[1]) * LOG_2PI + dec_logvar.sum())
    sigma = np.exp(0.5 * logvar)[:, None, :]
    z = mu[:, None, :] + sigma * eps
    return ll - 0.5 * np.sum(z * z - logvar[:, None, :] - eps * eps, axis=2)


def numpy_log_weight_backward(dlogw, x, dec_out, mu, logvar, eps, likelihood, dec_logvar):
    g = dlogw[:, :, None]
    if likelihood == "bernoulli":
        grads = (g * (x[:, None, :] - 1 / (1 + np.exp(-dec_out))),)
    else:
        inv_var = np.exp(-dec_logvar)
        r = x[:, None, :] - dec_out
        grads = (g * r * inv_var, -0.5 * np.sum(g * (1 - r * r * inv_var), axis=(0, 1)))
    sigma = np.exp(0.5 * logvar)[:, None, :]
    z = mu[:, None, :] + sigma * eps
    dmu = -np.sum(g * z, axis=1)
    dlogvar = np.sum(g * (0.5 - 0.5 * z * eps * sigma), axis=1)
    return (grads[0], dmu, dlogvar) + grads[1:]


def make_case(n, k, d, l, likelihood):
    rng = np.random.default_rng(n * 31 + k)
    f32 = np.float32
    if likelihood == "bernoulli":
        x = (rng.random((n, d)) < 0.3).astype(f32)
        dec_out = (3 * rng.standard_normal((n, k, d))).astype(f32)
        dec_logvar = None
    else:
        x = rng.standard_normal((n, d)).astype(f32)
        dec_out = (x[:, None, :] + 0.5 * rng.standard_normal((n, k, d))).astype(f32)
        dec_logvar = (0.3 * rng.standard_normal(d)).astype(f32)
    mu = rng.standard_normal((n, l)).astype(f32)
    logvar = (0.5 * rng.standard_normal((n, l))).astype(f32)
    eps = rng.standard_normal((n, k, l)).astype(f32)
    dlogw = rng.standard_normal((n, k)).astype(f32)
    return x, dec_out, mu, logvar, eps, dec_logvar, dlogw


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _bytes_forward(n, k, d, l):
    return 4 * (n * d + n * k * d + 2 * n * l + n * k * l + n * k + d)


def _bytes_backward(n, k, d, l):
    return 4 * (n * k + n * d + 2 * n * k * d + 4 * n * l + n * k * l + d)


# ---------------------------------------------------------------------------------------------
# iwae estimate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(128, 64), (128, 5000)])
def test_iwae_forward(benchmark, n, k):
    logw = (10 * np.random.default_rng(k).standard_normal((n, k)) - 100).astype(np.float32)
    _close(iwae.iwae_forward(logw)[0], numpy_iwae(logw)[0])
    common.run_pair(benchmark, lambda: iwae.iwae_forward(logw), lambda: numpy_iwae(logw),
                    op="iwae fwd", size=(n, k), dtype=np.float32, nbytes=4 * (n * k + n),
                    cuda_fn=common.cuda_call("iwae", "iwae_forward", logw))


@pytest.mark.parametrize("n,k", [(128, 64), (128, 5000)])
def test_iwae_backward(benchmark, n, k):
    rng = np.random.default_rng(k)
    logw = (10 * rng.standard_normal((n, k)) - 100).astype(np.float32)
    dest = rng.standard_normal(n).astype(np.float32)
    est, cache = iwae.iwae_forward(logw)
    lse = numpy_iwae(logw)[1]

    def numpy_backward():
        return dest[:, None] * np.exp(logw - lse[:, None])

    _close(iwae.iwae_backward(dest, cache), numpy_backward())
    common.run_pair(benchmark, lambda: iwae.iwae_backward(dest, cache), numpy_backward,
                    op="iwae bwd", size=(n, k), dtype=np.float32, nbytes=4 * (2 * n * k + 2 * n),
                    cuda_fn=common.cuda_backward("iwae", "iwae", dest, logw))


# ---------------------------------------------------------------------------------------------
# log_weight
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_log_weight_forward(benchmark, likelihood):
    x, dec_out, mu, logvar, eps, dec_logvar, _ = make_case(N, K, D, L, likelihood)
    args = (x, dec_out, mu, logvar, eps, likelihood, dec_logvar)
    _close(iwae.log_weight_forward(*args)[0], numpy_log_weight(*args))
    common.run_pair(benchmark, lambda: iwae.log_weight_forward(*args),
                    lambda: numpy_log_weight(*args), op=f"log_weight fwd {likelihood}",
                    size=(N, K, D, L), dtype=np.float32, nbytes=_bytes_forward(N, K, D, L),
                    cuda_fn=common.cuda_call("iwae", "log_weight_forward", *args))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_log_weight_backward(benchmark, likelihood):
    x, dec_out, mu, logvar, eps, dec_logvar, dlogw = make_case(N, K, D, L, likelihood)
    args = (x, dec_out, mu, logvar, eps, likelihood, dec_logvar)
    cache = iwae.log_weight_forward(*args)[1]
    for got, want in zip(iwae.log_weight_backward(dlogw, cache),
                         numpy_log_weight_backward(dlogw, *args), strict=True):
        _close(got, want)
    common.run_pair(benchmark, lambda: iwae.log_weight_backward(dlogw, cache),
                    lambda: numpy_log_weight_backward(dlogw, *args),
                    op=f"log_weight bwd {likelihood}", size=(N, K, D, L), dtype=np.float32,
                    nbytes=_bytes_backward(N, K, D, L),
                    cuda_fn=common.cuda_backward("iwae", "log_weight", dlogw, *args))


def _kernels(direction, parallel, args, dlogw):
    """The forward or backward kernel alone, serial or parallel, with the launcher's arrays."""
    x, dec_out, mu, logvar, eps, likelihood, dec_logvar = args
    _, (x, dec_out, mu, sigma, eps, inv_var, gaussian) = iwae.log_weight_forward(*args)
    n, k, d = dec_out.shape
    if direction == "fwd":
        logw = np.empty((n, k), np.float32)
        kernel = (iwae.log_weight_forward_kernel_parallel if parallel
                  else iwae.log_weight_forward_kernel)
        return lambda: kernel(logw, x, dec_out, mu, logvar, sigma, eps, inv_var, 0.0, gaussian,
                              n, k)   # 0.0 for the Gaussian constant: same work
    outs = (np.empty_like(dec_out), np.empty_like(mu), np.empty_like(mu))
    blocks = np.zeros((max(1, min(iwae.MAX_BLOCKS, -(-n // iwae.ROWS_PER_BLOCK))),
                       d if gaussian else 0))
    kernel = (iwae.log_weight_backward_kernel_parallel if parallel
              else iwae.log_weight_backward_kernel)
    return lambda: kernel(*outs, blocks, dlogw, x, dec_out, mu, sigma, eps, inv_var, gaussian, n)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("n,k,d", [(2, 4, 784), (16, 1, 784), (16, 4, 784), (128, 1, 784),
                                   (128, 64, 784)])
def test_log_weight_parallel_vs_serial(benchmark, likelihood, direction, n, k, d):
    x, dec_out, mu, logvar, eps, dec_logvar, dlogw = make_case(n, k, d, L, likelihood)
    args = (x, dec_out, mu, logvar, eps, likelihood, dec_logvar)
    nbytes = (_bytes_forward if direction == "fwd" else _bytes_backward)(n, k, d, L)
    common.run_pair(benchmark, _kernels(direction, True, args, dlogw),
                    _kernels(direction, False, args, dlogw),
                    op=f"lw {likelihood[:5]} {direction} prange/serial", size=(n, k, d, L),
                    dtype=np.float32, nbytes=nbytes)
