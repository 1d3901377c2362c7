"""Session set-up for the whole test suite."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    """Fill Numba's on-disk cache before any test runs, so that every test process (this one,
    the CLI children, the Dask workers) runs cached kernels: see tests/warm_numba_cache.py."""
    run = subprocess.run([sys.executable, "-m", "tests.warm_numba_cache"], cwd=ROOT,
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"tests/warm_numba_cache.py failed:\n{run.stdout}\n{run.stderr}")
