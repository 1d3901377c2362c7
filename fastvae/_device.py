"""Devices: the one place that knows which array module and which kernels belong to a device.

- ``kernels(device)``: the namespace the network calls, ``<stem>`` = ``fastvae.<device>.<stem>``
  for every op stem, plus ``xp`` (numpy or cupy) and ``device``. The network's arrays are valid
  by construction, so it calls the backend launchers directly; ``fastvae.ops`` checks a user's
  arrays first.
- ``is_device_array(a)``: True for CuPy arrays; ``on_gpu(arrays)``: the same for a call's
  arrays, refusing a mix; ``xp(device)`` and ``array_module(a)``: numpy or cupy for a device or
  an array; ``device_of(a)``; ``to_host(a)``.

CuPy is imported only when a CUDA array or device="cuda" asks for it.
"""
import importlib
from types import SimpleNamespace

import numpy as np

DEVICES = ("cpu", "cuda")
STEMS = ("dense", "random", "reparam", "kl", "loglik", "elbo", "logsumexp", "iwae", "adam")


def kernels(device):
    """The kernel namespace of ``device`` ("cpu" or "cuda"; RuntimeError naming what is missing
    when CuPy or a GPU is not there)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda":
        _require_cuda()
    return SimpleNamespace(**{stem: importlib.import_module(f"fastvae.{device}.{stem}")
                              for stem in STEMS}, xp=xp(device), device=device)


def is_device_array(a):
    """True for a CuPy array (read from its type's module, so CuPy is never imported here)."""
    return type(a).__module__.split(".")[0] == "cupy"


def on_gpu(arrays):
    """True if the arrays (Nones skipped) are CuPy arrays, False if not; refuses a mix."""
    kinds = {is_device_array(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError("cannot mix CuPy and NumPy arrays in one call; move them to one device "
                        "first (cupy.asarray / cupy.asnumpy)")
    return kinds == {True}


def array_module(a):
    """cupy for a CuPy array, numpy otherwise."""
    return xp(device_of(a))


def device_of(a):
    """"cuda" for a CuPy array, "cpu" otherwise."""
    return "cuda" if is_device_array(a) else "cpu"


def to_host(a):
    """A NumPy array of ``a`` (a device-to-host copy for CuPy arrays, no copy for NumPy)."""
    return a.get() if is_device_array(a) else np.asarray(a)


def xp(device):
    """The array module of ``device``: numpy for "cpu", cupy for "cuda"."""
    return importlib.import_module("cupy" if device == "cuda" else "numpy")


def _require_cuda():
    try:
        import cupy
        available = cupy.cuda.is_available()
    except ImportError:
        raise RuntimeError("device='cuda' needs CuPy: pip install 'fastvae[cuda]'") from None
    if not available:
        raise RuntimeError("device='cuda' needs a CUDA GPU and driver; none was found")
