"""The machine probes, shared by ``fastvae bench`` (fastvae/bench/run.py) and the per-op
benchmarks (benchmarks/common.py): exactly the matrix products of a training step or of a
log-likelihood chunk (the GEMM-only bound), one VAE-shaped product, or one large copy, in NumPy
or CuPy with preallocated outputs; ``measure`` times them (median seconds, CUDA events on the
GPU). NumPy only at import: no fastvae kernels load.
"""
import time

import numpy as np

from . import timing

OP_GEMM = (128, 784, 400)   # the per-op dense layer's product: batch 128, 784 -> 400
COPY_BYTES = 64 << 20
GEMM_KEY, COPY_KEY = "gemm_128x784x400", "copy"


def _randn(xp, rng, *shape):
    return xp.asarray(rng.standard_normal(shape).astype(np.float32))


def _matmuls(xp, products):
    return lambda: [xp.matmul(a, b, out=c) for a, b, c in products]


def gemm_step_fn(arch, batch, xp=np):
    """One call = the matrix products of one training step of ``arch`` at ``batch`` rows, with
    preallocated outputs (forward x @ W; backward x.T @ dy and dy @ W.T, no dx for enc0)."""
    rng = np.random.default_rng(0)
    products = []
    for idx, (_, n_in, n_out) in enumerate(arch.layers()):
        x, w, dy = _randn(xp, rng, batch, n_in), _randn(xp, rng, n_in, n_out), \
            _randn(xp, rng, batch, n_out)
        products.append((x, w, xp.empty((batch, n_out), xp.float32)))            # forward
        products.append((x.T, dy, xp.empty((n_in, n_out), xp.float32)))         # dW
        if idx > 0:
            products.append((dy, w.T, xp.empty((batch, n_in), xp.float32)))     # dx
    return _matmuls(xp, products)


def gemm_loglik_fn(arch, pairs, xp=np):
    """One call = the decoder products of ``pairs`` (x, z) pairs (one log-likelihood chunk)."""
    rng = np.random.default_rng(0)
    products = [(_randn(xp, rng, pairs, i), _randn(xp, rng, i, o),
                 xp.empty((pairs, o), xp.float32))
                for name, i, o in arch.layers() if name.startswith("dec")]
    return _matmuls(xp, products)


def gemm_fn(m, k, n, xp=np):
    """One (m, k) @ (k, n) float32 product: the per-op dense layer's GEMM."""
    rng = np.random.default_rng(0)
    a, b, c = _randn(xp, rng, m, k), _randn(xp, rng, k, n), xp.empty((m, n), xp.float32)
    return lambda: xp.matmul(a, b, out=c)


def copy_fn(n_bytes=COPY_BYTES, xp=np):
    """One copy of n_bytes (moves 2 n_bytes: read + write): the bandwidth probe."""
    src = xp.ones(n_bytes // 4, xp.float32)
    dst = xp.empty_like(src)
    return lambda: xp.copyto(dst, src)


def op_plan():
    """{key: (metric, work per call, builder(xp) -> fn)}: the per-op probes, the VAE-shaped
    GEMM (work: 2 m k n flops) and the copy (work: bytes read + written)."""
    m, k, n = OP_GEMM
    return {GEMM_KEY: ("gflops", 2 * m * k * n, lambda xp: gemm_fn(m, k, n, xp)),
            COPY_KEY: ("gbs", 2 * COPY_BYTES, lambda xp: copy_fn(COPY_BYTES, xp))}


def probe_seconds(fn, budget_s=0.3):
    """Median seconds of fn over as many calls as fit in ~budget_s (5 to 31)."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    return timing.median_seconds(fn, int(min(31, max(5, budget_s / one))))


def measure(plan, gpu=False):
    """Time every probe of ``plan`` (as op_plan returns) -> {"cpu": {key: {"seconds": s,
    metric: work / s / 1e9}}, "gpu": the same in CuPy, timed with CUDA events, or None
    without ``gpu``}."""
    out = {"cpu": {}, "gpu": {} if gpu else None}
    for key, (metric, work, build) in plan.items():
        s = probe_seconds(build(np))
        out["cpu"][key] = {"seconds": s, metric: work / s / 1e9}
        if gpu:
            import cupy
            s = timing.cuda_median_seconds(build(cupy))
            out["gpu"][key] = {"seconds": s, metric: work / s / 1e9}
    return out


def sgemm_gflops():
    """NumPy's float32 rate on the per-op GEMM (GEMM_KEY), GFLOP/s: the probe a dev script
    prints before and after its run (benchmarks/dev/)."""
    _, work, build = op_plan()[GEMM_KEY]
    return work / probe_seconds(build(np)) / 1e9
