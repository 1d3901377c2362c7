"""The kernel modules of one device, for code that calls kernels directly (the model).

The model's arrays are valid by construction, so it skips ``fastvae.ops``'s checks and calls the
backend launchers, which take the same arguments.
"""
import importlib
from types import SimpleNamespace

import numpy as np

DEVICES = ("cpu", "cuda")
STEMS = ("dense", "random", "reparam", "kl", "loglik", "elbo", "logsumexp", "iwae", "adam")


def kernels(device):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        _require_cuda()
    return SimpleNamespace(**{stem: importlib.import_module(f"fastvae.{device}.{stem}")
                              for stem in STEMS}, xp=_array_module(device), device=device)


def to_host(a):
    """A NumPy array of ``a`` (a device-to-host copy for CuPy arrays, no copy for NumPy)."""
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else np.asarray(a)


def _array_module(device):
    return importlib.import_module("cupy" if device == "cuda" else "numpy")


def _require_cuda():
    try:
        import cupy
        available = cupy.cuda.is_available()
    except ImportError:
        raise RuntimeError("device='cuda' needs CuPy: pip install 'fastvae[cuda]'") from None
    if not available:
        raise RuntimeError("device='cuda' needs a CUDA GPU and driver; none was found")
    try:
        importlib.import_module("fastvae.cuda.dense")
    except ModuleNotFoundError:
        raise RuntimeError("this fastvae build has no CUDA kernels yet; use device='cpu'") from None
