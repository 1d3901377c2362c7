"""fastvae.cpu.adam (fused in-place Adam step) against fastvae/_reference.py."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import adam
from tests.helpers import assert_close3

SIZES = [1, 31, 4099, (257, 31), 200_003]   # 200_003: the parallel chunks, a ragged last chunk


def _run_fast(p, m, v, grads, dtype, **hyper):
    p, m, v = (a.astype(dtype) for a in (p, m, v))
    for t, g in enumerate(grads, start=1):
        assert adam.adam_update(p, g.astype(dtype), m, v, t, **hyper) is None
    return p, m, v


def _run_ref(p, m, v, grads, dtype, **hyper):
    p, m, v = (a.astype(dtype) for a in (p, m, v))
    for t, g in enumerate(grads, start=1):
        p, m, v = ref.adam_update(p, g.astype(dtype), m, v, t, **hyper)
    return p, m, v


def _inputs(shape, rng, steps):
    p = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 2) for _ in range(steps)]
    # start from a state a few steps in, so m and v are not zero
    m = rng.standard_normal(shape) * 0.1
    v = rng.random(shape) * 0.01 + 1e-8
    return p, m, v, grads


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("hyper", [{}, dict(lr=3e-2, beta1=0.5, beta2=0.9, eps=1e-4)])
def test_steps_match_reference(shape, hyper):
    rng = np.random.default_rng(np.prod(shape))
    p, m, v, grads = _inputs(shape, rng, steps=5)
    grads32 = [g.astype(np.float32) for g in grads]     # the same float32 values everywhere
    start32 = [a.astype(np.float32) for a in (p, m, v)]
    out = _run_fast(*start32, grads32, np.float32, **hyper)
    r32 = _run_ref(*start32, grads32, np.float32, **hyper)
    r64 = _run_ref(*start32, grads32, np.float64, **hyper)
    for name, o, a, b in zip(("param", "m", "v"), out, r32, r64):
        assert o.dtype == np.float32 and o.shape == np.shape(p)
        assert_close3(o, a, b, atol=1e-7 * max(1.0, np.abs(b).max()), name=name)
    out = _run_fast(p, m, v, grads, np.float64, **hyper)
    r64 = _run_ref(p, m, v, grads, np.float64, **hyper)
    for name, o, b in zip(("param", "m", "v"), out, r64):
        assert o.dtype == np.float64
        assert_close3(o, b, b, atol=1e-15 * max(1.0, np.abs(b).max()), name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [31, (3, 50, 7), 70_001])
def test_in_place_same_buffers(dtype, shape):
    rng = np.random.default_rng(0)
    p, m, v = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    v = np.abs(v)
    g = rng.standard_normal(shape).astype(dtype)
    before = [(id(a), a.ctypes.data, a.shape) for a in (p, m, v)]
    g_copy = g.copy()
    expected = ref.adam_update(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64),
                               v.astype(np.float64), 3)
    adam.adam_update(p, g, m, v, 3)
    assert [(id(a), a.ctypes.data, a.shape) for a in (p, m, v)] == before
    np.testing.assert_array_equal(g, g_copy)                  # grad is read only
    for a, e in zip((p, m, v), expected):
        np.testing.assert_allclose(a, e, rtol=2e-6 if dtype == np.float32 else 1e-14, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_one_bias_correction(dtype):
    """At t = 1 from m = v = 0 the corrected step is lr * g / (|g| + eps) ~ lr * sign(g)."""
    rng = np.random.default_rng(1)
    g = (rng.standard_normal(1000) * 10.0 ** rng.integers(-3, 3, 1000)).astype(dtype)
    p = np.zeros(1000, dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    adam.adam_update(p, g, m, v, 1, lr=0.01)
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(p, -0.01 * g64 / (np.abs(g64) + 1e-8),
                               rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(m, 0.1 * g64, rtol=1e-6 if dtype == np.float32 else 4e-15)
    np.testing.assert_allclose(v, 0.001 * g64 ** 2, rtol=1e-6 if dtype == np.float32 else 4e-15)


def test_rejects_non_contiguous():
    p = np.zeros((4, 6))[:, ::2]
    with pytest.raises(ValueError):
        adam.adam_update(p, np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 1)


def test_nan_gradient_propagates():
    p, m, v = np.ones(5, np.float32), np.zeros(5, np.float32), np.zeros(5, np.float32)
    g = np.array([1, np.nan, np.inf, -1, 0], np.float32)
    adam.adam_update(p, g, m, v, 1)
    assert np.isnan(p[1]) and np.isnan(m[1]) and np.isnan(p[2]) and np.isfinite(p[[0, 3, 4]]).all()


@pytest.mark.parametrize("launcher", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite(launcher, dtype):
    # The guard before an Adam step: one NaN or +-Inf anywhere (first, middle, last element)
    # must be found; huge and tiny finite values are finite. The CUDA launcher runs its
    # reduction with NumPy here.
    import importlib
    all_finite = importlib.import_module(f"fastvae.{launcher}.adam").all_finite
    rng = np.random.default_rng(9)
    a = (rng.standard_normal(4099) * (np.finfo(dtype).max / 8)).astype(dtype)
    a[::7] = np.finfo(dtype).tiny
    assert all_finite(a) and all_finite(a[:4092].reshape(372, 11)[:1].copy())
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 2048, 4098):
            b = a.copy()
            b[where] = bad
            assert not all_finite(b), (bad, where)
