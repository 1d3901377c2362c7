"""The user paths on the CUDA backend: every test takes ``dev`` and runs twice.

- ``[gpu]``: marked ``gpu``; real CuPy on a CUDA device (skipped, with the reason, elsewhere).
- ``[host]``: tests/gpu/standin_cupy.py installed as ``cupy`` and the launchers' kernels
  (kernels/*.cu, unchanged) running on the CPU through the host harness (tests/cuda_host), so the
  same paths and the tests themselves run on every machine.

Each test compares the CUDA backend with the CPU backend on the same inputs and the same Philox
noise, within the three-way tolerance of tests/helpers.py.
"""
import sys
from dataclasses import dataclass
from types import ModuleType

import pytest

from fastvae.cuda import _module
from tests.cuda.conftest import HOST_UNAVAILABLE, host_module
from tests.gpu import standin_cupy


class _HostLaunches:
    """A host-harness module whose kernels take stand-in device arrays (their NumPy data)."""

    def __init__(self, stem):
        self.module = host_module(stem)

    def get_function(self, name):
        kernel = self.module.get_function(name)

        def launch(grid, block, args, shared_mem=0):
            host_args = tuple(a._a if isinstance(a, standin_cupy.ndarray) else a for a in args)
            return kernel(grid, block, host_args, shared_mem=shared_mem)
        return launch


@dataclass
class Device:
    """The array module of one ``dev`` variant and its host/device copies."""
    name: str          # "gpu" or "host"
    xp: ModuleType     # cupy, or the stand-in

    def put(self, *arrays):
        """NumPy arrays -> device arrays (one, or a tuple)."""
        out = tuple(self.xp.asarray(a) for a in arrays)
        return out[0] if len(out) == 1 else out

    def get(self, a):
        """A device array -> a NumPy array; fails on anything else."""
        assert is_device_array(a), f"expected a device array, got {type(a).__module__}." \
                                   f"{type(a).__name__}"
        return self.xp.asnumpy(a)


def is_device_array(a):
    return type(a).__module__.split(".")[0] == "cupy"


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "host"])
def dev(request, monkeypatch):
    if request.param == "gpu":
        import cupy
        yield Device("gpu", cupy)
        return
    if HOST_UNAVAILABLE:
        pytest.skip(HOST_UNAVAILABLE)
    monkeypatch.setitem(sys.modules, "cupy", standin_cupy)
    with _module.use_module_factory(_HostLaunches):
        yield Device("host", standin_cupy)
