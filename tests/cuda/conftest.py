"""Fixtures for the CUDA backend: run the REAL launchers (fastvae/cuda/<stem>.py) on NumPy arrays,
their kernels (kernels/<stem>.cu, unchanged) executing on the CPU through the host harness
(tests/cuda_host), and mark tests that need a real GPU.

How to add a CUDA op (copy the adam files; <stem> is the op's file stem, e.g. ``kl``):

1. kernels/<stem>.cu: ``#include "common.cuh"``; the math in a templated body written as
   ``FV_KERNEL_F32_F64(<name>_kernel, (<params, with T>), (<their names>)) {...}`` (common.cuh;
   outputs first, then inputs, then sizes; shapes in comments;
   ``// math: fastvae/_reference.py::<function>``), which also generates the ``extern "C"
   __global__`` kernel of each dtype, ``<name>_kernel_f32`` and ``<name>_kernel_f64``. List the
   two above it as ``// extern "C" __global__ void <name>_kernel_f32(...)`` (and ``_f64``): the
   host harness and test_compile_nvrtc.py find a .cu's kernels by that text.
   Use common.cuh's helpers: fv_exp/fv_log/... overloads, fv_max (NaN-propagating),
   fv_softplus/fv_sigmoid, warp_/block_sum_all and _max_all, philox_normals4_f32/_f64,
   FV_NEG_INF_F/_D, the grid-stride loop. No <math.h> macros (INFINITY), no templates as kernels.
2. fastvae/cuda/<stem>.py: launchers with exactly the names and signatures of
   fastvae/cpu/<stem>.py. Launch constants at module level, the defaults bound by name
   (``THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK``, ``MAX_BLOCKS = _module.MAX_BLOCKS``),
   ``kernel("<stem>", f"<name>_kernel_{dtype_suffix(x.dtype)}")((grid,), (block,), (args...))``
   with scalars as NumPy scalars of the kernel's C type (``T(lr)``, ``np.int32(rows)``,
   ``np.int64(n)``); allocate outputs with ``xp = array_module(x)``, ``xp.empty(...)`` so the same
   code makes NumPy arrays under the harness and CuPy arrays on a GPU.
3. If the launcher has other launch constants that must shrink to exercise multi-block paths,
   add them to TINY below.
4. tests/cuda/test_<stem>_cuda.py: take the ``host_cuda`` fixture, call the launcher on NumPy
   arrays, compare with fastvae/_reference.py via tests.helpers.assert_close3 (float32 and
   float64); add one ``@pytest.mark.gpu`` test on CuPy arrays. test_compile_nvrtc.py picks up the
   new .cu by itself. Run: ``.venv/bin/python -m pytest tests/cuda -q``.
"""
import sys

import pytest

from fastvae.cuda import _module
from tests.cuda_host.cuda_host import ORDERS, HostModule, thread_order, unavailable_reason

HOST_UNAVAILABLE = unavailable_reason()

# Launch constants patched in every fastvae.cuda launcher module that defines them, for the
# "tiny" configuration: one warp per block and a grid capped at 3 blocks, so arrays of a few
# hundred elements run several blocks and several grid-stride iterations.
TINY = {"THREADS_PER_BLOCK": 32, "MAX_BLOCKS": 3}
BLOCK_CONFIGS = ("real", "tiny")

_host_modules = {}


def host_module(stem):
    """The module factory used under ``host_cuda``: kernels/<stem>.cu compiled by g++ against the
    harness, with the include dirs and macros of the launchers' NVRTC OPTIONS (cached by content
    hash, so a second session loads the .so in milliseconds)."""
    mod = _host_modules.get(stem)
    if mod is None:
        mod = _host_modules[stem] = HostModule(_module.kernels_dir() / f"{stem}.cu",
                                               options=_module.OPTIONS)
    return mod


def launcher_modules():
    """The launcher modules fastvae.cuda.<stem> imported so far (a test imports the launchers it
    calls; a broken launcher of another op must not break this op's tests)."""
    return [mod for name, mod in list(sys.modules.items())
            if name.startswith("fastvae.cuda.") and not name.rsplit(".", 1)[1].startswith("_")]


@pytest.fixture(params=[(o, b) for b in BLOCK_CONFIGS for o in ORDERS],
                ids=[f"{o}-{b}" for b in BLOCK_CONFIGS for o in ORDERS])
def host_cuda(request, monkeypatch):
    """Launchers run on NumPy arrays via the host harness, in fiber order fwd/rev/rand, with the
    launchers' real launch constants and with TINY ones. Yields (order, block_config)."""
    if HOST_UNAVAILABLE:
        pytest.skip(HOST_UNAVAILABLE)
    order, config = request.param
    if config == "tiny":
        for mod in launcher_modules():
            for name, value in TINY.items():
                if hasattr(mod, name):
                    monkeypatch.setattr(mod, name, value)
    with _module.use_module_factory(host_module), thread_order(order, seed=7):
        yield request.param


@pytest.fixture
def cp():
    """The cupy module, for tests marked gpu."""
    import cupy
    return cupy


def pytest_terminal_summary(terminalreporter):
    """The ptxas resource table of test_compile_nvrtc.py, when it ran."""
    nv = sys.modules.get("tests.cuda.test_compile_nvrtc")
    if nv is not None and nv.PTXAS_ROWS:
        terminalreporter.write_sep("-", "ptxas -v (NVRTC, kernels/*.cu and tests/cuda/kernels/*.cu)")
        terminalreporter.write_line(nv.format_table(nv.PTXAS_ROWS))
