"""The importance-weighted log-likelihood on a Dask cluster: rows split over the workers, the
model shipped once to each, the numbers of one machine.

    from dask.distributed import Client, LocalCluster
    client = Client(LocalCluster(n_workers=4, threads_per_worker=1))   # or Client("tcp://h:8786")
    ll = fastvae.distributed.log_likelihood(model, x, K=5000)   # lazy dask array (N,) float64
    ll.mean().compute()
    fastvae.distributed.log_likelihood(model, x, K=5000, out="ll.npy")   # written by the workers

How it works:

- The model travels as a ``ModelSpec`` (configuration + flat parameter vector + content token),
  scattered once to every worker (``client.scatter(..., broadcast=True)``); each worker process
  rebuilds the VAE once per (token, device) and keeps it (``_worker_model``). The VAE class knows
  nothing of Dask.
- One task per row chunk runs ``fastvae.eval.log_likelihood`` with ``first_row`` = the chunk's
  global first row, so the noise of (row r, sample k) is the single-machine noise. Row chunks start
  at multiples of ``max(1, max_pairs // K)`` (a dask array whose chunks do not is rechunked,
  moving fewer rows than that per boundary): the GEMM batches are then the single-machine ones and
  the result is bit for bit ``model.log_likelihood(x, K, seed, max_pairs=max_pairs)``.
- A task whose worker dies is re-run elsewhere by the scheduler (the result of a chunk depends
  on nothing but its rows, the model and the seed), so the result is complete and unchanged.
- The rows are checked where they are read, inside each task (``fastvae.eval`` checks every
  chunk as it converts it): NaN/Inf, or values outside [0, 1] for a Bernoulli model, fail the
  task with a ValueError naming ``data``, the global row, the column and the value, which
  computing the result raises. The client never reads the rows (a memmap larger than RAM, or
  a file only the workers see, stays where it is) and nothing is read twice.
- CuPy chunks (a dask array of CuPy arrays on GPU workers): the worker moves its model to the
  chunk's GPU and the chunk's estimator runs there; the (N,) result chunks are NumPy.
"""
import collections
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError:   # pragma: no cover - depends on the environment
    raise ImportError("fastvae.distributed needs Dask: pip install 'fastvae[distributed]'") \
        from None

from . import _validate as check
from ._device import is_device_array, to_host
from .callables import CallableVAE
from .eval import DEFAULT_MAX_PAIRS, Estimate, LatentSpread, rows_of
from .eval import log_likelihood as _log_likelihood_local
from .model import VAE

# Work per task when the rows arrive as a NumPy array / memmap: 2^18 (x, z) pairs, e.g. 262 rows
# at K=1000. A task's fixed cost on 2 local workers (benchmarks/dev/dask_cluster.py, 2-vCPU
# machine): 5.9 ms wall for a trivial fastvae task (K=1, 8 rows), the same as a no-op Dask task
# on the same chunks (5.8 ms; 9.3 vs 8.6 ms when other jobs loaded the machine), so it is Dask's
# own; against ~5 s of work for 2^18 pairs of 784-400-20 in float32 on one core (~50k pairs/s):
# ~0.1%. Smaller tasks would balance better but cost more; on a GPU (far faster per pair) pass
# bigger chunks (chunk_rows=).
TASK_PAIRS = 1 << 18


@dataclass(frozen=True, eq=False)   # eq would compare the arrays; the token says it all
class ModelSpec:
    """What a worker needs to rebuild a VAE: its configuration and flat parameters (P,) (host).
    token: a content hash of both, the key of the worker's model cache."""
    config: dict
    flat: np.ndarray
    token: str

    @classmethod
    def of(cls, model):
        config = model.config()
        flat = np.ascontiguousarray(to_host(model.params.flat))
        digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode())
        digest.update(flat.view(np.uint8))
        return cls(config, flat, digest.hexdigest())

    def __dask_tokenize__(self):
        return "fastvae-model", self.token

    def build(self, device="cpu"):
        model = VAE(**self.config)
        model.params.flat[...] = self.flat
        return model if device == "cpu" else model.to(device)


# Per worker process: {(token, device, gpu id): VAE}, the most recently used few.
_MODELS = collections.OrderedDict()
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 4


def _worker_model(spec, device="cpu", gpu=None):
    """The VAE of ``spec`` on ``device``, built on this process's first call and then reused."""
    key = (spec.token, device, gpu)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = spec.build(device)
            while len(_MODELS) > _MODELS_KEPT:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(key)
        return _MODELS[key]


def _block_model(spec, block):
    """The model of one task and its rows as host arrays: a VAE rebuilt from its ModelSpec (on
    the chunk's GPU for CuPy rows), or the CallableVAE shipped as it is."""
    if isinstance(spec, CallableVAE):
        return spec, to_host(block), None
    if not is_device_array(block):
        return _worker_model(spec), block, None
    import cupy
    device = cupy.cuda.Device(block.device.id)
    # eval's row reader is host-side (np.ascontiguousarray), so the rows take one round trip
    # (n*D values) against the K decoder passes per row that follow on the GPU.
    with device:
        return _worker_model(spec, "cuda", block.device.id), cupy.asnumpy(block), device


def _block_log_likelihood(block, spec, K, seed, max_pairs, block_info=None):
    """One task: rows (n, D) of the data (NumPy or CuPy) -> their estimates (n,) float64."""
    first_row = block_info[0]["array-location"][0][0]
    return _block_estimate(block, spec, K, seed, max_pairs, first_row, stats=False)


def _block_estimate(block, spec, K, seed, max_pairs, first_row, stats):
    model, rows, device = _block_model(spec, block)
    with contextlib.nullcontext() if device is None else device:
        return _log_likelihood_local(model, rows, K, seed, max_pairs, progress=False,
                                     first_row=first_row, name="data", stats=stats)


def _block_stats(block, spec, K, seed, max_pairs, first_row, target):
    """One task of stats=True: -> (estimates (n,) or None when written to target, ESS (n,),
    LatentSpread of the block's encoder means)."""
    estimate = _block_estimate(block, spec, K, seed, max_pairs, first_row, stats=True)
    values = estimate.log_likelihood
    if target is not None:
        _write_rows(values, target, first_row)
        values = None
    return values, estimate.ess, estimate.latent_spread


def log_likelihood(model, data, K=5000, seed=None, max_pairs=DEFAULT_MAX_PAIRS, client=None,
                   out=None, chunk_rows=None, stats=False):
    """``model.log_likelihood(data, K, seed, max_pairs=max_pairs)`` computed on a Dask cluster.

    data: (N, D) float rows: a ``dask.array`` (NumPy or CuPy chunks; its row chunks are kept
    unless chunk_rows is given, only aligned as the module doc says), or a NumPy array /
    ``numpy.memmap`` / array-like. A memmap that maps a file directly is read by the workers from
    that file (they must see the same path); other arrays travel in the task graph.
    chunk_rows: rows per task, rounded up to a multiple of max(1, max_pairs // K). Default for
    non-dask data: about TASK_PAIRS (2^18) pairs per task, but no more than an equal share of
    the rows per worker thread, so that every worker gets work.
    client: a ``dask.distributed.Client`` (default: the current one, if any; else Dask's local
    scheduler runs the tasks, the spec then riding in the graph; there prefer
    ``compute(scheduler="sync")``: each task already uses fastvae's threads on every core).
    out: None -> a lazy dask array (N,) float64 with the chunks of the rows; compute it with the
    client (``ll.compute()``, ``client.compute(ll)``, ``ll.to_zarr(...)``, ...).
    A path (str / PathLike) -> a ``.npy`` file (N,) float64 is created there, every task writes
    its rows into it (no result passes through the client), and the file is returned opened as a
    read-only ``numpy.memmap``. A writable ``numpy.memmap`` (N,) float64 backed by a file ->
    filled the same way and returned. A task may run twice (a worker lost after it wrote); it then
    writes the same values, so the file is the same.
    seed: as in ``fastvae.eval.log_likelihood`` (None: model.seed + 2).
    Bad rows (NaN/Inf; outside [0, 1] for a Bernoulli model) make the computation raise
    ValueError naming the global row, column and value (checked in the tasks, see the module doc);
    with out=, before this function returns.
    model: a ``fastvae.VAE`` (shipped as its ModelSpec) or a ``fastvae.CallableVAE`` (any
    encoder and decoder, shipped with cloudpickle: its functions must pickle).
    stats: True -> computed now, returned as a ``fastvae.eval.Estimate`` (the estimates, their
    standard error, the ESS per example, the active units), the same numbers as one machine's
    ``log_likelihood(..., stats=True)``; with out=, the workers write the estimates to the file
    and only the ESS (N,) and the (L,) latent statistics travel to the client.
    """
    model = _sized(model, data)
    K = check.integer("K", K, 1)
    max_pairs = check.integer("max_pairs", max_pairs, 1)
    seed = model.seed + 2 if seed is None else check.integer("seed", seed, 0, 2 ** 64 - 1)
    client = _current_client() if client is None else client
    align = max(1, max_pairs // K)   # eval.log_likelihood's rows per GEMM batch
    data = data if isinstance(data, da.Array) else rows_of(model, data, "data")
    x = _as_dask_rows(model, data, align, _rows_per_task(data, K, align, client, chunk_rows))
    target = None if out is None else _out_target(out, x.shape[0])
    spec = ModelSpec.of(model) if isinstance(model, VAE) else model
    # hash=True names the data by its content, so a lazy result's graph is the same for the same
    # model. stats=True computes at once and scatters under a fresh key: re-scattering a content
    # key that an earlier call's future is just releasing lost the data ("lost dependencies",
    # seen in CI when a test evaluated the same model twice in a row).
    spec = client.scatter(spec, broadcast=True, hash=not stats) if client is not None else \
        dask.delayed(spec, pure=True)
    if stats:
        estimate = _stats(x, spec, K, seed, max_pairs, client, target)
        return estimate if out is None else dataclasses.replace(
            estimate, log_likelihood=out if isinstance(out, np.memmap) else
            np.load(out, mmap_mode="r"))
    token = dask.base.tokenize(x, spec, K, seed, max_pairs)
    ll = da.map_blocks(_block_log_likelihood, x, spec, K=K, seed=seed, max_pairs=max_pairs,
                       drop_axis=1, dtype=np.float64, meta=np.empty(0, np.float64),
                       name=f"fastvae-log-likelihood-{token}")
    if target is None:
        return ll
    _write(ll, target, client)
    return out if isinstance(out, np.memmap) else np.load(out, mmap_mode="r")


def _sized(model, data):
    """model, refused unless a VAE or CallableVAE; a CallableVAE without input_dim gets a copy
    with the data's width (its D is needed to check the rows before any task runs)."""
    if not isinstance(model, (VAE, CallableVAE)):
        raise TypeError(f"model must be a fastvae.VAE or a fastvae.CallableVAE, got "
                        f"{type(model).__name__}")
    if isinstance(model, CallableVAE) and model.input_dim is None and len(data.shape) == 2:
        model = copy.copy(model)
        model.input_dim = int(data.shape[1])
    return model


def _stats(x, spec, K, seed, max_pairs, client, target):
    """stats=True: one delayed task per row chunk (_block_stats), computed now; the per-chunk
    results are put together in row order into an Estimate."""
    starts = np.concatenate([[0], np.cumsum(x.chunks[0])[:-1]])
    name = f"fastvae-log-likelihood-stats-{dask.base.tokenize(x, spec, K, seed, max_pairs, target)}"
    tasks = [dask.delayed(_block_stats)(block, spec, K, seed, max_pairs, int(a), target,
                                        dask_key_name=(name, i))
             for i, (block, a) in enumerate(zip(x.to_delayed()[:, 0], starts))]
    parts = client.compute(tasks, sync=True) if client is not None else dask.compute(*tasks)
    spread = LatentSpread()
    for _, _, block_spread in parts:
        spread = spread.merged(block_spread)
    values = None if target is not None else np.concatenate([p[0] for p in parts])
    return Estimate(values, np.concatenate([p[1] for p in parts]), spread, K, seed)


# ---------------------------------------------------------------------------------------------
# the rows as a dask array
# ---------------------------------------------------------------------------------------------
def _current_client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _rows_per_task(data, K, align, client, chunk_rows):
    """Rows per task: chunk_rows if given; None for a dask array (its chunks are kept); else
    TASK_PAIRS of work but no more than an equal share of the rows per worker thread. Always a
    multiple of align."""
    if chunk_rows is not None:
        return _round_up(check.integer("chunk_rows", chunk_rows, 1), align)
    if isinstance(data, da.Array):
        return None
    rows = max(1, TASK_PAIRS // K)
    if client is not None:
        threads = max(1, sum(client.nthreads().values()))
        rows = min(rows, math.ceil(data.shape[0] / threads))
    return _round_up(rows, align)


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _as_dask_rows(model, data, align, rows_per_task):
    """data (checked rows or a dask array) -> dask array (N, D), one chunk across the columns,
    row chunks starting at multiples of align (then each task's GEMM batches are those of the
    single-machine run). rows_per_task: None keeps a dask array's own row chunks."""
    if not isinstance(data, da.Array):
        chunks = (rows_per_task, data.shape[1])
        source = _FileRows.of(data)
        if source is not None:
            return da.from_array(source, chunks=chunks, asarray=True, fancy=False,
                                 inline_array=True, meta=np.empty((0, 0), data.dtype))
        return da.from_array(data, chunks=chunks)
    check.check_float_dtype("data", data)
    if data.ndim != 2 or data.shape[1] != model.input_dim:
        raise ValueError(f"data must be (N, {model.input_dim}) (input_dim = {model.input_dim}), "
                         f"got shape {data.shape}")
    if math.isnan(data.shape[0]):
        raise ValueError("data has unknown chunk sizes along the rows; call "
                         "data.compute_chunk_sizes() first")
    if data.shape[0] == 0:
        raise ValueError("data must have at least one row")
    data = data.rechunk({0: data.chunks[0] if rows_per_task is None else rows_per_task, 1: -1})
    return data.rechunk({0: _aligned(data.chunks[0], align)})


def _aligned(row_chunks, align):
    """Chunk sizes whose boundaries are those of row_chunks rounded down to multiples of align."""
    bounds = np.cumsum(row_chunks)
    inner = sorted({int(b) // align * align for b in bounds[:-1]} - {0})
    edges = [0] + inner + [int(bounds[-1])]
    return tuple(int(b - a) for a, b in zip(edges[:-1], edges[1:]))


class _FileRows:
    """The rows of a file-backed ``numpy.memmap`` as a picklable array-like: each task opens
    the file itself and reads its rows, instead of the data travelling through the graph."""

    def __init__(self, filename, offset, dtype, shape, order):
        self.filename, self.offset, self.order = filename, offset, order
        self.dtype, self.shape, self.ndim = np.dtype(dtype), shape, len(shape)

    @classmethod
    def of(cls, rows):
        """A reader for rows when it is a memmap over its whole mapping (not a view), else None."""
        if not (isinstance(rows, np.memmap) and isinstance(rows.base, mmap.mmap) and
                rows.filename and (rows.flags.c_contiguous or rows.flags.f_contiguous)):
            return None
        return cls(os.fspath(rows.filename), rows.offset, rows.dtype, rows.shape,
                   "C" if rows.flags.c_contiguous else "F")

    def __getitem__(self, index):
        rows = np.memmap(self.filename, self.dtype, "r", self.offset, self.shape, self.order)
        return np.array(rows[index])

    def __dask_tokenize__(self):
        return (self.filename, os.path.getmtime(self.filename), self.offset, self.dtype.str,
                self.shape, self.order)


# ---------------------------------------------------------------------------------------------
# out=: each task writes its rows into one file
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FileTarget:
    filename: str
    offset: int        # bytes before row 0
    dtype: np.dtype    # float64 in the file's byte order


def _out_target(out, n):
    """out (path or memmap) -> _FileTarget of an (n,) float64 vector; creates a path's .npy."""
    if isinstance(out, (str, os.PathLike)):
        created = np.lib.format.open_memmap(os.fspath(out), mode="w+", dtype=np.float64,
                                            shape=(n,))
        created.flush()
        return _FileTarget(os.fspath(out), created.offset, created.dtype)   # offset: the header
    if not isinstance(out, np.memmap):
        raise TypeError(f"out must be None, a path for a .npy file or a numpy.memmap, got "
                        f"{type(out).__name__}")
    if out.dtype.kind != "f" or out.dtype.itemsize != 8 or out.shape != (n,):
        raise ValueError(f"out must be a float64 memmap of shape ({n},), got {out.dtype} "
                         f"{out.shape}")
    if not (isinstance(out.base, mmap.mmap) and out.filename) or not out.flags.writeable:
        raise ValueError("out must be a writable memmap over its whole file mapping (mode 'r+' "
                         "or 'w+', not a view of one)")
    out.flush()
    return _FileTarget(os.fspath(out.filename), out.offset, out.dtype)


def _write_block(values, target, block_info=None):
    """values (n,) of rows a:a+n -> written at their place in the file; returns [n].
    Plain file writes, not a mapping: only these rows' bytes change, even when two machines
    share a page of the file over a network file system."""
    _write_rows(values, target, block_info[0]["array-location"][0][0])
    return np.array([len(values)])


def _write_rows(values, target, first_row):
    data = np.ascontiguousarray(values, dtype=target.dtype).tobytes()
    with open(target.filename, "r+b") as f:
        f.seek(target.offset + first_row * target.dtype.itemsize)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write(ll, target, client):
    """Run the write tasks; check that every chunk reported its rows once."""
    counts = da.map_blocks(_write_block, ll, target, dtype=np.int64,
                           chunks=((1,) * ll.numblocks[0],), meta=np.empty(0, np.int64))
    counts = client.compute(counts).result() if client is not None else counts.compute()
    if list(counts) != list(ll.chunks[0]):
        raise RuntimeError(f"rows written per chunk {list(counts)} != chunk sizes "
                           f"{list(ll.chunks[0])}")
