"""Standard normals from Philox4x32-10 (fastvae.random.normal) vs NumPy's default generator
(PCG64 + ziggurat, ``Generator.standard_normal(n, dtype=...)``), float32 and float64.

bytes per call: the n outputs written, 4 n (float32) or 8 n (float64); normals/s = GB/s * 1e9 / 4
(float32). NumPy's generator is created once, outside the timing, and advances from call to call.
Sizes: 2^14 (just below the parallel threshold), 10^5, and 10^6 .. 10^7.
"""
import numpy as np
import pytest

import common
import fastvae.random as frandom
from fastvae import _reference as ref

SEED = 2024
NORMAL_SIZES = [1 << 14, 10 ** 5, 10 ** 6, 3 * 10 ** 6, 10 ** 7]   # float32; float64 at 10^6


def check_normal(n, dtype):
    """The first 4099 numbers match the reference and the whole draw looks standard normal."""
    z = frandom.normal(n, SEED, 0, dtype)
    m = min(n, 4099)
    np.testing.assert_allclose(z[:m], ref.normal(m, SEED, 0, np.float64), rtol=0, atol=2e-6)
    assert abs(float(z.mean())) < 6 / np.sqrt(n) and abs(float(z.var()) - 1) < 6 * np.sqrt(2 / n)


@pytest.mark.parametrize("n,dtype", [(n, np.float32) for n in NORMAL_SIZES] +
                         [(10 ** 6, np.float64)], ids=lambda v: getattr(v, "__name__", str(v)))
def test_normal(benchmark, n, dtype):
    check_normal(n, dtype)
    rng = np.random.default_rng(0)
    common.run_pair(benchmark, lambda: frandom.normal(n, SEED, 0, dtype),
                    lambda: rng.standard_normal(n, dtype=dtype),
                    op="normal", size=n, dtype=dtype, nbytes=np.dtype(dtype).itemsize * float(n),
                    cuda_fn=common.cuda_call("random", "normal", n, SEED, 0, dtype))


@pytest.mark.parametrize("n", [10 ** 6])
def test_uniform_float32(benchmark, n):
    """Uniforms are a utility path (scalar Philox per element, not vectorized)."""
    u = frandom.uniform(n, SEED)
    assert 0 < u.min() and u.max() <= 1 and abs(float(u.mean()) - 0.5) < 6 * np.sqrt(1 / 12 / n)
    rng = np.random.default_rng(0)
    common.run_pair(benchmark, lambda: frandom.uniform(n, SEED),
                    lambda: rng.random(n, dtype=np.float32),
                    op="uniform", size=n, dtype=np.float32, nbytes=4.0 * n,
                    cuda_fn=common.cuda_call("random", "uniform", n, SEED))
