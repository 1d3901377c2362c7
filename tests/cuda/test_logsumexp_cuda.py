"""fastvae.cuda.logsumexp (kernels/logsumexp.cu) against fastvae/_reference.py.

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants); the gpu-marked test runs them on CuPy arrays and
compares with the CPU backend.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import logsumexp as cpu
from fastvae.cuda import logsumexp as lse_cuda
from tests.helpers import assert_close3

SHAPES = [(1, 1), (3, 31), (5, 257), (2, 1100)]
ATOL = {np.float32: 2e-6, np.float64: 1e-14}


def _logits(shape, seed, scale=5.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * scale + rng.standard_normal((shape[0], 1)) * 50


def _special_rows(k, seed):
    """Rows: all -inf; -1e30 and -inf mixed; one +inf; NaN; +inf and NaN; +inf and -inf; normal."""
    a = _logits((8, k), seed)
    a[0] = -np.inf
    a[1, ::2] = -np.inf
    a[1, 1::2] = -1e30
    a[2, k // 2] = np.inf
    a[3, k - 1] = np.nan
    a[4, 0], a[4, k - 1] = np.inf, np.nan
    a[5, :] = -np.inf
    a[5, k // 3] = np.inf
    a[6, : k // 2] = -np.inf
    return a


def _check(out, fn, inputs, dtype, name):
    """out (tuple) vs ``fn`` of the reference on dtype inputs and float64 inputs."""
    with np.errstate(all="ignore"):
        r32 = fn(*(x.astype(dtype) for x in inputs))
        r64 = fn(*(x.astype(np.float64) for x in inputs))
    r32, r64 = (r if isinstance(r, tuple) else (r,) for r in (r32, r64))
    scale = max([1.0] + [float(np.abs(r[np.isfinite(r)]).max()) for r in r64 if np.isfinite(r).any()])
    for i, (o, a, b) in enumerate(zip(out, r32, r64, strict=True)):
        assert o.dtype == dtype and o.shape == b.shape, (name, o.dtype, o.shape)
        assert_close3(o, a if dtype == np.float32 else b, b, atol=ATOL[dtype] * scale,
                      name=f"{name}[{i}] {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_partial_backward_match_reference(host_cuda, shape, dtype):
    a = _logits(shape, shape[0] * shape[1])
    dlse = np.random.default_rng(1).standard_normal(shape[0])
    ad = a.astype(dtype)
    _check(lse_cuda.logsumexp_partial(ad), ref.logsumexp_partial, (a,), dtype, "partial")
    lse, cache = lse_cuda.logsumexp_forward(ad)
    assert cache[0] is ad and cache[1] is lse
    assert cache[2].dtype == np.float64 and cache[2].shape == lse.shape
    np.testing.assert_array_equal(cache[2].astype(dtype), lse)   # lse: lse64 rounded once
    _check((lse,), lambda x: ref.logsumexp_forward(x)[0], (a,), dtype, "forward")
    da = lse_cuda.logsumexp_backward(dlse.astype(dtype), cache)
    # the backward alone: the same (a, lse) in the reference's cache, both already in dtype
    _check((da,), lambda d, x, s: ref.logsumexp_backward(d, (x, s)), (dlse, ad, lse), dtype,
           "backward")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 33])
def test_special_rows(host_cuda, k, dtype):
    a = _special_rows(k, k)
    if k == 1:
        a[1] = -1e30
    dlse = np.random.default_rng(2).standard_normal(a.shape[0])
    dlse[7] = np.nan
    ad = a.astype(dtype)
    m, s = lse_cuda.logsumexp_partial(ad)
    _check((m, s), ref.logsumexp_partial, (a,), dtype, "partial")
    lse, cache = lse_cuda.logsumexp_forward(ad)
    _check((lse,), lambda x: ref.logsumexp_forward(x)[0], (a,), dtype, "forward")
    assert lse[0] == -np.inf and np.isnan(lse[3]) and np.isnan(lse[4])
    if k > 1:
        assert lse[2] == np.inf and lse[5] == np.inf
    da = lse_cuda.logsumexp_backward(dlse.astype(dtype), cache)
    _check((da,), lambda d, x, y: ref.logsumexp_backward(d, (x, y)), (dlse, ad, lse), dtype,
           "backward")
    assert (da[0] == 0).all() and np.isnan(da[7]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_chunks_merge_to_forward(host_cuda, dtype):
    """Two chunks (special rows included) merged in both orders equal the reference's merge and
    finalize; the finalized result equals the one-shot forward of the whole row."""
    a = np.concatenate([_special_rows(40, 3), _logits((3, 40), 4)])
    a[9, :20] = -np.inf                           # one chunk all -inf, the other finite
    a1, a2 = a[:, :23], a[:, 23:]
    s1 = lse_cuda.logsumexp_partial(np.ascontiguousarray(a1, dtype=dtype))
    s2 = lse_cuda.logsumexp_partial(np.ascontiguousarray(a2, dtype=dtype))
    for x, y in ((s1, s2), (s2, s1)):
        m, s = lse_cuda.logsumexp_merge(*x, *y)
        _check((m, s), ref.logsumexp_merge, (*x, *y), dtype, "merge")
        lse = lse_cuda.logsumexp_finalize(m, s)
        _check((lse,), ref.logsumexp_finalize, (m, s), dtype, "finalize")
        _check((lse,), lambda v: ref.logsumexp_forward(v)[0], (a,), dtype, "streamed")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (4, 300)])
def test_backward_at_large_lse_within_three_way_of_autograd(host_cuda, shape, dtype):
    """|lse| ~ 500 and 5000: the softmax exp(a - lse64) with the forward's double lse, within the
    plain three-way tolerance of autograd's exp(a - max) / sum (the float32 lse in exp(a - lse)
    cost 3e-5 relative per weight, 5e-4 at 5000: 1.5e-5 errors against a tolerance ~1e-6).
    Float32 inputs (held in float64): the float64 reference sees the same values."""
    rng = np.random.default_rng(shape[1])
    n, k = shape
    offset = np.where(np.arange(n) % 2 == 0, 500.0, -500.0)
    offset[-1] = -5000.0
    a = (rng.standard_normal(shape) * 3 + offset[:, None]).astype(np.float32).astype(np.float64)
    dlse = rng.standard_normal(n).astype(np.float32).astype(np.float64)

    def autograd(d, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return d[:, None] * (e / e.sum(axis=1, keepdims=True))
    lse, cache = lse_cuda.logsumexp_forward(a.astype(dtype))
    da = lse_cuda.logsumexp_backward(dlse.astype(dtype), cache)
    r32, r64 = autograd(dlse.astype(dtype), a.astype(dtype)), autograd(dlse, a)
    # float64: exp(a - lse64) keeps ulp(|lse|) of float64 (1e-13 at 5000) relative per weight
    atol = {np.float32: 1e-6, np.float64: 1e-12}[dtype] * max(1.0, float(np.abs(r64).max()))
    assert da.dtype == dtype
    assert_close3(da, r32 if dtype == np.float32 else r64, r64, atol=atol,
                  name=f"da {np.dtype(dtype).name}")


def test_inputs_read_only_and_empty(host_cuda):
    a = _logits((3, 31), 5).astype(np.float32)
    a_copy = a.copy()
    lse, cache = lse_cuda.logsumexp_forward(a)
    lse_copy = lse.copy()
    d = np.ones(3, np.float32)
    lse_cuda.logsumexp_backward(d, cache)
    np.testing.assert_array_equal(a, a_copy)
    np.testing.assert_array_equal(lse, lse_copy)
    e = np.zeros((0, 5), np.float32)
    assert lse_cuda.logsumexp_forward(e)[0].shape == (0,)
    empty_cache = (e, np.zeros(0, np.float32), np.zeros(0, np.float64))
    assert lse_cuda.logsumexp_backward(np.zeros(0, np.float32), empty_cache).shape == (0, 5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (128, 1000), (128, 5000), (4096, 100)])
def test_gpu_matches_cpu_backend(cp, dtype, shape):
    a = _logits(shape, 11)
    a[0, :] = -np.inf
    if shape[1] > 1:
        a[-1, 3 % shape[1]] = np.nan
    a = a.astype(dtype)
    dlse = np.random.default_rng(12).standard_normal(shape[0]).astype(dtype)
    tol = ATOL[dtype] * max(1.0, float(np.abs(a[np.isfinite(a)]).max()))
    lse, cache = lse_cuda.logsumexp_forward(cp.asarray(a))
    da = lse_cuda.logsumexp_backward(cp.asarray(dlse), cache)
    m, s = lse_cuda.logsumexp_partial(cp.asarray(a))
    c_lse, c_cache = cpu.logsumexp_forward(a)
    c_da = cpu.logsumexp_backward(dlse, c_cache)
    c_m, c_s = cpu.logsumexp_partial(a)
    with np.errstate(all="ignore"):
        r64 = ref.logsumexp_forward(a.astype(np.float64))[0]
    assert isinstance(lse, cp.ndarray) and isinstance(da, cp.ndarray)
    assert_close3(cp.asnumpy(lse), c_lse, r64, atol=tol, name="lse")
    assert_close3(cp.asnumpy(da), c_da, c_da, atol=10 * ATOL[dtype], name="da")
    assert_close3(cp.asnumpy(m), c_m, c_m, atol=0, name="m")
    assert_close3(cp.asnumpy(s), c_s, c_s, atol=10 * ATOL[dtype] * shape[1], name="s")
