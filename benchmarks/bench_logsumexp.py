"""Log-sum-exp over rows: fastvae.cpu.logsumexp vs plain NumPy (the forward that ``fastvae bench
--only ops`` times, fastvae/bench/workloads.py) and scipy.special.logsumexp.

bytes per call (float32, 4 bytes/element):
  forward   reads a (N K), writes lse (N):                            4 (N K + N)
  backward  reads a (N K), dlse and lse (2 N), writes da (N K):       4 (2 N K + 2 N)

Also here, because they decided the kernel (fastvae/cpu/logsumexp.py):
  test_row_kernel_variants  the one-shot forward with other row kernels, each against NumPy:
                            "online libm"  per-element online update, math.exp (scalar libm)
                            "online fast"  per-element online update, the vectorizable exp
                            "block-online" one pass, online per block of SUM_BLOCK (vectorized)
                            "two-pass"     the library kernel: max pass, then sum-of-exp pass
  test_parallel_vs_serial   the prange kernel against the serial one (the "numpy" column holds
                            the serial kernel in these rows): sets PARALLEL_MIN.
"""
import math

import numpy as np
import pytest
import scipy.special

import common
from fastvae.bench.workloads import numpy_logsumexp as numpy_forward
from fastvae.cpu import _math
from fastvae.cpu import logsumexp as lse
from fastvae.cpu._numba import jit

SIZES = [(128, 1000), (128, 5000), (4096, 100)]


def numpy_backward(dlse, a, out):
    return dlse[:, None] * np.exp(a - out[:, None])


def make_case(n, k):
    rng = np.random.default_rng(n * 7919 + k)
    a = (3 * rng.standard_normal((n, k)) - 100).astype(np.float32)
    return a, rng.standard_normal(n).astype(np.float32)


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("n,k", SIZES)
def test_forward(benchmark, n, k):
    a, _ = make_case(n, k)
    _close(lse.logsumexp_forward(a)[0], numpy_forward(a))
    common.run_pair(benchmark, lambda: lse.logsumexp_forward(a), lambda: numpy_forward(a),
                    op="logsumexp fwd vs numpy", size=(n, k), dtype=np.float32,
                    nbytes=4 * (n * k + n),
                    cuda_fn=common.cuda_call("logsumexp", "logsumexp_forward", a))


@pytest.mark.parametrize("n,k", SIZES)
def test_forward_vs_scipy(benchmark, n, k):
    a, _ = make_case(n, k)
    _close(lse.logsumexp_forward(a)[0], scipy.special.logsumexp(a, axis=1))
    common.run_pair(benchmark, lambda: lse.logsumexp_forward(a),
                    lambda: scipy.special.logsumexp(a, axis=1), op="logsumexp fwd vs scipy",
                    size=(n, k), dtype=np.float32, nbytes=4 * (n * k + n))


@pytest.mark.parametrize("n,k", SIZES)
def test_backward(benchmark, n, k):
    a, dlse = make_case(n, k)
    out, cache = lse.logsumexp_forward(a)
    _close(lse.logsumexp_backward(dlse, cache), numpy_backward(dlse, a, numpy_forward(a)))
    common.run_pair(benchmark, lambda: lse.logsumexp_backward(dlse, cache),
                    lambda: numpy_backward(dlse, a, out), op="logsumexp bwd vs numpy",
                    size=(n, k), dtype=np.float32, nbytes=4 * (2 * n * k + 2 * n),
                    cuda_fn=common.cuda_backward("logsumexp", "logsumexp", dlse, a))


@pytest.mark.parametrize("n,k", [(128, 5000)])
def test_backward_vs_scipy_softmax(benchmark, n, k):
    a, dlse = make_case(n, k)
    out, cache = lse.logsumexp_forward(a)
    common.run_pair(benchmark, lambda: lse.logsumexp_backward(dlse, cache),
                    lambda: dlse[:, None] * scipy.special.softmax(a, axis=1),
                    op="logsumexp bwd vs scipy", size=(n, k), dtype=np.float32,
                    nbytes=4 * (2 * n * k + 2 * n))


# ---------------------------------------------------------------------------------------------
# row-kernel variants (lost; kept here as the measurement behind the choice)
# ---------------------------------------------------------------------------------------------
@jit
def online_libm_kernel(out, a):
    # per element: if x > m: s = s e^(m - x) + 1, m = x; else s += e^(x - m). Finite inputs only.
    for i in range(a.shape[0]):
        m, s = -np.inf, 0.0
        for j in range(a.shape[1]):
            x = np.float64(a[i, j])
            if x > m:
                s = s * math.exp(m - x) + 1.0
                m = x
            else:
                s += math.exp(x - m)
        out[i] = m + math.log(s)


@jit
def online_fast_kernel(out, a):
    # as online_libm_kernel with the vectorizable exp (in the input dtype); finite inputs only
    for i in range(a.shape[0]):
        m, s = a[i, 0], 0.0
        for j in range(a.shape[1]):
            x = a[i, j]
            if x > m:
                s = s * _math.fast_exp(m - x) + 1.0
                m = x
            else:
                s += _math.fast_exp(x - m)
        out[i] = m + math.log(s)


@jit
def block_online_kernel(out, a):
    # one pass, online per block: block max; rescale s if it grew; add the block's sum of exp.
    # Finite inputs only.
    k, block = a.shape[1], lse.SUM_BLOCK
    for i in range(a.shape[0]):
        m = lse.block_max(a[i], 0, min(block, k))
        s = np.float64(lse.block_sum_exp(a[i], 0, min(block, k), m))
        for j0 in range(block, k, block):
            j1 = min(j0 + block, k)
            bm = lse.block_max(a[i], j0, j1)
            if bm > m:
                s *= lse.exp_f64(np.float64(m) - np.float64(bm))
                m = bm
            s += lse.block_sum_exp(a[i], j0, j1, m)
        out[i] = m + math.log(s)


def _variant(kernel):
    def run(a):
        out = np.empty(a.shape[0], a.dtype)
        kernel(out, a)
        return out
    return run


VARIANTS = {"online libm": _variant(online_libm_kernel),
            "online fast": _variant(online_fast_kernel),
            "block-online": _variant(block_online_kernel),
            "two-pass": _variant(lambda out, a: lse.logsumexp_forward_kernel(out, a, *a.shape))}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n,k", SIZES)
def test_row_kernel_variants(benchmark, variant, n, k):
    a, _ = make_case(n, k)
    fn = VARIANTS[variant]
    _close(fn(a), numpy_forward(a))
    common.run_pair(benchmark, lambda: fn(a), lambda: numpy_forward(a),
                    op=f"lse fwd 1thr {variant}", size=(n, k), dtype=np.float32,
                    nbytes=4 * (n * k + n))


# ---------------------------------------------------------------------------------------------
# serial vs parallel
# ---------------------------------------------------------------------------------------------
PARALLEL_SIZES = [(16, 256), (32, 256), (64, 512), (128, 1000), (4096, 100)]


@pytest.mark.parametrize("n,k", PARALLEL_SIZES)
def test_parallel_vs_serial_forward(benchmark, n, k):
    a, _ = make_case(n, k)
    out = np.empty(n, np.float32)
    lse.logsumexp_forward_kernel_parallel(out, a, n, k)
    _close(out, numpy_forward(a))
    common.run_pair(benchmark, lambda: lse.logsumexp_forward_kernel_parallel(out, a, n, k),
                    lambda: lse.logsumexp_forward_kernel(out, a, n, k),
                    op="lse fwd prange vs serial", size=(n, k), dtype=np.float32,
                    nbytes=4 * (n * k + n))


@pytest.mark.parametrize("n,k", PARALLEL_SIZES)
def test_parallel_vs_serial_backward(benchmark, n, k):
    a, dlse = make_case(n, k)
    out = lse.logsumexp_forward(a)[0]
    da = np.empty_like(a)
    lse.logsumexp_backward_kernel_parallel(da, dlse, a, out, n, k)
    _close(da, numpy_backward(dlse, a, out))
    common.run_pair(benchmark, lambda: lse.logsumexp_backward_kernel_parallel(
                        da, dlse, a, out, n, k),
                    lambda: lse.logsumexp_backward_kernel(da, dlse, a, out, n, k),
                    op="lse bwd prange vs serial", size=(n, k), dtype=np.float32,
                    nbytes=4 * (2 * n * k + 2 * n))
