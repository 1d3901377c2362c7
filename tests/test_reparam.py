"""fastvae.cpu.reparam against fastvae/_reference.py: given and generated noise, forward and
backward, logvar at +-30, NaN/Inf, finite differences of the reference backward, and the
regenerated noise of the backward."""
import numpy as np
import pytest

import fastvae.random as frandom
from fastvae import _reference as ref
from fastvae.cpu import reparam
from tests.helpers import assert_close3, check_backward

# serial and parallel paths (parallel from 2^15 elements), L = 20 as in the VAE, odd sizes
SHAPES = [(1, 1), (31, 257), (257, 31), (4099, 7), (128, 20), (2049, 33)]
SEED = 987654321987


def inputs(shape, rng, lv_scale=2.0):
    """mu, logvar, dz (N, L) float64; logvar spread over [-lv_scale, lv_scale] * N(0, 1)."""
    return (rng.standard_normal(shape), lv_scale * rng.standard_normal(shape),
            rng.standard_normal(shape))


def run_fast(mu, logvar, dz, eps=None, offset=0):
    z, cache = reparam.reparam_forward(mu, logvar, eps=eps, seed=None if eps is not None
                                       else SEED, offset=offset)
    return (z,) + reparam.reparam_backward(dz, cache)


def run_ref(mu, logvar, dz, eps):
    z, cache = ref.reparam_forward(mu, logvar, eps)
    return (z,) + ref.reparam_backward(dz, cache)


def check_all(mu, logvar, dz, eps=None, offset=0, rtol32=1e-6, rtol64=1e-13, name="reparam"):
    """Three-way check of (z, dmu, dlogvar) in float32 and float64. With eps None the kernels
    generate the noise; the reference gets fastvae/_reference.py::normal of the same stream in
    its own dtype (float64 truth; float32 for ref32)."""
    shape = mu.shape
    r64 = run_ref(mu, logvar, dz, eps if eps is not None else
                  ref.normal(shape, SEED, offset, np.float64))
    scale = max(1.0, max(float(np.max(np.abs(r[np.isfinite(r)]), initial=0)) for r in r64))
    for dtype, rtol in ((np.float32, rtol32), (np.float64, rtol64)):
        cast = [a.astype(dtype) for a in (mu, logvar, dz)]
        e = eps.astype(dtype) if eps is not None else None
        out = run_fast(*cast, eps=e, offset=offset)
        r32 = r64 if dtype == np.float64 else run_ref(
            *cast, e if e is not None else ref.normal(shape, SEED, offset, np.float32))
        for o, a, b, what in zip(out, r32, r64, ("z", "dmu", "dlogvar")):
            assert o.dtype == dtype and o.shape == shape
            assert_close3(o, a, b, atol=rtol * scale, name=f"{name} {what} {np.dtype(dtype)}")


@pytest.mark.parametrize("shape", SHAPES)
def test_given_noise_matches_reference(shape):
    rng = np.random.default_rng(1)
    mu, logvar, dz = inputs(shape, rng)
    check_all(mu, logvar, dz, eps=rng.standard_normal(shape), name="given eps")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0, 3, 4 * 2 ** 32 - 2])
def test_generated_noise_matches_reference(shape, offset):
    mu, logvar, dz = inputs(shape, np.random.default_rng(2))
    check_all(mu, logvar, dz, offset=offset, name="generated eps")


@pytest.mark.parametrize("shape", [(31, 257), (2049, 33)])
@pytest.mark.parametrize("generated", [False, True])
def test_logvar_extremes(shape, generated):
    """logvar at exactly +-30 and spread over [-30, 30]: sigma from 3e-7 to 3e6."""
    rng = np.random.default_rng(3)
    mu, _, dz = inputs(shape, rng)
    logvar = rng.uniform(-30, 30, shape)
    pick = rng.random(shape)
    logvar[pick < 0.2] = 30.0
    logvar[pick > 0.8] = -30.0
    check_all(mu, logvar, dz, eps=None if generated else rng.standard_normal(shape),
              name="logvar +-30")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(31, 257), (2049, 33)])
def test_generated_noise_is_fastvae_random_normal(dtype, shape):
    """eps None == eps = fastvae.random.normal((N, L), seed, offset) bit for bit, forward and
    backward; the cache keeps (seed, offset), not the noise."""
    mu, logvar, dz = (a.astype(dtype) for a in inputs(shape, np.random.default_rng(4)))
    for offset in (0, 1, 4099):
        eps = frandom.normal(shape, SEED, offset, dtype)
        z_gen, cache_gen = reparam.reparam_forward(mu, logvar, seed=SEED, offset=offset)
        z_eps, cache_eps = reparam.reparam_forward(mu, logvar, eps)
        assert cache_gen.eps is None and (cache_gen.seed, cache_gen.offset) == (SEED, offset)
        assert cache_eps.eps is eps
        np.testing.assert_array_equal(z_gen, z_eps)
        for got, want in zip(reparam.reparam_backward(dz, cache_gen),
                             reparam.reparam_backward(dz, cache_eps)):
            np.testing.assert_array_equal(got, want)


def test_backward_returns_new_arrays():
    mu, logvar, dz = inputs((31, 257), np.random.default_rng(5))
    for eps in (None, np.random.default_rng(6).standard_normal(mu.shape)):
        z, cache = reparam.reparam_forward(mu, logvar, eps, seed=SEED)
        dz_before = dz.copy()
        dmu, dlogvar = reparam.reparam_backward(dz, cache)
        np.testing.assert_array_equal(dmu, dz)
        assert not np.shares_memory(dmu, dz) and not np.shares_memory(dlogvar, dz)
        np.testing.assert_array_equal(dz, dz_before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("generated", [False, True])
def test_nonfinite_inputs_propagate(generated):
    """NaN in mu, logvar, dz or eps -> NaN where the reference has NaN; logvar = +inf -> +-inf,
    logvar = -inf -> z = mu, dlogvar = 0 (all exactly as the reference, checked by
    assert_close3's placement check)."""
    shape = (257, 31)
    rng = np.random.default_rng(7)
    mu, logvar, dz = inputs(shape, rng)
    eps = None if generated else rng.standard_normal(shape)
    flat = [a.reshape(-1) for a in (mu, logvar, dz) + (() if generated else (eps,))]
    for a, value in zip(flat * 2, [np.nan] * len(flat) + [np.inf, -np.inf]):
        a[rng.integers(0, a.size, 40)] = value
    logvar.reshape(-1)[rng.integers(0, logvar.size, 40)] = np.inf
    logvar.reshape(-1)[rng.integers(0, logvar.size, 40)] = -np.inf
    check_all(mu, logvar, dz, eps=eps, name="nonfinite")


def test_reference_backward_finite_differences():
    rng = np.random.default_rng(8)
    for shape in [(1, 1), (7, 5), (31, 20)]:
        mu, logvar = rng.standard_normal(shape), rng.standard_normal(shape)
        eps = rng.standard_normal(shape)
        check_backward(lambda m, lv: ref.reparam_forward(m, lv, eps), ref.reparam_backward,
                       [mu, logvar], wrt=[0, 1], rng=rng)


def test_exp_f32_accuracy():
    """The float32 exp of the kernels against float64 over its whole range, inf/0/NaN ends."""
    x = np.concatenate([np.random.default_rng(9).uniform(-110, 90, 200_000),
                        [-np.inf, -1000, -104, -103.9, -87.5, 0, 1e-30, 88.7, 88.73, 1000, np.inf,
                         np.nan]]).astype(np.float32)
    half = np.float32(2.0)                                   # z = 0 + exp(2 * x / 2) * 1
    z, _ = reparam.reparam_forward(np.zeros_like(x)[None], (half * x)[None],
                                   np.ones_like(x)[None])
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64))
    finite = np.isfinite(want) & (want < np.finfo(np.float32).max)
    ulp = np.spacing(want[finite].astype(np.float32))
    assert np.max(np.abs(z[0][finite] - want[finite]) / ulp) <= 1.0
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(z[0][~finite], want[~finite].astype(np.float32))
