"""fastvae: fast variational-autoencoder kernels with explicit backward passes.

``fastvae.VAE`` is the trainable model; ``fastvae.ops`` the functional API over the kernels (NumPy
arrays run the Numba CPU backend); ``fastvae.random`` the counter-based Philox4x32-10 generator
shared by every backend; ``fastvae.data`` the dataset readers and checks. Everything loads on
first use, so ``import fastvae`` stays cheap.
"""
import importlib

__version__ = "0.1.0"
_SUBMODULES = ("ops", "random", "data", "model", "train", "eval", "figures",
               "torch", "jax", "distributed")   # the last three need optional extras
_NAMES = {"VAE": "model", "TrainingDiverged": "train", "TrainingInterrupted": "train",
          "CheckpointNotWritten": "train", "CheckpointError": "checkpoint",
          "set_num_threads": "_threads", "num_threads": "_threads",
          "log_likelihood": "callables", "CallableVAE": "callables"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'fastvae' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_NAMES))
