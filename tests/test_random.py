"""fastvae.random and fastvae.cpu.random: Philox4x32-10 known answers, bit-exactness against
fastvae/_reference.py, the normals' accuracy and statistics, stream layout (offsets, seeds),
and argument errors."""
import numpy as np
import pytest
from scipy import stats

import fastvae.random as frandom
from fastvae import _reference as ref
from fastvae.cpu import random as crandom
from tests.helpers import assert_close3

# Random123's known-answer vectors: tests/kat_vectors of github.com/DEShawResearch/random123,
# the three "philox4x32 10" lines, each "counter[4] key[2]   output[4]" in hex:
#   00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
#   ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
#   243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
KAT = [
    ([0x00000000] * 4, [0x00000000] * 2, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
SEED = 0x1234_5678_9ABC_DEF0
BIG = 4 * 2 ** 32 - 6   # global index whose blocks cross b = 2^32 (counter word 1 goes 0 -> 1)


def ref_uniform(n, seed, offset, dtype):
    first, last = offset // 4, (offset + n + 3) // 4
    bits = ref.philox_blocks(last - first, seed, first).reshape(-1)
    return ref.uniform_from_bits(bits, dtype)[offset - 4 * first:][:n]


# ---------------------------------------------------------------------------------------------
# Philox
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(counter, key, expected):
    c, k = np.array(counter, np.uint32), np.array(key, np.uint32)
    want = np.array(expected, np.uint32)
    np.testing.assert_array_equal(frandom.philox4x32_10(c, k), want)
    np.testing.assert_array_equal(crandom.philox4x32_10(c[None], k)[0], want)
    np.testing.assert_array_equal(ref.philox4x32_10(c, k), want)


def test_philox_matches_reference_bit_for_bit():
    rng = np.random.default_rng(10)
    counters = rng.integers(0, 2 ** 32, size=(3, 331, 4), dtype=np.uint32)
    for _ in range(5):
        key = rng.integers(0, 2 ** 32, size=2, dtype=np.uint32)
        out = frandom.philox4x32_10(counters, key)
        assert out.dtype == np.uint32 and out.shape == counters.shape
        np.testing.assert_array_equal(out, ref.philox4x32_10(counters, key))
    # python ints and int64 arrays in range are accepted
    np.testing.assert_array_equal(frandom.philox4x32_10([[1, 2, 3, 4]], [5, 6]),
                                  ref.philox4x32_10(np.array([[1, 2, 3, 4]]), np.array([5, 6])))


@pytest.mark.parametrize("seed", [0, 1, SEED, 2 ** 64 - 1])
@pytest.mark.parametrize("offset", [0, 3, BIG])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_matches_reference_bit_for_bit(seed, offset, dtype):
    for n in (1, 5, 4099):
        out = frandom.uniform(n, seed, offset, dtype)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, ref_uniform(n, seed, offset, dtype))


def test_uniform_from_bits_edges():
    """((bits >> 9) + 0.5) 2^-23 is exact in float32: every word maps to (2k + 1) 2^-24, the
    smallest 2^-24 and the largest 1 - 2^-24, exactly as the reference."""
    words = [0, 1, 0xFF, 0x100, 0x1FF, 0x7FFFFF00, 0x7FFFFFFF, 0x80000000, 0x80000100,
             0x80000200, 0xFFFFFE00, 0xFFFFFEFF, 0xFFFFFF00, 0xFFFFFFFF]
    got = np.array([crandom.uniform_from_bits(np.uint32(w)) for w in words], np.float32)
    np.testing.assert_array_equal(got, ref.uniform_from_bits(np.array(words, np.uint32)))
    assert got[0] == 2.0 ** -24 and got[-1] == 1 - 2.0 ** -24
    k = np.array(words, np.uint64) >> np.uint64(9)
    np.testing.assert_array_equal(got.astype(np.float64), (2.0 * k + 1) * 2.0 ** -24)


# ---------------------------------------------------------------------------------------------
# normals against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 1001, BIG])
@pytest.mark.parametrize("n", [1, 7, 4099, 70001])    # 70001: the parallel path
def test_normal_matches_reference(n, offset):
    ref64 = ref.normal(n, SEED, offset, np.float64)
    ref32 = ref.normal(n, SEED, offset, np.float32)
    out64 = frandom.normal(n, SEED, offset, np.float64)
    np.testing.assert_allclose(out64, ref64, rtol=1e-14, atol=1e-14)
    out32 = frandom.normal(n, SEED, offset, np.float32)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    assert_close3(out32, ref32, ref64, atol=1e-7, name="normal float32")
    # tighter than the three-way bound: the float32 math is within ~3 ulp (max seen 4.4e-7 abs)
    assert np.all(np.abs(out32 - ref64) <= 1e-7 + 2.5e-7 * np.maximum(1.0, np.abs(ref64)))
    # and the reference's own float32 path (libm-like sincosf of a rounded 2 pi u) is ~1.6e-6 away
    assert np.all(np.abs(out32 - ref32) <= 3e-6)


def test_box_muller_over_the_uniform_grid():
    """Every 61st of the 2^24 uniform values (and both ends) through the float32 log/sincos,
    against float64 Box-Muller of the same float32 uniforms."""
    top = np.concatenate([np.arange(0, 2 ** 24, 61), [1, 2, 2 ** 23 - 1, 2 ** 23, 2 ** 24 - 2,
                                                      2 ** 24 - 1]]).astype(np.uint32)
    w = np.ascontiguousarray(np.stack([top << 8, top[::-1] << 8, (top << 8) | 0xFF,
                                       top[::-1] << 8 | 0x80]))
    z = np.empty(4 * w.shape[1], np.float32)
    crandom.box_muller_kernel(z, w, w.shape[1])
    u = ref.uniform_from_bits(w).astype(np.float64)
    r01, r23 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    t01, t23 = 2 * np.pi * u[1], 2 * np.pi * u[3]
    want = np.stack([r01 * np.cos(t01), r01 * np.sin(t01), r23 * np.cos(t23),
                     r23 * np.sin(t23)], axis=-1).reshape(-1)
    assert np.all(np.abs(z - want) <= 1e-7 + 2.5e-7 * np.maximum(1.0, np.abs(want)))
    assert np.all(np.isfinite(z))


def test_normal_at_matches_normal():
    k0, k1 = crandom.kernel_key(SEED)
    for offset in (0, 5, BIG):
        z = frandom.normal(11, SEED, offset)
        got = [crandom.normal_at(k0, k1, np.int64(offset + j)) for j in range(11)]
        np.testing.assert_array_equal(np.array(got, np.float32), z)


# ---------------------------------------------------------------------------------------------
# statistics (fixed seeds, so deterministic; bounds are ~5 standard errors)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normal_statistics(dtype):
    n = 10 ** 6
    z = frandom.normal(n, 2024, 0, dtype).astype(np.float64)
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    for lane in range(4):                        # each Box-Muller output on its own
        zl = z[lane::4]
        assert abs(zl.mean()) < 5 / np.sqrt(zl.size)
        assert abs(zl.var() - 1) < 5 * np.sqrt(2 / zl.size)
    for lag in (1, 2, 4):                         # lanes of a block and neighbouring blocks
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_uniform_statistics(dtype):
    n = 10 ** 6
    u = frandom.uniform(n, 7, 0, dtype)
    assert u.min() > 0
    assert u.max() < 1                           # open interval in both dtypes
    u = u.astype(np.float64)
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / n)
    assert stats.kstest(u, "uniform").pvalue > 1e-4


# ---------------------------------------------------------------------------------------------
# stream layout: determinism, offsets, disjoint streams, shapes
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_numbers():
    np.testing.assert_array_equal(frandom.normal((31, 257), 5), frandom.normal((31, 257), 5))
    assert not np.array_equal(frandom.normal(100, 5), frandom.normal(100, 6))


@pytest.mark.parametrize("start", [0, BIG])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_offset_continues_the_stream(start, dtype):
    whole = frandom.normal(24, SEED, start, dtype)
    for k in range(8):
        for n in (1, 3, 4, 7, 24 - k):
            np.testing.assert_array_equal(frandom.normal(n, SEED, start + k, dtype),
                                          whole[k:k + n])
    uwhole = frandom.uniform(24, SEED, start, dtype)
    for k in range(8):
        np.testing.assert_array_equal(frandom.uniform(9, SEED, start + k, dtype),
                                      uwhole[k:k + 9])


def test_offset_continues_across_parallel_pieces():
    """Long draws (parallel path, piece boundaries inside blocks) at every lane offset."""
    n = crandom.PARALLEL_MIN_NORMALS + 3 * crandom.PARALLEL_PIECE + 17
    whole = frandom.normal(n + 3, SEED)
    for k in range(4):
        np.testing.assert_array_equal(frandom.normal(n, SEED, k), whole[k:k + n])
    # a draw split in two parts at an odd place equals the one-piece draw
    m = n // 2 + 1
    np.testing.assert_array_equal(np.concatenate([frandom.normal(m, SEED),
                                                  frandom.normal(n - m, SEED, m)]), whole[:n])


def test_shape_is_c_order_over_the_flat_stream():
    np.testing.assert_array_equal(frandom.normal((31, 7, 3), 9), frandom.normal(651, 9)
                                  .reshape(31, 7, 3))
    assert frandom.normal((), 9).shape == ()
    assert frandom.normal(0, 9).shape == (0,)
    assert frandom.normal((3, 0), 9).shape == (3, 0)
    assert frandom.normal(np.int64(5), np.uint64(9), np.int32(2)).shape == (5,)


def test_disjoint_streams_do_not_overlap():
    """Float64 normals: a chance collision between 10^5 and 10^5 values is ~1e-6 likely."""
    n = 10 ** 5
    a = frandom.normal(n, 1, 0, np.float64)
    for other in (frandom.normal(n, 2, 0, np.float64),          # another seed
                  frandom.normal(n, 1, n, np.float64),          # the next part of the stream
                  frandom.normal(n, 1 + 2 ** 32, 0, np.float64),  # same low key word
                  frandom.normal(n, 1, BIG, np.float64)):
        assert np.intersect1d(a, other).size == 0
    assert np.unique(a).size == n


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counters, key, error, match", [
    (np.zeros((2, 4)), [0, 0], TypeError, "counters must be an integer array"),
    ([[1, 2, 3, -1]], [0, 0], TypeError, r"values in \[0, 2\*\*32\)"),
    ([[1, 2, 3, 2 ** 32]], [0, 0], TypeError, r"values in \[0, 2\*\*32\)"),
    (np.zeros((2, 4), bool), [0, 0], TypeError, "counters must be an integer array"),
    (np.zeros((2, 4), np.uint32), [0.5, 1.0], TypeError, "key must be an integer array"),
    (np.zeros((2, 4), np.uint32), [-1, 0], TypeError, "key must hold values"),
    (np.zeros((2, 3), np.uint32), [0, 0], ValueError, r"counters must have shape \(\.\.\., 4\)"),
    (np.uint32(5), [0, 0], ValueError, r"counters must have shape \(\.\.\., 4\)"),
    (np.zeros(4, np.uint32), [0, 0, 0], ValueError, r"key must have shape \(2,\)"),
    (np.zeros(4, np.uint32), [[0, 0]], ValueError, r"key must have shape \(2,\)"),
])
def test_philox_argument_errors(counters, key, error, match):
    with pytest.raises(error, match=match):
        frandom.philox4x32_10(counters, key)


@pytest.mark.parametrize("fn", [frandom.normal, frandom.uniform])
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=(3, -1), seed=0), ValueError, "shape entries must be non-negative"),
    (dict(shape=2.5, seed=0), TypeError, "shape entries must be an integer"),
    (dict(shape=3, seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"),
    (dict(shape=3, seed=2 ** 64), ValueError, r"seed must be in \[0, 2\*\*64\)"),
    (dict(shape=3, seed=1.0), TypeError, "seed must be an integer"),
    (dict(shape=3, seed=True), TypeError, "seed must be an integer"),
    (dict(shape=3, seed=0, offset=-4), ValueError, "offset must be non-negative"),
    (dict(shape=3, seed=0, offset=2 ** 62), ValueError, "offset \\+ size must be below 2\\*\\*62"),
    (dict(shape=3, seed=0, offset="1"), TypeError, "offset must be an integer"),
    (dict(shape=3, seed=0, dtype=np.float16), ValueError, "dtype must be float32 or float64"),
    (dict(shape=3, seed=0, dtype=np.int32), ValueError, "dtype must be float32 or float64"),
    (dict(shape=3, seed=0, dtype="nonsense"), ValueError, "dtype must be float32 or float64"),
])
def test_stream_argument_errors(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(**kwargs)


def test_device_argument():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        frandom.normal(3, 1, device="tpu")
    try:
        import cupy
        has_gpu = cupy.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        with pytest.raises(RuntimeError, match="device='cuda' needs"):
            frandom.uniform(3, 1, device="cuda")
