"""fastvae.cuda.adam (kernels/adam.cu) against fastvae/_reference.py.

The launcher runs unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants); the gpu-marked test runs it on CuPy arrays.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cuda import adam
from tests.helpers import assert_close3

SIZES = [1, 31, 257, 4099, (41, 101)]
HYPER = dict(lr=3e-2, beta1=0.8, beta2=0.95, eps=1e-6)


def _inputs(shape, seed, steps=3):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2) for _ in range(steps)]
    m = rng.standard_normal(shape) * 0.1          # a state a few steps in: m, v not zero
    v = rng.random(shape) * 0.01 + 1e-8
    return p, m, v, grads


def _run_launcher(p, m, v, grads, dtype, first_step=1, **hyper):
    p, m, v = (np.array(a, dtype=dtype) for a in (p, m, v))   # copies: updated in place
    ids = [a.ctypes.data for a in (p, m, v)]
    for t, g in enumerate(grads, start=first_step):
        assert adam.adam_update(p, np.ascontiguousarray(g, dtype=dtype), m, v, t, **hyper) is None
    assert [a.ctypes.data for a in (p, m, v)] == ids     # updated in place
    return p, m, v


def _run_ref(p, m, v, grads, dtype, first_step=1, **hyper):
    p, m, v = (a.astype(dtype) for a in (p, m, v))
    for t, g in enumerate(grads, start=first_step):
        p, m, v = ref.adam_update(p, g.astype(dtype), m, v, t, **hyper)
    return p, m, v


@pytest.mark.parametrize("shape", SIZES)
def test_float32_matches_reference(host_cuda, shape):
    p, m, v, grads = (x.astype(np.float32) if isinstance(x, np.ndarray) else
                      [g.astype(np.float32) for g in x] for x in _inputs(shape, np.prod(shape)))
    out = _run_launcher(p, m, v, grads, np.float32, first_step=4, **HYPER)
    r32 = _run_ref(p, m, v, grads, np.float32, first_step=4, **HYPER)
    r64 = _run_ref(p, m, v, grads, np.float64, first_step=4, **HYPER)
    for name, o, a, b in zip(("param", "m", "v"), out, r32, r64):
        assert o.dtype == np.float32 and o.shape == np.shape(p)
        assert_close3(o, a, b, atol=1e-7 * max(1.0, np.abs(b).max()), name=name)


@pytest.mark.parametrize("shape", SIZES)
def test_float64_matches_reference(host_cuda, shape):
    p, m, v, grads = _inputs(shape, 1 + np.prod(shape))
    out = _run_launcher(p, m, v, grads, np.float64)
    r64 = _run_ref(p, m, v, grads, np.float64)
    for name, o, b in zip(("param", "m", "v"), out, r64):
        assert o.dtype == np.float64
        assert_close3(o, b, b, atol=1e-15 * max(1.0, np.abs(b).max()), name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_gradients_propagate(host_cuda, dtype):
    p, m, v, (g,) = _inputs(300, 5, steps=1)
    g[[3, 100]] = np.nan
    g[[7, 299]] = [np.inf, -np.inf]
    out = _run_launcher(p, m, v, [g], dtype)
    with np.errstate(invalid="ignore"):
        r64 = _run_ref(p, m, v, [g], np.float64)
    for name, o, b in zip(("param", "m", "v"), out, r64):
        tol = 2e-6 if dtype == np.float32 else 1e-14
        assert_close3(o, b, b, atol=tol * max(1.0, np.abs(b[np.isfinite(b)]).max()), name=name)
    assert np.isnan(out[0][[3, 100, 7, 299]]).all()    # inf/inf in the step -> NaN, as the reference


def test_grad_is_read_only_and_empty_is_a_no_op(host_cuda):
    p, m, v, (g,) = (a.astype(np.float32) if isinstance(a, np.ndarray) else [a[0].astype(np.float32)]
                     for a in _inputs(257, 9, steps=1))
    g_copy = g.copy()
    adam.adam_update(p, g, m, v, 1)
    np.testing.assert_array_equal(g, g_copy)
    e = np.zeros(0, np.float32)
    assert adam.adam_update(e, e.copy(), e.copy(), e.copy(), 1) is None


def test_checks():
    """The launcher asserts its preconditions (fastvae.ops gives the user-facing errors),
    before any kernel is looked up: no harness needed."""
    a = np.ones(8, np.float32)
    with pytest.raises(AssertionError, match="grad is float32 \\(9,\\)"):
        adam.adam_update(a, np.ones(9, np.float32), a.copy(), a.copy(), 1)
    with pytest.raises(AssertionError, match="v is float64"):
        adam.adam_update(a, a.copy(), a.copy(), np.ones(8), 1)
    with pytest.raises(AssertionError, match="m must be C-contiguous"):
        adam.adam_update(a, a.copy(), np.ones(16, np.float32)[::2], a.copy(), 1)
    h = np.ones(8, np.float16)
    with pytest.raises(TypeError, match="float32 or float64 arrays, got float16"):
        adam.adam_update(h, h.copy(), h.copy(), h.copy(), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [1, 4099, 1_000_003])
def test_gpu_matches_reference(cp, dtype, shape):
    p, m, v, grads = _inputs(shape, 3)
    dev = [cp.asarray(a.astype(dtype)) for a in (p, m, v)]
    for t, g in enumerate(grads, start=1):
        adam.adam_update(*dev[:1], cp.asarray(g.astype(dtype)), *dev[1:], t)
    r32 = _run_ref(p, m, v, grads, dtype)
    r64 = _run_ref(p, m, v, grads, np.float64)
    for name, o, a, b in zip(("param", "m", "v"), dev, r32, r64):
        assert isinstance(o, cp.ndarray)
        scale = max(1.0, np.abs(b).max())
        assert_close3(cp.asnumpy(o), a, b, atol=(1e-7 if dtype == np.float32 else 1e-15) * scale,
                      name=name)
