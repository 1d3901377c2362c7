"""Shared benchmark plumbing: the machine probes and the ratio table, on the ``fastvae bench``
suite's probes and timing (fastvae/bench/probes.py, fastvae/bench/timing.py).

Every benchmark times fastvae and the same work in plain NumPy, both through pytest-benchmark
(warm-up on, median of >= 7 rounds), and records the pair with ``record``. At the end of the run
``conftest.py`` prints one table: median times, the fastvae/NumPy speed-up, the achieved GFLOP/s
or GB/s, and that rate as a fraction of the machine's GEMM rate or copy bandwidth, measured in the
same run (at the start and at the end, since this machine drifts by 30-50%).

Where a CUDA GPU works (``gpu_unavailable_reason()`` is None), a benchmark may also pass
``cuda_fn``: a zero-arg callable on CuPy arrays (build it with ``maybe_cuda``, ``cuda_call`` or
``cuda_backward``, which return None without a GPU and import nothing CUDA-related then). It is
timed with CUDA events after warm-up (``timing.cuda_median_seconds``) and its rate compared with
the device's sgemm rate or copy bandwidth, probed next to the CPU ones.

With ``--benchmark-disable`` nothing is timed: each benchmark checks its result against NumPy
and calls every contender once (a smoke run), and no table is printed.
"""
import functools
import importlib

import numpy as np

from fastvae.bench import probes, timing

RESULTS = []   # one dict per recorded benchmark, filled by record()
PROBES = {}    # "start"/"end" -> probe dict

# The probe columns of benchmark-ops.json, from fastvae/bench/probes.py's keys.
_PROBE_COLUMNS = {(probes.GEMM_KEY, "gflops"): "gemm_gflops_f32",
                  (probes.COPY_KEY, "gbs"): "copy_gbs"}

# None when CuPy runs a kernel on a CUDA device, else why not; read once per run.
gpu_unavailable_reason = functools.lru_cache(maxsize=None)(timing.gpu_unavailable_reason)


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
    """PROBES[label]: the per-op GEMM rate and copy bandwidth of NumPy (and of CuPy, prefixed
    ``gpu_``, where a GPU works), from fastvae/bench/probes.py."""
    measured = probes.measure(probes.op_plan(), gpu=gpu_unavailable_reason() is None)
    PROBES[label] = {prefix + column: measured[device][key][metric]
                     for prefix, device in (("", "cpu"), ("gpu_", "gpu")) if measured[device]
                     for (key, metric), column in _PROBE_COLUMNS.items()}
    return PROBES[label]


def record(op, size, dtype, fastvae_s, numpy_s, flops=None, nbytes=None, cuda_s=None):
    """Store one row; flops / nbytes are per call (formula in the caller's comment); cuda_s is
    the CUDA median, None where not measured."""
    RESULTS.append(dict(op=op, size=size, dtype=np.dtype(dtype).name, fastvae_s=fastvae_s,
                        numpy_s=numpy_s, flops=flops, nbytes=nbytes, cuda_s=cuda_s))


def run_pair(benchmark, fastvae_fn, numpy_fn, cuda_fn=None, **record_kwargs):
    """Time fastvae with pytest-benchmark and the NumPy version by its median over as many
    calls (timing.median_seconds), interleaved by calling each once before the other is
    measured; time ``cuda_fn`` (None: no GPU or no CUDA launcher) with CUDA events; then record
    the row. Under --benchmark-disable: one call each, nothing recorded."""
    numpy_fn()
    benchmark(fastvae_fn)
    if benchmark.disabled:
        if cuda_fn is not None:
            cuda_fn()
        return
    stats = benchmark.stats.stats
    numpy_s = timing.median_seconds(numpy_fn, min(max(7, stats.rounds), 200))
    cuda_s = None if cuda_fn is None else timing.cuda_median_seconds(cuda_fn)
    record(fastvae_s=float(stats.median), numpy_s=numpy_s, cuda_s=cuda_s, **record_kwargs)
