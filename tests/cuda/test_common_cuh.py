"""kernels/common.cuh helpers (Philox, uniforms, normals, softplus/sigmoid, block reductions) on the
CPU via the host harness, through the test kernels of tests/cuda/kernels/check_common.cu, against
fastvae/_reference.py. Philox words and uniforms must be bit-identical; normals agree to rounding.
"""
import pathlib

import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cuda import _module
from tests.cuda.conftest import HOST_UNAVAILABLE
from tests.cuda_host.cuda_host import ORDERS, HostModule, thread_order
from tests.helpers import assert_close3
from tests.test_random import BIG, KAT, SEED   # Random123 kat_vectors, "philox4x32 10"

CHECK_CU = pathlib.Path(__file__).resolve().parent / "kernels" / "check_common.cu"
pytestmark = pytest.mark.skipif(HOST_UNAVAILABLE is not None, reason=str(HOST_UNAVAILABLE))



@pytest.fixture(scope="module")
def mod():
    return HostModule(CHECK_CU, options=_module.OPTIONS)


def _grid(n, block=64):
    return (min(-(-n // block), 5),), (block,)


def test_philox_known_answers_and_random_counters(mod):
    k = mod.get_function("philox_check")
    for ctr, key, expected in KAT:
        out = np.zeros(4, np.uint32)
        k((1,), (32,), (out, np.array(ctr, np.uint32), np.uint32(key[0]), np.uint32(key[1]),
                        np.int32(1)))
        assert out.tolist() == expected
    ctr = np.random.default_rng(0).integers(0, 2 ** 32, (100, 4), dtype=np.uint64).astype(np.uint32)
    out = np.zeros_like(ctr)
    k(*_grid(100), (out, ctr, np.uint32(0x9ABCDEF0), np.uint32(0x12345678), np.int32(100)))
    np.testing.assert_array_equal(out, ref.philox4x32_10(ctr, ref.seed_to_key(SEED)))


def test_uniforms_bit_identical(mod):
    words = np.array([0, 1, 0x1FF, 0x200, 0x7FFFFFFF, 0x80000000, 0xFFFFFE00, 0xFFFFFFFF]
                     + list(np.random.default_rng(1).integers(0, 2 ** 32, 200)), np.uint32)
    out = np.zeros(words.size, np.float32)
    mod.get_function("uniform_check")(*_grid(words.size), (out, words, np.int32(words.size)))
    np.testing.assert_array_equal(out, ref.uniform_from_bits(words, np.float32))
    assert 0 < out.min() and out.max() < 1


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("n,offset", [(1, 0), (31, 3), (257, 0), (4099, BIG)])
def test_normals_match_reference(mod, order, n, offset):
    key = ref.seed_to_key(SEED)
    r64 = ref.normal(n, SEED, offset, np.float64)
    r32 = ref.normal(n, SEED, offset, np.float32)
    for dtype, suffix in ((np.float32, "f32"), (np.float64, "f64")):
        z = np.full(n, np.nan, dtype)
        with thread_order(order):
            mod.get_function(f"normal_check_{suffix}")(
                *_grid(n), (z, np.uint32(key[0]), np.uint32(key[1]), np.int64(offset), np.int64(n)))
        if dtype == np.float32:   # sincospif has an exact argument: closer to ref64 than ref32 is
            assert_close3(z, r32, r64, atol=1e-6, name="normal f32")
        else:
            assert_close3(z, r64, r64, atol=1e-13, name="normal f64")


def test_softplus_sigmoid_match_reference(mod):
    a = np.concatenate([np.random.default_rng(2).standard_normal(300) * 20,
                        [0.0, -0.0, 1e4, -1e4, 88.0, -88.0, 710.0, -745.0, np.inf, -np.inf, np.nan]])
    for dtype, suffix in ((np.float32, "f32"), (np.float64, "f64")):
        x = a.astype(dtype)
        sp, sg = np.full_like(x, 7.0), np.full_like(x, 7.0)
        mod.get_function(f"activations_check_{suffix}")(*_grid(x.size), (sp, sg, x, np.int32(x.size)))
        with np.errstate(over="ignore", invalid="ignore"):
            refs = [(f(x), f(x.astype(np.float64))) for f in (ref._softplus, ref._sigmoid)]
        atol = 1e-6 if dtype == np.float32 else 1e-14
        for name, out, (r32, r64) in zip(("softplus", "sigmoid"), (sp, sg), refs):
            scale = max(1.0, np.abs(r64[np.isfinite(r64)]).max())
            assert_close3(out, r64 if dtype == np.float64 else r32, r64, atol=atol * scale,
                          name=f"{name} {suffix}")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block", [32, 256])
@pytest.mark.parametrize("dtype,suffix", [(np.float32, "f32"), (np.float64, "f64")])
def test_block_reductions(mod, order, block, dtype, suffix):
    rng = np.random.default_rng(block)
    x = rng.standard_normal((6, 1000)).astype(dtype)
    x[1, :] = -np.inf               # all -inf row: max -inf, sum -inf
    x[2, 17] = np.nan               # NaN propagates through sum and max
    x[3, :3] = 1e30
    x[4, :] = 7.0                   # all equal
    scale = np.abs(np.where(np.isfinite(x), x, 0)).astype(np.float64).sum(axis=1, keepdims=True)
    eps = 1e-6 if dtype == np.float32 else 1e-14   # float32 partial sums: error ~ eps32 * sum|x|
    sums, maxs, bad = np.zeros(6, dtype), np.zeros(6, dtype), np.zeros(1, np.int32)
    with thread_order(order):
        mod.get_function(f"row_reduce_check_{suffix}")(
            (6,), (block,), (sums, maxs, bad, x, np.int32(6), np.int32(1000)))
    assert bad[0] == 0, "threads of a block disagree on the reduction"
    with np.errstate(invalid="ignore"):
        r64 = x.astype(np.float64).sum(axis=1)
        bad_sums = ~np.where(np.isfinite(r64), np.abs(sums - r64) <= eps * scale[:, 0],
                             (sums == r64) | (np.isnan(sums) & np.isnan(r64)))
    assert not bad_sums.any(), (sums, r64)
    np.testing.assert_array_equal(maxs, x.max(axis=1))   # NaN row -> NaN (np.max propagates)
