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


@pytest.mark.parametrize("launcher", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_abs_sum(launcher, dtype):
    # The gradient guard of a training step: sum |g| in float64, NaN/Inf if any element is.
    import importlib
    abs_sum = importlib.import_module(f"fastvae.{launcher}.adam").abs_sum
    rng = np.random.default_rng(11)
    a = (rng.standard_normal(4099) * 10.0 ** rng.integers(-30, 30, 4099)).astype(dtype)
    expected = np.abs(a.astype(np.float64)).sum()
    assert abs_sum(a) == pytest.approx(expected, rel=1e-12)
    big = np.full(7, np.finfo(dtype).max, dtype)      # the sum overflows dtype, not float64
    assert abs_sum(big) == pytest.approx(7 * float(np.finfo(dtype).max), rel=1e-12)
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 2048, 4098):
            b = a.copy()
            b[where] = bad
            assert not np.isfinite(abs_sum(b)), (bad, where)


def _overflow_cases(dtype):
    """(lr, grad scale) pairs from harmless to overflowing params (huge lr) or v (g^2)."""
    big_g = np.sqrt(np.finfo(dtype).max) * 4          # g finite, g^2 overflows dtype
    return [(1e-3, 1.0), (1e-3, 1e4), (1e30, 1.0), (1e39, 1.0), (1e300, 1.0), (1e-3, big_g)]


@pytest.mark.parametrize("launcher", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_stays_finite_predicts_the_update(launcher, dtype):
    # The read-only check must say whether the update it is given leaves param, m and v finite:
    # run the update on copies and compare. It may refuse where g^2 overflows though the update
    # would fit (conservative), never the other way. The CUDA launcher's check runs on NumPy.
    import importlib
    mod = importlib.import_module(f"fastvae.{launcher}.adam")
    rng = np.random.default_rng(12)
    for lr, scale in _overflow_cases(dtype):
        if dtype == np.float64 and lr == 1e39:
            lr = 1e300
        p, m, v, _ = _inputs(4099, rng, 0)
        p, m, v = (a.astype(dtype) for a in (p, m, v))
        g = (rng.standard_normal(4099) * scale).astype(dtype)
        predicted = mod.adam_stays_finite(p, g, m, v, 3, lr=lr)
        p2, m2, v2 = p.copy(), m.copy(), v.copy()
        with np.errstate(over="ignore", invalid="ignore"):
            adam.adam_update(p2, g, m2, v2, 3, lr=lr)
        landed = all(np.isfinite(a).all() for a in (p2, m2, v2))
        with np.errstate(over="ignore"):
            g_squared_overflows = not np.isfinite(g * g).all()
        assert predicted == (landed and not g_squared_overflows), (lr, scale)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_update_never_lands_a_non_finite_step(dtype):
    # fastvae.optim.Adam.update proves most steps finite from running bounds and checks the rest
    # exactly: over lr and gradient scales from ordinary to overflowing, an update either lands
    # with everything finite, or returns False leaving params, m, v and step bit for bit.
    from fastvae.model import VAE
    from fastvae.optim import Adam
    model = VAE(13, (7,), 3, dtype=dtype, seed=1)
    opt = Adam(model.params.flat)
    rng = np.random.default_rng(13)
    refused = 0
    for lr, scale in _overflow_cases(np.dtype(dtype)) * 3:
        opt.lr = lr
        g = (rng.standard_normal(model.n_params) * scale).astype(dtype)
        before = [a.copy() for a in (model.params.flat, opt.m, opt.v)], opt.step
        if opt.update(g):
            assert all(np.isfinite(a).all() for a in (model.params.flat, opt.m, opt.v))
            assert opt.step == before[1] + 1
        else:
            refused += 1
            for saved, a in zip(before[0], (model.params.flat, opt.m, opt.v)):
                np.testing.assert_array_equal(a, saved)
            assert opt.step == before[1]
    assert refused >= 3          # the overflowing cases were refused


def test_ordinary_steps_skip_the_exact_check(monkeypatch):
    # The bound path must hold in ordinary training (else every step pays the exact check).
    from fastvae.cpu import adam as cpu_adam
    from fastvae.model import VAE
    calls = []
    exact = cpu_adam.adam_stays_finite
    monkeypatch.setattr(cpu_adam, "adam_stays_finite", lambda *a: calls.append(1) or exact(*a))
    x = (np.random.default_rng(14).random((64, 13)) < 0.4).astype(np.float32)
    model = VAE(13, (7,), 3, seed=2)
    model.fit(x, epochs=3, batch_size=8, lr=1e-2, progress=False)
    assert model.optimizer_state.step == 24 and calls == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_moments_are_flushed_to_zero(dtype):
    # m decays as b1^t where the gradient is 0: kept subnormal, every later step ran 48x slower
    # (31.7 ms against 0.66 ms at 652,824 float32 with a third subnormal). Flushed moments
    # change the parameter by less than lr * tiny / eps; NaN still propagates.
    rng = np.random.default_rng(8)
    n, tiny = 1001, np.finfo(dtype).tiny
    param = rng.uniform(-2, 2, n).astype(dtype)
    grad = rng.uniform(-1, 1, n).astype(dtype)
    m = rng.uniform(-1e-3, 1e-3, n).astype(dtype)
    v = rng.uniform(1e-7, 1e-5, n).astype(dtype)
    grad[::3], m[::3], v[::3] = 0, tiny * 0.6, tiny * 0.3   # subnormal moments, no gradient
    m[1::7] = tiny * 1.05                                    # decays below tiny this step
    grad[1::7] = 0
    want = ref.adam_update(param.astype(np.float64), grad.astype(np.float64),
                           m.astype(np.float64), v.astype(np.float64), 4)
    adam.adam_update(param, grad, m, v, 4)
    flushed = np.zeros(n, bool)
    flushed[::3] = flushed[1::7] = True
    assert (m[flushed] == 0).all() and (v[::3] == 0).all()
    assert (np.abs(m[~flushed]) >= tiny).all()
    assert_close3(param, want[0].astype(dtype), want[0], name="param")
    grad[5] = np.nan
    adam.adam_update(param, grad, m, v, 5)
    assert np.isnan(m[5]) and np.isnan(v[5]) and np.isnan(param[5])
