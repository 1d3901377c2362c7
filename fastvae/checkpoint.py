"""Checkpoints: parameters, optimizer state and configuration in one NumPy ``.npz``.

Layout: ``params/<name>`` for each parameter, ``optimizer/m`` and ``optimizer/v`` (flat, in the
parameter buffer's order) when the model has been trained, and ``meta``: UTF-8 JSON bytes with the
format tag, the configuration, the optimizer's step and hyper-parameters and the training history.
Checkpoints written by ``fit`` also hold ``meta["progress"]`` (where training stands inside the
epoch in progress, and the early-stopping state; see ``fastvae.train``) and, when early stopping
is on, ``train/best_params`` (flat, the best parameters so far).
Loading never unpickles (``allow_pickle=False``); writes go to a temporary file in the same folder
that is renamed over the target, so a crash leaves either the old file or the new one.

Loading trusts nothing in the file (``_read``): the metadata is checked against the schema below,
the arrays' names, shapes and dtypes (from their .npy headers, before any data is read) against
those the configuration implies, then their values (finite; Adam's v >= 0). Every problem is a
``CheckpointError`` (a ValueError) naming the file, raised before the model is built.
"""
import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import zipfile
import zlib

from dataclasses import dataclass

import numpy as np

from ._device import to_host
from ._reference import ACTIVATIONS, LIKELIHOODS
from .network import param_shapes
from .optim import Adam

FORMAT, VERSION = "fastvae-checkpoint", 1


def save(model, path):
    """Write model's checkpoint to path atomically. A symlink at path keeps pointing at the new
    file (its target is replaced); the file's mode follows the umask, as a plain open's would."""
    arrays = {key: to_host(a) for key, a in _contents(model).items()}
    _atomic_savez(os.path.realpath(os.fspath(path)), arrays)


def check_room(model, path, copies=2):
    """OSError (ENOSPC) naming path unless its folder has room for ``copies`` checkpoints of
    model: a new checkpoint is complete before it replaces the old one, so two must fit."""
    path = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(path)
    _make_folder(folder)
    need = copies * sum(a.nbytes + 512 for a in _contents(model).values())   # + zip headers
    have = shutil.disk_usage(folder).free + (os.path.getsize(path) if os.path.isfile(path) else 0)
    if have < need:
        raise OSError(errno.ENOSPC, f"{have / 1e6:.1f} MB free, {copies} checkpoints of this model "
                                    f"need {need / 1e6:.1f} MB", path)


def _contents(model):
    """{key: array} of model's checkpoint, on the model's device; 'meta' is the JSON bytes."""
    arrays = {f"params/{name}": model.params[name] for name in model.params}
    meta = {"format": FORMAT, "version": VERSION, "config": model.config(),
            "history": model.history, "optimizer": None}
    state = model.optimizer_state
    if state is not None:
        arrays["optimizer/m"], arrays["optimizer/v"] = state.m, state.v
        meta["optimizer"] = state.settings()
    resume = getattr(model, "resume_state", None)   # set by fit and load
    if resume is not None:
        meta["progress"] = resume["progress"]
        if resume["best_params"] is not None:
            arrays["train/best_params"] = resume["best_params"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def _atomic_savez(path, arrays):
    """np.savez to a temporary file next to path, then renamed over it. The temporary file is
    ``.<name>.tmp-<pid>-<random>``; those left by processes that died while saving are removed."""
    folder, name = os.path.split(path)
    _make_folder(folder)
    _remove_stale_temporaries(folder, name)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _make_folder(folder):
    """os.makedirs; a file in the way is NotADirectoryError (ENOTDIR), not "File exists"."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder",
                                 folder) from None


def _remove_stale_temporaries(folder, name):
    prefix = f".{name}.tmp-"
    for entry in os.listdir(folder):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, entry))


def _alive(pid):
    """Whether process pid exists (POSIX; elsewhere, and for this process, True)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


class CheckpointError(ValueError):
    """The file is not a valid fastvae checkpoint; the message names the file and the problem."""


# The schema of ``meta`` (a JSON object). Everything is checked before anything is allocated:
# the keys and types here, then the stored arrays' shapes and dtypes (from the .npy headers,
# without reading the data) against those the configuration implies, then the values.
META_KEYS = ("format", "version", "config", "history", "optimizer")
OPTIONAL_META_KEYS = ("progress",)           # null or an object: where an epoch was interrupted
CONFIG_KEYS = ("input_dim", "latent_dim", "likelihood", "activation", "seed", "dtype")
# the hidden widths: the mirrored form (one activation name) or the general one (encoder_dims,
# decoder_dims, and one activation name or one per hidden layer)
MIRRORED_KEYS, GENERAL_KEYS = ("hidden_dims",), ("encoder_dims", "decoder_dims")
OPTIMIZER_KEYS = ("step", "lr", "beta1", "beta2", "eps")
HISTORY_KEYS = ("epoch", "loss", "seconds", "samples_per_s", "beta", "val_elbo")
OPTIMIZER_ARRAYS = ("optimizer/m", "optimizer/v")
OPTIONAL_ARRAYS = ("train/best_params",)     # early stopping's best parameters so far
DTYPES = ("float32", "float64")
MAX_META_BYTES = 64 << 20


def _read(path):
    """-> (arrays, meta) of the checkpoint at path, both validated (CheckpointError if not):
    arrays {key: NumPy array} with the keys of the layout above, meta the parsed JSON."""
    path = os.fspath(path)
    try:
        npz = np.load(path, mmap_mode="r", allow_pickle=False)   # a lone .npy is not read
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise                      # missing, unreadable, a folder: the OS's own error
        raise CheckpointError(f"{path} is not a readable fastvae checkpoint (truncated or not "
                              f"an .npz): {e}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} is a single .npy array, not a fastvae checkpoint (.npz)")
    try:
        with npz:
            headers = _headers(npz.zip, path)
            meta = _meta(npz, headers, path)
            shapes = _check_meta(meta, path, headers)
            _check_headers(headers, meta, shapes, path)
            arrays = {key: npz[key] for key in headers if key != "meta"}
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable fastvae checkpoint (truncated or "
                              f"corrupt): {e}") from None
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable fastvae checkpoint: {e}") from None
    _check_values(arrays, path)
    return arrays, meta


def _headers(archive, path):
    """{key: (shape, dtype)} of every .npy member, from its header alone (no data is read).
    The header must also account for the member's exact size, so reading allocates no more
    than the file holds."""
    names = archive.namelist()
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path}: the archive has duplicate members")
    headers = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{path}: unexpected member {info.filename!r} (a checkpoint "
                                  f"holds only .npy arrays)")
        key = info.filename[:-len(".npy")]
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise CheckpointError(f"{path}: array {key!r} has unsupported .npy format "
                                      f"version {version}")
            offset = f.tell()
        if dtype.hasobject:
            raise CheckpointError(f"{path}: array {key!r} holds Python objects ({dtype}); a "
                                  f"checkpoint holds numbers only")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != offset + nbytes:
            raise CheckpointError(f"{path}: array {key!r} claims shape {shape} of {dtype} "
                                  f"({nbytes} bytes) but its member holds "
                                  f"{info.file_size - offset} bytes")
        headers[key] = (tuple(shape), dtype)
    return headers


def _meta(npz, headers, path):
    if "meta" not in headers:
        raise CheckpointError(f"{path} is an .npz but not a fastvae checkpoint (no 'meta')")
    shape, dtype = headers["meta"]
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
        raise CheckpointError(f"{path} is an .npz but not a fastvae checkpoint ('meta' must be "
                              f"at most {MAX_META_BYTES} bytes of uint8, got {dtype} {shape})")
    try:
        meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is an .npz but not a fastvae checkpoint (no valid 'meta': "
                              f"{type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'meta' must be a JSON object, got "
                              f"{_json_type(meta)}")
    return meta


def _json_type(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                          type(value).__name__)


def _is_int(value):
    return type(value) is int     # not bool: JSON true is not 1


def _is_real(value):
    return type(value) in (int, float)


def _keys(obj, what, required, path, optional=()):
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, got {_json_type(obj)}")
    missing = [k for k in required if k not in obj]
    extra = [k for k in obj if k not in required and k not in optional]
    if missing or extra:
        problems = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                   ([f"has unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise CheckpointError(f"{path}: {what} {' and '.join(problems)} (expected the keys "
                              f"{', '.join(required)})")


def _field(ok, obj, key, what, expected, path):
    if not ok(obj[key]):
        raise CheckpointError(f"{path}: {what}[{key!r}] must be {expected}, got "
                              f"{obj[key]!r} ({_json_type(obj[key])})")


def _check_meta(meta, path, headers):
    """Validate meta against the schema; -> the parameter shapes the configuration implies."""
    if meta.get("format") != FORMAT or not _is_int(meta.get("version")) or \
            meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} "
                              f"version {meta.get('version')!r} (expected {FORMAT!r} version "
                              f"{VERSION})")
    _keys(meta, "meta", META_KEYS, path, OPTIONAL_META_KEYS)
    config = meta["config"]
    _check_config(config, path)
    _check_history(meta["history"], path)
    if meta["optimizer"] is not None:
        _check_optimizer(meta["optimizer"], path)
    progress = meta.get("progress")
    if progress is not None and not isinstance(progress, dict):
        raise CheckpointError(f"{path}: meta['progress'] must be an object or null, got "
                              f"{_json_type(progress)}")
    _check_layer_count(config, headers, path)
    encoder_dims, decoder_dims = _widths(config)
    return param_shapes(config["input_dim"], None, config["latent_dim"], config["likelihood"],
                        encoder_dims=encoder_dims, decoder_dims=decoder_dims)


def _widths(config):
    """(encoder_dims, decoder_dims) of a validated configuration, in either form."""
    if "hidden_dims" in config:
        return config["hidden_dims"], config["hidden_dims"][::-1]
    return config["encoder_dims"], config["decoder_dims"]


def _check_config(config, path):
    c = "meta['config']"
    general = isinstance(config, dict) and "hidden_dims" not in config and any(
        key in config for key in GENERAL_KEYS)
    _keys(config, c, CONFIG_KEYS + (GENERAL_KEYS if general else MIRRORED_KEYS), path)
    for key in ("input_dim", "latent_dim"):
        _field(lambda v: _is_int(v) and v >= 1, config, key, c, "an integer >= 1", path)
    for key in GENERAL_KEYS if general else MIRRORED_KEYS:
        _field(lambda v: isinstance(v, list) and all(_is_int(h) and h >= 1 for h in v), config,
               key, c, "a list of integers >= 1", path)
    _field(lambda v: v in LIKELIHOODS, config, "likelihood", c, f"one of {LIKELIHOODS}", path)
    n_hidden = sum(map(len, _widths(config)))
    if general and isinstance(config["activation"], list):
        _field(lambda v: len(v) == n_hidden and all(a in ACTIVATIONS for a in v), config,
               "activation", c, f"one of {ACTIVATIONS} or a list of {n_hidden} of them", path)
    else:
        _field(lambda v: v in ACTIVATIONS, config, "activation", c, f"one of {ACTIVATIONS}",
               path)
    _field(lambda v: _is_int(v) and 0 <= v < 2 ** 63, config, "seed", c,
           "an integer in [0, 2**63)", path)
    _field(lambda v: v in DTYPES, config, "dtype", c, f"one of {DTYPES}", path)


def _check_history(history, path):
    if not isinstance(history, list):
        raise CheckpointError(f"{path}: meta['history'] must be a list of objects (one per "
                              f"epoch), got {_json_type(history)}")
    for i, record in enumerate(history):
        what = f"meta['history'][{i}]"
        _keys(record, what, HISTORY_KEYS, path, optional=record if isinstance(record, dict)
              else ())   # further per-epoch fields are allowed; these six are required
        _field(lambda v: _is_int(v) and v >= 1, record, "epoch", what, "an integer >= 1", path)
        for key in ("loss", "seconds", "samples_per_s", "beta"):
            _field(_is_real, record, key, what, "a number", path)
        _field(lambda v: v is None or _is_real(v), record, "val_elbo", what, "a number or null",
               path)


def _check_optimizer(opt, path):
    o = "meta['optimizer']"
    _keys(opt, o, OPTIMIZER_KEYS, path)
    _field(lambda v: _is_int(v) and v >= 0, opt, "step", o, "an integer >= 0", path)
    for key in ("lr", "eps"):
        _field(lambda v: _is_real(v) and math.isfinite(v) and v > 0, opt, key, o,
               "a finite number > 0", path)
    for key in ("beta1", "beta2"):
        _field(lambda v: _is_real(v) and 0 <= v < 1, opt, key, o, "a number in [0, 1)", path)


def _check_layer_count(config, headers, path):
    """Count the parameter arrays before listing the expected ones, so that a config claiming
    millions of layers costs nothing (a small mismatch is reported by name, later)."""
    n_hidden = sum(map(len, _widths(config)))
    expected = 2 * (n_hidden + 3) + (config["likelihood"] == "gaussian")
    stored = sum(key.startswith("params/") for key in headers)
    if expected > 2 * stored + 8:
        raise CheckpointError(f"{path}: the configuration ({n_hidden} hidden layers, "
                              f"{config['likelihood']}) has {expected} parameter arrays, the "
                              f"file {stored}")


def _check_headers(headers, meta, shapes, path):
    """The stored arrays' names, shapes and dtypes against those the configuration implies."""
    dtype = np.dtype(meta["config"]["dtype"])
    n_params = sum(math.prod(shape) for shape in shapes.values())
    expected = {f"params/{name}": shape for name, shape in shapes.items()}
    for key in OPTIONAL_ARRAYS:
        if key in headers:
            expected[key] = (n_params,)
    has_opt = [key in headers for key in OPTIMIZER_ARRAYS]
    if meta["optimizer"] is not None:
        if not all(has_opt):
            lacking = [k for k, has in zip(OPTIMIZER_ARRAYS, has_opt) if not has]
            raise CheckpointError(f"{path}: meta['optimizer'] is set but the file lacks "
                                  f"{' and '.join(lacking)}")
        expected.update({key: (n_params,) for key in OPTIMIZER_ARRAYS})
    elif any(has_opt):
        raise CheckpointError(f"{path}: the file has optimizer arrays but meta['optimizer'] is "
                              f"null")
    missing = [key for key in expected if key not in headers]
    unknown = [key for key in headers if key != "meta" and key not in expected]
    if missing or unknown:
        c = meta["config"]
        encoder_dims, decoder_dims = _widths(c)
        arch = "-".join(map(str, [c["input_dim"], *encoder_dims, c["latent_dim"], *decoder_dims,
                                  c["input_dim"]]))
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                   ([f"has unexpected {', '.join(unknown)}"] if unknown else [])
        raise CheckpointError(f"{path}: the file {' and '.join(problems)} for its configuration "
                              f"({arch}, {c['likelihood']})")
    for key, shape in expected.items():
        got_shape, got_dtype = headers[key]
        if got_shape != shape:
            raise CheckpointError(f"{path}: array {key!r} has shape {got_shape}, the "
                                  f"configuration implies {shape}")
        if got_dtype != dtype:
            kind = "" if got_dtype.kind == "f" else " (not a floating-point array)"
            raise CheckpointError(f"{path}: array {key!r} is {got_dtype}{kind}, the "
                                  f"configuration's dtype is {dtype}")


def _check_values(arrays, path):
    for key, a in arrays.items():
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: array {key!r} has {int((~np.isfinite(a)).sum())} "
                                  f"NaN/Inf values")
    v = arrays.get("optimizer/v")
    if v is not None and (v < 0).any():
        raise CheckpointError(f"{path}: array 'optimizer/v' (Adam's second moment) has "
                              f"{int((v < 0).sum())} negative values")


@dataclass(frozen=True)
class Saved:
    """A validated checkpoint: its configuration (the network's keyword arguments), its arrays
    ({key: NumPy array} in the layout above) and its parsed metadata."""
    path: str
    config: dict
    arrays: dict
    meta: dict


def read(path):
    """The checkpoint at ``path``, validated (``_read``): a malformed or inconsistent file raises
    CheckpointError (a ValueError) naming it, before anything is built."""
    path = os.fspath(path)
    arrays, meta = _read(path)
    return Saved(path, meta["config"], arrays, meta)


def restore(model, saved):
    """Copy a checkpoint read by ``read`` into a model built from ``saved.config``: parameters,
    history and (if saved) optimizer state. The optional interrupted-epoch position and
    early-stopping best parameters go to ``model.resume_state`` ({"progress": dict or None,
    "best_params": array or None}), or None when neither is saved. ``VAE.load`` does both."""
    arrays, meta = saved.arrays, saved.meta
    for name in model.params:
        model.params[name] = arrays[f"params/{name}"]
    model.history = meta["history"]
    if meta["optimizer"] is not None:
        try:
            model.optimizer_state = Adam.from_saved(model.params.flat, meta["optimizer"],
                                                    arrays["optimizer/m"], arrays["optimizer/v"])
        except ValueError as e:
            raise CheckpointError(f"{saved.path}: {e}") from None
    best = arrays.get("train/best_params")
    progress = meta.get("progress")
    model.resume_state = None if best is None and progress is None else \
        {"progress": progress, "best_params": best}
