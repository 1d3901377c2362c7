"""Checkpoints: parameters, optimizer state and configuration in one NumPy ``.npz``.

Layout: ``params/<name>`` for each parameter, ``optimizer/m`` and ``optimizer/v`` (flat, in the
parameter buffer's order) when the model has been trained, and ``meta``: UTF-8 JSON bytes with the
format tag, the configuration, the optimizer's step and hyper-parameters and the training history.
Loading never unpickles (``allow_pickle=False``); writes go to a temporary file in the same folder
that is renamed over the target, so a crash leaves either the old file or the new one.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from ._backend import to_host

FORMAT, VERSION = "fastvae-checkpoint", 1


def save(model, path):
    path = os.fspath(path)
    arrays = {f"params/{name}": to_host(model.params[name]) for name in model.params}
    meta = {"format": FORMAT, "version": VERSION, "config": model.config(),
            "history": model.history, "optimizer": None}
    state = model.optimizer_state
    if state is not None:
        arrays["optimizer/m"], arrays["optimizer/v"] = to_host(state.m), to_host(state.v)
        meta["optimizer"] = state.settings()
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _atomic_savez(path, arrays)


def _atomic_savez(path, arrays):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is not a readable fastvae checkpoint (truncated or not an "
                         f".npz): {e}") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is an .npz but not a fastvae checkpoint (no valid 'meta')") \
            from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {meta.get('format')!r} version "
                         f"{meta.get('version')!r} (expected {FORMAT!r} version {VERSION})")
    return arrays, meta


def load(path, device="cpu"):
    """-> VAE with parameters, history and (if saved) optimizer state restored."""
    from .model import VAE
    from .optim import Adam

    arrays, meta = _read(os.fspath(path))
    model = VAE(**meta["config"], device=device)
    for name in model.params:
        key = f"params/{name}"
        if key not in arrays:
            raise ValueError(f"{path}: checkpoint lacks parameter {name!r}")
        model.params[name] = arrays[key]
    model.history = meta.get("history") or []
    if meta.get("optimizer"):
        model.optimizer_state = Adam.from_saved(model, meta["optimizer"], arrays["optimizer/m"],
                                                arrays["optimizer/v"])
    return model
