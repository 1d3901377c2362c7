"""Session set-up for the whole test suite."""
import functools
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    """Fill Numba's on-disk cache before any test runs, so that every test process (this one,
    the CLI children, the Dask workers) runs cached kernels: see tests/warm_numba_cache.py."""
    run = subprocess.run([sys.executable, "-m", "tests.warm_numba_cache"], cwd=ROOT,
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"tests/warm_numba_cache.py failed:\n{run.stdout}\n{run.stderr}")


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    """None where CuPy runs a kernel on a CUDA device, else why not (read once per session,
    before any test installs tests/gpu/standin_cupy.py as ``cupy``)."""
    from fastvae.bench.timing import gpu_unavailable_reason as reason
    return reason()


def pytest_runtest_setup(item):
    """Tests marked ``gpu`` skip, with the reason, where there is no CUDA device."""
    if item.get_closest_marker("gpu") is not None:
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(reason)
