"""Where the CUDA C sources are, how they are compiled, and the hooks that let tests run them on the CPU.

- ``kernels_dir()``: the folder holding ``<stem>.cu`` and ``common.cuh``. Installed from a wheel it is
  the package-data folder ``fastvae/kernels``; in a source checkout (editable install, or
  ``PYTHONPATH=.``) it is the top-level ``kernels/``.
- ``OPTIONS``: the NVRTC options every module is compiled with. tests/cuda/test_compile_nvrtc.py
  compiles every .cu with exactly these (plus what CuPy itself appends, see CUPY_APPENDS).
- ``module(stem)``: the compiled module of ``kernels/<stem>.cu``, cached; by default a
  ``cupy.RawModule(code=<text>, options=OPTIONS)`` (CuPy compiles it lazily and keeps its own
  on-disk kernel cache). ``kernel(stem, name)``: one ``extern "C"`` kernel of it, cached.
- ``THREADS_PER_BLOCK``, ``MAX_BLOCKS``: the launch defaults. Every launcher module binds its own
  names from them (``THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK``): the per-op tuning point, read
  at each launch, and what the tests patch (tests/cuda/conftest.py TINY).
- ``use_module_factory(fn)``: replace the factory, e.g. by the host harness of
  tests/cuda_host (``fn(stem)`` returns an object with ``get_function(name)``, and the function is
  called like a CuPy RawKernel: ``kernel(grid, block, args, shared_mem=0)``). Together with
  ``array_module`` (NumPy for NumPy arrays) the launchers then run unchanged on the CPU.
"""
import contextlib
import functools
import pathlib

import numpy as np

from fastvae._device import array_module   # noqa: F401 - the launchers allocate with it

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]
_CANDIDATES = (
    _PACKAGE_DIR / "kernels",          # installed from a wheel: package data fastvae/kernels
    _PACKAGE_DIR.parent / "kernels",   # source checkout / editable install: top-level kernels/
)


@functools.lru_cache(maxsize=None)
def kernels_dir():
    """The directory of the .cu/.cuh sources. A real directory, not an importlib resource: NVRTC's
    ``-I`` and the host harness need a path (wheels install package data as plain files)."""
    for path in _CANDIDATES:
        if (path / "common.cuh").is_file():
            return path
    raise FileNotFoundError(f"fastvae's CUDA sources (kernels/*.cu) are in none of "
                            f"{[str(p) for p in _CANDIDATES]}; reinstall fastvae (they ship as "
                            f"package data fastvae/kernels)")


# No --use_fast_math: every kernel is memory-bound or dominated by a few transcendental calls,
# and the CPU and CUDA backends must agree to float32 rounding (same samples for the same seed);
# a kernel that wants an intrinsic (__expf, __logf) calls it explicitly and says why.
# No -arch: CuPy picks the device's architecture. "-std=c++17" is CuPy 14's default anyway.
OPTIONS = ("-std=c++17", "-I", str(kernels_dir()))

# Launch defaults. 256 threads per block: the usual choice for streaming kernels (full occupancy at
# <= 32 registers on sm_80/sm_90); not yet measured on a GPU. Must be a multiple of 32 (the warp
# and block reductions of kernels/common.cuh), at most 1024.
THREADS_PER_BLOCK = 256
# Grid cap for the grid-stride loops: 4096 blocks x 256 threads = 1M threads, several waves of
# resident blocks on an H100 (132 SMs x 8 blocks); larger inputs loop.
MAX_BLOCKS = 4096

# What cupy.RawModule appends to OPTIONS on its own (cupy/cuda/compiler.py, CuPy 14): the
# architecture, flush-to-zero, and device code by default. The NVRTC test adds the same.
CUPY_APPENDS = ("-ftz=true", "--device-as-default-execution-space")


def kernel_source(stem):
    """The text of ``kernels/<stem>.cu``."""
    return (kernels_dir() / f"{stem}.cu").read_text()


def cupy_module(stem):
    """The default factory: ``cupy.RawModule`` of ``kernels/<stem>.cu`` (RawModule(path=) only
    loads cubin/ptx, so the source text goes in as ``code=``)."""
    import cupy
    return cupy.RawModule(code=kernel_source(stem), options=OPTIONS)


_factory = cupy_module
_modules = {}
_kernels = {}


def module(stem):
    """The compiled module of ``kernels/<stem>.cu`` (made by the current factory, cached)."""
    mod = _modules.get(stem)
    if mod is None:
        mod = _modules[stem] = _factory(stem)
    return mod


def kernel(stem, name):
    """The ``extern "C" __global__`` kernel ``name`` of ``kernels/<stem>.cu``, callable as
    ``kernel(grid, block, args, shared_mem=0)``."""
    k = _kernels.get((stem, name))
    if k is None:
        k = _kernels[(stem, name)] = module(stem).get_function(name)
    return k


def set_module_factory(fn):
    """Make ``fn(stem)`` the module factory (None: back to CuPy); returns the previous one."""
    global _factory
    previous = _factory
    _factory = cupy_module if fn is None else fn
    _modules.clear()
    _kernels.clear()
    return previous


@contextlib.contextmanager
def use_module_factory(fn):
    """``with use_module_factory(host_factory): ...`` runs the launchers' kernels through ``fn``."""
    previous = set_module_factory(fn)
    try:
        yield
    finally:
        set_module_factory(previous)


SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def dtype_suffix(dtype):
    """"f32" or "f64": the suffix of the kernel variant for arrays of ``dtype``."""
    try:
        return SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"CUDA kernels take float32 or float64 arrays, got {np.dtype(dtype)}") from None


def cdiv(a, b):
    """ceil(a / b) for positive ints."""
    return -(-a // b)
