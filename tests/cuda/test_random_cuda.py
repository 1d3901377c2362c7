"""fastvae.cuda.random (kernels/random.cu) against fastvae/_reference.py.

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants; ``ARRAY_MODULE`` set to NumPy since no input
array says where outputs live); the gpu-marked test runs them on the device against the CPU
backend. Philox words and uniforms must be bit-identical; normals agree to rounding.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cuda import random as crandom
from tests.helpers import assert_close3
from tests.test_random import BIG, KAT, SEED   # Random123 kat_vectors, "philox4x32 10"

# (shape, offset): offsets at every lane, partial first/last blocks, a single element
CASES = [((1,), 0), ((1, 1), 3), ((3, 31), 1), ((5, 257), 2), ((2, 1100), BIG), ((7,), 5)]


@pytest.fixture
def host(host_cuda, monkeypatch):
    monkeypatch.setattr(crandom, "ARRAY_MODULE", np)
    return host_cuda


def ref_uniform(shape, seed, offset, dtype):
    n = int(np.prod(shape))
    first, last = offset // 4, (offset + n + 3) // 4
    bits = ref.philox_blocks(last - first, seed, first).reshape(-1)
    return ref.uniform_from_bits(bits, dtype)[offset - 4 * first:][:n].reshape(shape)


def test_philox_known_answers_and_random_counters(host):
    for ctr, key, expected in KAT:
        out = crandom.philox4x32_10(np.array(ctr, np.uint32), np.array(key, np.uint32))
        assert out.dtype == np.uint32 and out.tolist() == expected
    rng = np.random.default_rng(0)
    ctr = rng.integers(0, 2 ** 32, (3, 37, 4), dtype=np.uint32)
    key = rng.integers(0, 2 ** 32, 2, dtype=np.uint32)
    out = crandom.philox4x32_10(ctr, key)
    assert out.shape == ctr.shape
    np.testing.assert_array_equal(out, ref.philox4x32_10(ctr, key))
    assert crandom.philox4x32_10(np.zeros((0, 4), np.uint32), key).shape == (0, 4)


@pytest.mark.parametrize("seed", [0, SEED, 2 ** 64 - 1])
def test_uniform_bit_identical(host, seed):
    for shape, offset in CASES:
        for dtype in (np.float32, np.float64):
            out = crandom.uniform(shape, seed, offset, dtype)
            assert out.dtype == dtype and out.shape == shape
            np.testing.assert_array_equal(out, ref_uniform(shape, seed, offset, dtype))


@pytest.mark.parametrize("shape,offset", CASES)
def test_normal_matches_reference(host, shape, offset):
    r64 = ref.normal(shape, SEED, offset, np.float64)
    r32 = ref.normal(shape, SEED, offset, np.float32)
    z32 = crandom.normal(shape, SEED, offset, np.float32)
    z64 = crandom.normal(shape, SEED, offset, np.float64)
    assert z32.dtype == np.float32 and z64.dtype == np.float64 and z32.shape == shape
    assert_close3(z32, r32, r64, atol=1e-6, name="normal f32")
    assert_close3(z64, r64, r64, atol=1e-13, name="normal f64")


def test_offset_continues_the_stream_and_empty(host):
    whole = crandom.normal(23, 7, 0, np.float64)
    parts = [crandom.normal(5, 7, 0, np.float64), crandom.normal(11, 7, 5, np.float64),
             crandom.normal(7, 7, 16, np.float64)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert crandom.normal((0, 3), 7).shape == (0, 3)
    assert crandom.uniform(0, 7).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,offset", [((128, 20), 0), ((1000, 1001), 3), ((3,), BIG)])
def test_gpu_matches_cpu_backend(cp, dtype, shape, offset):
    from fastvae.cpu import random as cpu
    u = crandom.uniform(shape, SEED, offset, dtype)
    z = crandom.normal(shape, SEED, offset, dtype)
    assert isinstance(u, cp.ndarray) and isinstance(z, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(u), cpu.uniform(shape, SEED, offset, dtype))
    r64 = ref.normal(shape, SEED, offset, np.float64)
    assert_close3(cp.asnumpy(z), cpu.normal(shape, SEED, offset, dtype), r64,
                  atol=1e-6 if dtype == np.float32 else 1e-13, name="normal")
    ctr = np.random.default_rng(1).integers(0, 2 ** 32, (1000, 4), dtype=np.uint32)
    key = np.array([5, 6], np.uint32)
    np.testing.assert_array_equal(cp.asnumpy(crandom.philox4x32_10(cp.asarray(ctr), key)),
                                  cpu.philox4x32_10(ctr, key))
