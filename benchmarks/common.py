"""Shared benchmark plumbing: machine probes and the ratio table.

Every benchmark times fastvae and the same work in plain NumPy, both through pytest-benchmark
(warm-up on, median of >= 7 rounds), and records the pair with ``record``. At the end of the run
``conftest.py`` prints one table: median times, the fastvae/NumPy speed-up, the achieved GFLOP/s
or GB/s, and that rate as a fraction of the machine's GEMM rate or copy bandwidth, measured in the
same run (at the start and at the end, since this machine drifts by 30-50%).
"""
import time

import numpy as np

RESULTS = []   # one dict per recorded benchmark, filled by record()
PROBES = {}    # "start"/"end" -> probe dict


def _best_seconds(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def gemm_gflops(dtype=np.float32, m=128, k=784, n=400):
    """float32 GEMM rate of NumPy's BLAS on a VAE-shaped product (batch 128, 784x400).
    flops = 2 m k n."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    reps = 20
    seconds = _best_seconds(lambda: [a @ b for _ in range(reps)]) / reps
    return 2.0 * m * k * n / seconds / 1e9


def copy_gbs(n_bytes=64 << 20):
    """Copy bandwidth: bytes read + bytes written per second for a 64 MiB np.copyto."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    seconds = _best_seconds(lambda: np.copyto(dst, src))
    return 2.0 * n_bytes / seconds / 1e9


def probe(label):
    PROBES[label] = {"gemm_gflops_f32": gemm_gflops(), "copy_gbs": copy_gbs()}
    return PROBES[label]


def median_seconds(benchmark):
    return float(benchmark.stats.stats.median)


def record(op, size, dtype, fastvae_s, numpy_s, flops=None, nbytes=None):
    """Store one row; flops / nbytes are per call (formula in the caller's comment)."""
    RESULTS.append(dict(op=op, size=size, dtype=np.dtype(dtype).name, fastvae_s=fastvae_s,
                        numpy_s=numpy_s, flops=flops, nbytes=nbytes))


def run_pair(benchmark, fastvae_fn, numpy_fn, **record_kwargs):
    """Time fastvae with pytest-benchmark and the NumPy version with the same median method,
    interleaved by calling each once before the other is measured; then record the pair."""
    numpy_fn()
    benchmark(fastvae_fn)
    numpy_s = _best_seconds(numpy_fn, repeats=min(max(7, benchmark.stats.stats.rounds), 200))
    record(fastvae_s=median_seconds(benchmark), numpy_s=numpy_s, **record_kwargs)
