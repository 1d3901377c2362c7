"""fastvae.cpu._math: the vectorizable scalar helpers against NumPy (in higher precision where
available), special values included. Each helper runs in a compiled loop, as in the kernels."""
import numba
import numpy as np
import pytest

from fastvae.cpu import _math


# Not cached on disk: these loops must always see the current helpers.
@numba.njit(cache=False)
def _apply_float64_helpers(a, e, out):
    for i in range(a.shape[0]):
        out[0, i] = _math.softplus(a[i])
        out[1, i] = _math.sigmoid(a[i])
        out[2, i] = _math.exp_nonpositive(-abs(a[i]))
        out[3, i] = _math.log1p_unit_f64(e[i])


def test_float64_helpers_against_numpy():
    """softplus, sigmoid, exp_nonpositive, log1p_unit_f64 within a few ulp of NumPy; specials
    (+-inf, NaN, underflow to 0, subnormal results) exactly as NumPy."""
    rng = np.random.default_rng(8)
    specials = np.array([0.0, -0.0, 1e-300, -1e-300, 1e-8, 30.0, -30.0, 36.7, -36.7, 708.0,
                         -708.0, 744.0, -744.0, 745.5, -745.5, 746.0, 800.0, -800.0, 1e4, -1e4,
                         np.inf, -np.inf, np.nan])
    a = np.concatenate([rng.standard_normal(20000) * 20, rng.uniform(-750, 750, 20000),
                        np.logspace(-20, 2, 2000), -np.logspace(-20, 2, 2000), specials])
    e = np.exp(-np.abs(a))
    out = np.empty((4, a.size))
    _apply_float64_helpers(a, e, out)
    sig = np.where(a >= 0, 1.0, e) / (1.0 + e)    # stable two-branch sigmoid, NumPy's exp
    with np.errstate(invalid="ignore"):
        expected = (np.logaddexp(0.0, a), sig, e, np.log1p(e))
    tiny = np.finfo(np.float64).tiny
    for name, got, want, ulps in zip(("softplus", "sigmoid", "exp", "log1p"), out, expected,
                                     (4, 6, 2, 2)):
        np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)],
                                      err_msg=name)
        finite = np.isfinite(want)
        err = np.abs(got[finite] - want[finite])
        bound = ulps * np.spacing(np.maximum(np.abs(want[finite]), tiny))
        assert (err <= bound).all(), f"{name}: worst at {a[finite][np.argmax(err / bound)]!r}"


@numba.njit(cache=False)
def _apply_fast_exp(out, x):
    for i in range(x.size):
        out[i] = _math.fast_exp(x[i])


@pytest.mark.parametrize("dtype, lo, hi", [(np.float32, -87.3, 88.0), (np.float64, -708.3, 709.0)])
def test_fast_exp_accuracy(dtype, lo, hi):
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(lo, hi, 400001), rng.uniform(-20, 0, 200000),
                        -np.logspace(-30, 0, 1000), [0.0, -0.0]]).astype(dtype)
    out = np.empty_like(x)
    _apply_fast_exp(out, x)
    exact = np.exp(x.astype(np.longdouble if dtype == np.float64 else np.float64))
    ulps = np.abs(out - exact) / np.spacing(exact.astype(dtype))
    assert ulps.max() <= 1.1, f"max {ulps.max():.2f} ulp at x={x[np.argmax(ulps)]!r}"
    special = np.array([-np.inf, np.nan, np.inf, lo - 0.5, -1e30, hi + 0.5, 1e30], dtype=dtype)
    out = np.empty_like(special)
    _apply_fast_exp(out, special)
    np.testing.assert_array_equal(out, [0.0, np.nan, np.inf, 0.0, 0.0, np.inf, np.inf])


@numba.njit(cache=False)
def _apply_log1p_unit(out, x):
    for i in range(x.size):
        out[i] = _math.log1p_unit(x[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_unit_accuracy(dtype):
    tiny = -40 if dtype == np.float32 else -300
    u = np.concatenate([np.linspace(0, 1, 400001), np.logspace(tiny, 0, 20000)]).astype(dtype)
    out = np.empty_like(u)
    _apply_log1p_unit(out, u)
    exact = np.log1p(u.astype(np.longdouble if dtype == np.float64 else np.float64))
    ulps = np.abs(out - exact) / np.spacing(np.maximum(exact, np.finfo(dtype).tiny).astype(dtype))
    assert ulps.max() <= 2.0, f"max {ulps.max():.2f} ulp at u={u[np.argmax(ulps)]!r}"
    out = np.empty(1, dtype)
    _apply_log1p_unit(out, np.array([np.nan], dtype))
    assert np.isnan(out[0])


@numba.njit(cache=False)
def _apply_exp_f32_via_f64(out, x):
    for i in range(x.size):
        out[i] = _math.exp_f32_via_f64(x[i])


def test_exp_f32_via_f64_accuracy():
    """Within 0.6 float32 ulp of exp in float64 over the whole float32 range, subnormal results
    included; overflow to +inf, underflow to 0, NaN -> NaN."""
    x = np.concatenate([np.linspace(-104, 89, 400001),
                        [-np.inf, np.inf, np.nan, -1e30, 1e30]]).astype(np.float32)
    out = np.empty_like(x)
    _apply_exp_f32_via_f64(out, x)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        want = exact.astype(np.float32)
    np.testing.assert_array_equal(out[-5:], [0.0, np.inf, np.nan, 0.0, np.inf])
    finite = np.isfinite(want)
    np.testing.assert_array_equal(out[~finite & np.isfinite(x)], want[~finite & np.isfinite(x)])
    ulps = np.abs(out[finite] - exact[finite]) / np.spacing(want[finite])
    assert ulps.max() <= 0.6, f"max {ulps.max():.2f} ulp at x={x[finite][np.argmax(ulps)]!r}"
