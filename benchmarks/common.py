"""Shared benchmark plumbing: machine probes and the ratio table.

Every benchmark times fastvae and the same work in plain NumPy, both through pytest-benchmark
(warm-up on, median of >= 7 rounds), and records the pair with ``record``. At the end of the run
``conftest.py`` prints one table: median times, the fastvae/NumPy speed-up, the achieved GFLOP/s
or GB/s, and that rate as a fraction of the machine's GEMM rate or copy bandwidth, measured in the
same run (at the start and at the end, since this machine drifts by 30-50%).

Where a CUDA GPU works (``gpu_unavailable_reason()`` is None), a benchmark may also pass
``cuda_fn``: a zero-arg callable on CuPy arrays (build it with ``maybe_cuda``, ``cuda_call`` or
``cuda_backward``, which return None without a GPU and import nothing CUDA-related then). It is
timed with CUDA events after warm-up (``cuda_time_seconds``) and its rate compared with the
device's sgemm rate or copy bandwidth, probed next to the CPU ones.
"""
import functools
import importlib
import time

import numpy as np

from fastvae.bench.timing import cuda_median_seconds
from fastvae.bench.timing import gpu_unavailable_reason as _gpu_unavailable_reason

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


# ---------------------------------------------------------------------------------------------
# CUDA (CuPy); every entry point is guarded by gpu_unavailable_reason()
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    """None when CuPy imports and a CUDA device runs a kernel; otherwise why not (one line)."""
    return _gpu_unavailable_reason()


def cuda_time_seconds(fn, repeats=25, warmup=3):
    """Median seconds of one ``fn()`` on the GPU between two CUDA events (fastvae.bench.timing)."""
    return cuda_median_seconds(fn, reps=repeats, warmup=warmup)


def gpu_gemm_gflops(m=128, k=784, n=400):
    """float32 GEMM rate of CuPy (cuBLAS) on the same VAE-shaped product as gemm_gflops."""
    import cupy
    rng = np.random.default_rng(0)
    a = cupy.asarray(rng.standard_normal((m, k)).astype(np.float32))
    b = cupy.asarray(rng.standard_normal((k, n)).astype(np.float32))
    reps = 20
    seconds = cuda_time_seconds(lambda: [a @ b for _ in range(reps)]) / reps
    return 2.0 * m * k * n / seconds / 1e9


def gpu_copy_gbs(n_bytes=256 << 20):
    """Device copy bandwidth: bytes read + written per second for a 256 MiB cupy.copyto."""
    import cupy
    src = cupy.ones(n_bytes // 8)
    dst = cupy.empty_like(src)
    seconds = cuda_time_seconds(lambda: cupy.copyto(dst, src))
    return 2.0 * n_bytes / seconds / 1e9


def cuda_module(stem):
    """``fastvae.cuda.<stem>`` (the launchers), or None without a GPU."""
    if gpu_unavailable_reason() is not None:
        return None
    return importlib.import_module(f"fastvae.cuda.{stem}")


def to_device(*args):
    """``args`` with every NumPy array copied to the GPU (other values as they are), or None
    without a GPU."""
    if gpu_unavailable_reason() is not None:
        return None
    import cupy
    return tuple(cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def maybe_cuda(stem, build, *args):
    """``build(fastvae.cuda.<stem>, *to_device(*args))``, which returns the zero-arg callable to
    time, or None without a GPU (build is then not called)."""
    module = cuda_module(stem)
    return None if module is None else build(module, *to_device(*args))


def cuda_call(stem, name, *args, **kwargs):
    """``lambda: fastvae.cuda.<stem>.<name>(*device args, **kwargs)``, or None without a GPU."""
    return maybe_cuda(stem, lambda k, *d: functools.partial(getattr(k, name), *d, **kwargs),
                      *args)


def cuda_backward(stem, op, dout, *fwd_args, **fwd_kwargs):
    """The CUDA ``<op>_backward(dout, cache)`` with the cache of one ``<op>_forward(*fwd_args)``
    made beforehand, or None without a GPU."""
    def build(k, dout, *d):
        cache = getattr(k, f"{op}_forward")(*d, **fwd_kwargs)[1]
        return functools.partial(getattr(k, f"{op}_backward"), dout, cache)
    return maybe_cuda(stem, build, dout, *fwd_args)


def probe(label):
    PROBES[label] = {"gemm_gflops_f32": gemm_gflops(), "copy_gbs": copy_gbs()}
    if gpu_unavailable_reason() is None:
        PROBES[label].update(gpu_gemm_gflops_f32=gpu_gemm_gflops(), gpu_copy_gbs=gpu_copy_gbs())
    return PROBES[label]


def median_seconds(benchmark):
    return float(benchmark.stats.stats.median)


def record(op, size, dtype, fastvae_s, numpy_s, flops=None, nbytes=None, cuda_s=None):
    """Store one row; flops / nbytes are per call (formula in the caller's comment); cuda_s is
    the CUDA median, None where not measured."""
    RESULTS.append(dict(op=op, size=size, dtype=np.dtype(dtype).name, fastvae_s=fastvae_s,
                        numpy_s=numpy_s, flops=flops, nbytes=nbytes, cuda_s=cuda_s))


def run_pair(benchmark, fastvae_fn, numpy_fn, cuda_fn=None, **record_kwargs):
    """Time fastvae with pytest-benchmark and the NumPy version with the same median method,
    interleaved by calling each once before the other is measured; time ``cuda_fn`` (None: no
    GPU or no CUDA launcher) with CUDA events; then record the row."""
    numpy_fn()
    benchmark(fastvae_fn)
    numpy_s = _best_seconds(numpy_fn, repeats=min(max(7, benchmark.stats.stats.rounds), 200))
    cuda_s = None if cuda_fn is None else cuda_time_seconds(cuda_fn)
    record(fastvae_s=median_seconds(benchmark), numpy_s=numpy_s, cuda_s=cuda_s, **record_kwargs)
