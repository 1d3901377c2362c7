"""fastvae's CPU kernels as XLA custom calls (jax.ffi), without a Python callback.

JAX-traceable primal ops, drop-in replacements for fastvae/jax.py's ``_callback(host_fn, ...)``
calls (they work under ``jax.jit`` and ``jax.vmap``, sequentially; ``jax.grad`` goes through
fastvae/jax.py's custom_vjp, which only needs the primals):

- ``elbo_loss_and_grads(beta, x, dec_out, mu, logvar[, dec_logvar], likelihood=...)``
  -> (loss 0-d, ddec_out, dmu, dlogvar[, ddec_logvar]): the numbers of
  ``fastvae.ops.elbo_loss_and_grads`` on the same inputs, bit for bit (the same Numba tile loop,
  NumPy's pairwise summation of the per-row ELBO, NumPy's own float64 exp for the Gaussian
  ``exp(-dec_logvar)``).
- ``elbo_forward(beta, x, dec_out, mu, logvar[, dec_logvar], likelihood=...)`` -> per-row ELBO
  (N,), as ``fastvae.ops.elbo_forward``.
- ``elbo_loss(beta, ...)`` -> 0-d ``-mean_n elbo_n`` as fastvae/jax.py's ``host_loss`` computes
  it (NumPy's float64 mean of the rounded rows).
- ``iwae_loss_rows(x, dec_out, mu, logvar, eps[, dec_logvar], likelihood=...)`` -> (N,)
  ``-(logsumexp_k logw_nk - log K)``, and ``iwae_loss_and_grads(dloss, x, ...)`` -> (rows, dlogw,
  ddec_out, dmu, dlogvar[, ddec_logvar]): fastvae/jax.py's ``_host_iwae_loss`` and
  ``_host_iwae_loss_and_grads`` (fastvae/cpu/iwae.py's log_weight_forward, the logsumexp and its
  float64-lse softmax, log_weight_backward), bit for bit: one tile per row block of
  log_weight_backward, each running its rows' pairs, logsumexp, softmax and backward rows; routes
  ffi-numba and pure_callback only.

- ``_host_z`` / ``_host_dlogvar`` of fastvae/jax.py (reparameterize, generated noise; seed and
  offset as (2,) uint32 words) through ``callback``: fastvae/cpu/reparam.py's noise kernels by
  the pieces of its parallel kernels; an offset out of range fails with fastvae.ops's message.

Floating point: the handler runs in its caller's environment: XLA's CPU threads flush denormals
(FTZ/DAZ), as they do for the pure_callback route's host calls, so the routes agree bit for bit;
fastvae.ops called on a NumPy thread keeps denormals and differs from both where a value is
denormal (tests/test_jax_xla.py::test_denormals_as_the_pure_callback_route).

All inputs of one float dtype (float32, or float64 under ``jax_enable_x64``); beta a 0-d array of
that dtype (traced or not). The shapes are checked by the caller (fastvae/jax.py does it at trace
time); a negative or non-finite beta and any error the kernel raises come back as an XLA error
carrying fastvae.ops's message (``jax.errors.JaxRuntimeError``), never a crash.

Routes (``route()`` says which one is in use; ``FASTVAE_XLA_ROUTE`` forces one):
- ``"ffi-numba"`` (default): fastvae/xla/fastvae_ffi.cc, compiled with the C++ compiler found
  (``$CXX``, g++, c++, clang++) at first use against ``jax.ffi.include_dir()`` into
  ``$FASTVAE_CACHE_DIR`` or ``~/.cache/fastvae/xla/<hash of source, jaxlib, compiler>``, and
  registered as the custom call target ``fastvae_call``. Its handler runs a Numba ``@cfunc``
  (compiled here, cached by Numba) that wraps XLA's buffers as arrays and calls fastvae's own
  tile loop (fastvae/cpu/elbo.py, fastvae/cpu/iwae.py): no GIL, no copy; the tiles run on
  XLA's intra-op threads (``fastvae.num_threads()`` of them, read at trace time), claimed from one atomic counter as
  fastvae's pool does, so the results are the same for any thread count.
- ``"ffi-ctypes"``: the same handler calls a ctypes Python callback (takes the GIL) that runs
  the tile loop on fastvae's own pool over zero-copy views of XLA's buffers.
- ``"pure_callback"``: ``jax.pure_callback`` into fastvae.ops, when no compiler or no jax.ffi is
  present or the build failed (``why()`` says why).
"""
import ctypes
import hashlib
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

import jax
import jax.numpy as jnp

from . import ops
from ._threads import num_threads, run_tiles
from .cpu import elbo as E
from .cpu._atomic import fetch_add
from .cpu import iwae as I
from .cpu import reparam as R
from ._reference import INDEX_LIMIT
from .cpu.elbo import ROW_TILE
from .cpu.loglik import row_blocks
from .cpu.logsumexp import _lse_row, _softmax_row
from ._reference import LOG_2PI

__all__ = ["route", "why", "available_routes", "elbo_loss_and_grads", "elbo_forward",
           "elbo_loss", "elbo_loss_with_route"]

TARGET = "fastvae_call"
ROUTES = ("ffi-numba", "ffi-ctypes", "pure_callback")
_SOURCE = pathlib.Path(__file__).parent / "xla" / "fastvae_ffi.cc"
_FLAGS = [  # changing these rebuilds the shim (they are in the cache key)
    "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-w"]

_lock = threading.RLock()
_state = {}          # "lib": ctypes.CDLL | None, "why": str, "registered": bool
_keep_alive = []     # ctypes callbacks and cfuncs the shim points at
last_error = [None]  # the exception fastvae.ops raised for the latest failed kernel call
_error_hook = [None]


def set_error_hook(fn):
    """``fn(exception)`` is called (on XLA's thread, with the GIL) with the exception
    fastvae.ops raised for each failed kernel call, before the call fails with its message:
    fastvae/jax.py's ``_surface_host_errors`` re-raises it for eager callers."""
    _error_hook[0] = fn


# ---------------------------------------------------------------------------------------------
# building and loading the shim
# ---------------------------------------------------------------------------------------------
def _compiler():
    for name in [os.environ.get("CXX"), "g++", "c++", "clang++"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir():
    base = os.environ.get("FASTVAE_CACHE_DIR")
    if base:
        return pathlib.Path(base) / "xla"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "fastvae" / "xla"


def _build():
    """-> path of the compiled shim (built if not cached), or raise OSError/RuntimeError."""
    import jaxlib
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, g++, c++, clang++)")
    include = jax.ffi.include_dir()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), include.encode(),
                                     cxx.encode(), " ".join(_FLAGS).encode(),
                                     sys.platform.encode()])).hexdigest()[:24]
    target = _cache_dir() / key / "fastvae_ffi.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cxx, *_FLAGS, "-I", include, str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, target)      # atomic: concurrent builders each install a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load():
    """The loaded, registered shim, or None (``_state["why"]`` says why)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        try:
            if os.environ.get("FASTVAE_XLA_ROUTE", "") == "pure_callback":
                raise RuntimeError("FASTVAE_XLA_ROUTE=pure_callback")
            if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "ffi_call"):
                raise RuntimeError(f"jax {jax.__version__} has no jax.ffi")
            lib = ctypes.CDLL(str(_build()))
            if lib.fv_abi_version() != 2:
                raise RuntimeError("stale shim (ABI version)")
            lib.fv_set_kernel.argtypes = [ctypes.c_int64, ctypes.c_void_p]
            lib.fv_set_kernel.restype = ctypes.c_int64
            lib.fv_set_exp_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.fv_set_explain.argtypes = [ctypes.c_void_p]
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.FastvaeCall),
                                        platform="cpu")
            _install_numpy_exp(lib)
            explain = _EXPLAIN(_explain)
            _keep_alive.append(explain)
            lib.fv_set_explain(ctypes.cast(explain, ctypes.c_void_p))
            _state["why"] = ""
        except Exception as e:       # noqa: BLE001: any failure means the fallback route
            lib = None
            _state["why"] = f"{type(e).__name__}: {e}"
        _state["lib"] = lib
        return lib


def _install_numpy_exp(lib):
    """Hand the shim NumPy's own float64 exp loop (the Gaussian inv_var = exp(-dec_logvar) of
    fastvae/cpu/loglik.py is np.exp: its SIMD loop differs from libm's exp in the last bit), if
    it gives np.exp's bits here; else the shim uses std::exp."""
    class _UFunc(ctypes.Structure):      # the public head of PyUFuncObject (ufuncobject.h)
        _fields_ = [("ob_refcnt", ctypes.c_ssize_t), ("ob_type", ctypes.c_void_p),
                    ("nin", ctypes.c_int), ("nout", ctypes.c_int), ("nargs", ctypes.c_int),
                    ("identity", ctypes.c_int), ("functions", ctypes.POINTER(ctypes.c_void_p)),
                    ("data", ctypes.POINTER(ctypes.c_void_p)), ("ntypes", ctypes.c_int)]
    try:
        u = _UFunc.from_address(id(np.exp))
        if u.nin != 1 or u.nout != 1 or u.ntypes != np.exp.ntypes:
            return
        i = np.exp.types.index("d->d")
        loop, data = u.functions[i], u.data[i]
        probe = np.random.default_rng(0).normal(0, 3, 4096)
        out = np.empty_like(probe)
        _UFUNC_LOOP(loop)((ctypes.c_char_p * 2)(probe.ctypes.data, out.ctypes.data),
                          (ctypes.c_ssize_t * 1)(probe.size), (ctypes.c_ssize_t * 2)(8, 8), data)
        if np.array_equal(out.view(np.int64), np.exp(probe).view(np.int64)):
            lib.fv_set_exp_loop(loop, data)
    except Exception:     # noqa: BLE001: std::exp then (last-bit differences in inv_var)
        pass


_UFUNC_LOOP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p)


def route():
    """The route the ops of this module take: "ffi-numba", "ffi-ctypes" or "pure_callback"."""
    forced = os.environ.get("FASTVAE_XLA_ROUTE", "")
    if forced == "pure_callback" or _load() is None:
        return "pure_callback"
    return "ffi-ctypes" if forced == "ffi-ctypes" else "ffi-numba"


def why():
    """Why the route is pure_callback ("" when an FFI route works)."""
    _load()
    return _state["why"]


def available_routes():
    return (["ffi-numba", "ffi-ctypes"] if _load() is not None else []) + ["pure_callback"]


# ---------------------------------------------------------------------------------------------
# kernels: Numba cfuncs (route ffi-numba) and ctypes callbacks (route ffi-ctypes)
# ---------------------------------------------------------------------------------------------
# A kernel id per (op, likelihood, dtype, route); _SPECS[id] = (op, likelihood, dtype).
_SPECS = {}
_IDS = {}


def _kernel_id(op, likelihood, dtype, route_name):
    op = "forward" if op == "mean" else op     # the mean runs the forward's tile loop
    key = (op, likelihood, np.dtype(dtype).name, route_name)
    with _lock:
        if key in _IDS:
            return _IDS[key]
        lib = _load()
        kid = len(_SPECS)
        fn = (_make_cfunc if route_name == "ffi-numba" else _make_ctypes)(op, likelihood,
                                                                         np.dtype(dtype))
        _keep_alive.append(fn)
        address = fn.address if route_name == "ffi-numba" else ctypes.cast(fn, ctypes.c_void_p)
        if lib.fv_set_kernel(kid, address) != 0:
            raise RuntimeError("fastvae_call: kernel table full")
        _SPECS[kid] = key[:3]
        _IDS[key] = kid
        return kid


def _iwae_blocks(n):
    # fastvae/cpu/iwae.py::log_weight_backward's row blocks (its ddec_logvar partial rows)
    return max(1, min(I.MAX_BLOCKS, -(-n // I.ROWS_PER_BLOCK)))


def _tiles(op, likelihood, n):
    if op in IWAE_OPS:
        return _iwae_blocks(n)
    if op in REPARAM_OPS:          # n: the element count
        return max(1, -(-n // R.PARALLEL_PIECE))
    if op == "loss" and likelihood == "gaussian":
        return row_blocks(n)
    return -(-n // ROW_TILE)


def _finish(op, likelihood, reduction="mean"):
    # fastvae/xla/fastvae_ffi.cc's flags: 1 loss sum, 2 ddec_logvar, 4 inv_var, 8 mean,
    # 16 sum instead of mean, 32 the Bernoulli x check's flags
    gaussian = likelihood == "gaussian"
    if op in REPARAM_OPS:
        return 0
    if op in IWAE_OPS:     # 64 the IWAE layout, 128 a cotangent input first
        return {"iwae_loss": 64, "iwae_grads": 192}[op] | ((6 if op == "iwae_grads" else 4)
                                                           if gaussian else 0)
    flags = {"loss": 7 if gaussian else 1, "forward": 4 if gaussian else 0,
             "mean": 12 if gaussian else 8}[op]
    if not gaussian:
        flags |= 32
    return flags | (16 if reduction == "sum" else 0)


_compiled = {}


def _numba_parts():
    """The Numba pieces, imported (and compiled or loaded from Numba's cache) once."""
    if not _compiled:
        import numba
        from numba import types

        # no fast-math (see _iwae_tiles_py), cached as the kernels are
        iwae_tiles = numba.njit(cache=True, nogil=True, error_model="numpy")(_iwae_tiles_py)
        reparam_tiles = numba.njit(cache=True, nogil=True, error_model="numpy")(
            _reparam_tiles_py)
        _compiled.update(numba=numba, types=types, E=E, iwae_tiles=iwae_tiles,
                         reparam_tiles=reparam_tiles,
                         forward_bernoulli_tiles=E.elbo_bernoulli_forward_tiles,
                         forward_gaussian_tiles=E.elbo_gaussian_forward_tiles)
    return _compiled


def _good_beta(beta):
    return beta >= 0.0 and beta < np.inf


# ---------------------------------------------------------------------------------------------
# IWAE: fastvae/cpu/iwae.py's log_weight_forward + logsumexp (+ iwae_backward +
# log_weight_backward) by tiles of log_weight_backward's row blocks
# ---------------------------------------------------------------------------------------------
IWAE_OPS = ("iwae_loss", "iwae_grads")
# no fast-math here: the few operations of this loop itself keep their IEEE order (-0.5 (d
# log 2 pi + sum lv), the estimate's roundings); the row functions it calls keep their own flags

def _iwae_tiles_py(counter, n_tiles, rows, dlogw, ddec, dmu, dlv, partial, dloss, x, dec, mu,
                   logvar, sigma, eps, inv_var, consts, gaussian, grads, logk):
    # Tile b = rows b n / B .. (b + 1) n / B (B = n_tiles, log_weight_backward's blocks). Per row:
    # logw_nk = _log_weight_pair (log_weight_forward_kernel's pairs), lse64 = _lse_row
    # (logsumexp_forward_kernel), rows_n = -(dtype(float64(dtype(lse64)) - log K)) (iwae_forward);
    # with grads, dlogw_n = _softmax_row(-dloss_n) (logsumexp_backward_kernel); then the block's
    # _log_weight_backward_rows into its partial row. -> True if a Bernoulli x was outside [0, 1].
    n, k = dec.shape[0], dec.shape[1]
    logw = np.empty(k, dtype=x.dtype)
    bad = False
    while True:
        b = fetch_add(counter, 0, 1)
        if b >= n_tiles:
            return bad
        d = x.shape[1]
        gauss_const = -0.5 * (d * LOG_2PI + consts[0]) if gaussian else 0.0
        start, stop = b * n // n_tiles, (b + 1) * n // n_tiles
        for i in range(start, stop):
            for j in range(k):
                logw[j], pair_bad = I._log_weight_pair(x, dec, mu, logvar, sigma, eps, inv_var,
                                                       gauss_const, gaussian, i, j)
                bad |= pair_bad
            lse64 = _lse_row(logw)
            rows[i] = -x.dtype.type(np.float64(x.dtype.type(lse64)) - logk)
            if grads:
                _softmax_row(dlogw[i], -dloss[i], logw, lse64)
        if grads:
            I._log_weight_backward_rows(ddec, dmu, dlv, partial[b], dlogw, x, dec, mu, sigma, eps,
                                        inv_var, gaussian, start, stop)
        fetch_add(counter, 1, 1)


def _make_iwae_cfunc(op, likelihood, dtype):
    """The cfunc of ``iwae_loss`` (inputs x, dec_out, mu, logvar, eps[, dec_logvar]; output
    rows (N,)) or ``iwae_grads`` (inputs dloss (N,), then those; outputs rows, dlogw (N, K),
    ddec_out, dmu, dlogvar[, ddec_logvar (D,), reduced by the shim from the partial rows]).
    0 ok, 1 a Bernoulli x outside [0, 1] (or the kernel raised)."""
    P = _numba_parts()
    numba, types = P["numba"], P["types"]
    tiles = P["iwae_tiles"]
    carray = numba.carray
    sig = types.int64(types.CPointer(types.voidptr), types.CPointer(types.int64),
                      types.CPointer(types.int64))
    gaussian = likelihood == "gaussian"
    grads = op == "iwae_grads"
    xi = 1 if grads else 0
    o = xi + (6 if gaussian else 5)          # the first output
    max_blocks, per_block = I.MAX_BLOCKS, I.ROWS_PER_BLOCK

    def body(bufs, dims, counter):
        # nothing is read before a tile is claimed (a late helper claims none)
        n, d = dims[4 * xi], dims[4 * xi + 1]
        k, l = dims[4 * (xi + 1) + 1], dims[4 * (xi + 2) + 1]
        b = max(1, min(max_blocks, (n + per_block - 1) // per_block))
        x = carray(bufs[xi], (n, d), dtype)
        dec = carray(bufs[xi + 1], (n, k, d), dtype)
        mu, lv = carray(bufs[xi + 2], (n, l), dtype), carray(bufs[xi + 3], (n, l), dtype)
        eps = carray(bufs[xi + 4], (n, k, l), dtype)
        sigma = carray(bufs[16], (n, l), np.float64)
        if gaussian:
            inv_var = carray(bufs[18], (d,), dtype)
            consts = carray(bufs[19], (1,), np.float64)
        else:
            inv_var = np.empty(0, dtype)
            consts = np.zeros(1, np.float64)
        rows = carray(bufs[o], (n,), dtype)
        if grads:
            dloss = carray(bufs[0], (n,), dtype)
            dlogw = carray(bufs[o + 1], (n, k), dtype)
            ddec = carray(bufs[o + 2], (n, k, d), dtype)
            dmu, dlv = carray(bufs[o + 3], (n, l), dtype), carray(bufs[o + 4], (n, l), dtype)
        else:
            dloss = np.empty(0, dtype)
            dlogw = np.empty((0, 0), dtype)
            ddec = np.empty((0, 0, 0), dtype)
            dmu, dlv = np.empty((0, 0), dtype), np.empty((0, 0), dtype)
        if gaussian and grads:
            partial = carray(bufs[17], (b, d), np.float64)
        else:
            partial = np.empty((b, 0), np.float64)
        logk = math.log(np.float64(k))
        try:
            if tiles(carray(counter, (2,)), b, rows, dlogw, ddec, dmu, dlv, partial, dloss, x,
                     dec, mu, lv, sigma, eps, inv_var, consts, gaussian, grads, logk):
                return 1
        except Exception:   # noqa: BLE001
            return 1
        return 0
    return numba.cfunc(sig, nopython=True)(body)


# ---------------------------------------------------------------------------------------------
# reparameterize: fastvae/cpu/reparam.py's generated-noise kernels by its parallel pieces
# ---------------------------------------------------------------------------------------------
REPARAM_OPS = ("reparam_z", "reparam_dlogvar")


def _reparam_tiles_py(counter, n_tiles, out, dz, mu, logvar, seed, offset, backward, piece,
                      limit):
    # Tile t = elements t piece .. of the flat arrays, as reparam_noise_*_parallel_kernel's
    # pieces. seed, offset: (2,) uint32 (lo, hi) words. -> True if offset (or offset + size) is
    # out of range (fastvae.ops raises), checked after a tile is claimed.
    n = logvar.size
    dmu = np.empty(min(piece, n), dtype=logvar.dtype)    # the backward's dmu, discarded
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return False
        k0, k1 = np.uint64(seed[0]), np.uint64(seed[1])
        off = np.uint64(offset[0]) | (np.uint64(offset[1]) << np.uint64(32))
        if off >= np.uint64(limit) or off + np.uint64(n) >= np.uint64(limit):
            fetch_add(counter, 1, 1)
            return True
        lo = t * piece
        hi = min(lo + piece, n)
        first = np.int64(off) + lo
        if backward:
            R.reparam_noise_backward_kernel(dmu[:hi - lo], out[lo:hi], dz[lo:hi], logvar[lo:hi],
                                            k0, k1, first)
        else:
            R.reparam_noise_forward_kernel(out[lo:hi], mu[lo:hi], logvar[lo:hi], k0, k1, first)
        fetch_add(counter, 1, 1)


def _make_reparam_cfunc(op, dtype):
    """``reparam_z``: inputs mu, logvar (N, L), seed, offset (2,) uint32; output z.
    ``reparam_dlogvar``: inputs dz, mu, logvar, seed, offset; output dlogvar. 0 ok, 1 a bad
    offset or the kernel raised."""
    P = _numba_parts()
    numba, types = P["numba"], P["types"]
    tiles = P["reparam_tiles"]
    carray = numba.carray
    sig = types.int64(types.CPointer(types.voidptr), types.CPointer(types.int64),
                      types.CPointer(types.int64))
    backward = op == "reparam_dlogvar"
    b0 = 1 if backward else 0
    piece, limit = R.PARALLEL_PIECE, INDEX_LIMIT

    def body(bufs, dims, counter):
        n = dims[4 * b0] * dims[4 * b0 + 1]
        mu = carray(bufs[b0], (n,), dtype)
        lv = carray(bufs[b0 + 1], (n,), dtype)
        seed = carray(bufs[b0 + 2], (2,), np.uint32)
        offset = carray(bufs[b0 + 3], (2,), np.uint32)
        out = carray(bufs[b0 + 4], (n,), dtype)
        dz = carray(bufs[0], (n,), dtype)
        n_tiles = max(1, (n + piece - 1) // piece)
        try:
            if tiles(carray(counter, (2,)), n_tiles, out, dz, mu, lv, seed, offset, backward,
                     piece, limit):
                return 1
        except Exception:   # noqa: BLE001
            return 1
        return 0
    return numba.cfunc(sig, nopython=True)(body)


def _make_cfunc(op, likelihood, dtype):
    """A Numba cfunc ``int64(void** bufs, int64* dims, int64* counter)`` running the op's tile
    loop over XLA's buffers (layout: fastvae/xla/fastvae_ffi.cc). 0 ok, 1 the kernel raised, 2
    a bad beta."""
    if op in IWAE_OPS:
        return _make_iwae_cfunc(op, likelihood, dtype)
    if op in REPARAM_OPS:
        return _make_reparam_cfunc(op, dtype)
    P = _numba_parts()
    numba, types, E = P["numba"], P["types"], P["E"]
    carray = numba.carray
    sig = types.int64(types.CPointer(types.voidptr), types.CPointer(types.int64),
                      types.CPointer(types.int64))
    rows = E.ROW_TILE
    good_beta = numba.njit(_good_beta)
    if op == "loss" and likelihood == "bernoulli":
        tiles = E.elbo_bernoulli_loss_grads_tiles

        def body(bufs, dims, counter):
            n, d, l = dims[4], dims[5], dims[13]
            beta = np.float64(carray(bufs[0], (1,), dtype)[0])
            if not good_beta(beta):
                return 2
            x, dec = carray(bufs[1], (n, d), dtype), carray(bufs[2], (n, d), dtype)
            mu, lv = carray(bufs[3], (n, l), dtype), carray(bufs[4], (n, l), dtype)
            ddec = carray(bufs[6], (n, d), dtype)
            dmu, dlv = carray(bufs[7], (n, l), dtype), carray(bufs[8], (n, l), dtype)
            elbo = carray(bufs[16], (n,), np.float64)
            bad = carray(bufs[19], (n,), np.bool_)
            try:
                tiles(carray(counter, (2,)), -(-n // rows), elbo, bad, ddec, dmu, dlv, x, dec, mu,
                      lv, -1.0 / n, beta, rows)
            except Exception:   # noqa: BLE001
                return 1
            return 0
    elif op == "loss":
        tiles = E.elbo_gaussian_loss_grads_tiles

        def body(bufs, dims, counter):
            n, d, l, b = dims[4], dims[5], dims[13], dims[68]
            beta = np.float64(carray(bufs[0], (1,), dtype)[0])
            if not good_beta(beta):
                return 2
            x, mean = carray(bufs[1], (n, d), dtype), carray(bufs[2], (n, d), dtype)
            mu, lv = carray(bufs[3], (n, l), dtype), carray(bufs[4], (n, l), dtype)
            dec_lv = carray(bufs[5], (d,), dtype)
            dmean = carray(bufs[7], (n, d), dtype)
            dmu, dlv = carray(bufs[8], (n, l), dtype), carray(bufs[9], (n, l), dtype)
            elbo = carray(bufs[16], (n,), np.float64)
            partial = carray(bufs[17], (b, d), np.float64)
            inv_var = carray(bufs[18], (d,), np.float64)
            try:
                tiles(carray(counter, (2,)), b, elbo, dmean, partial, dmu, dlv, x, mean, mu, lv,
                      dec_lv, inv_var, -1.0 / n, beta)
            except Exception:   # noqa: BLE001
                return 1
            return 0
    elif likelihood == "bernoulli":
        tiles = P["forward_bernoulli_tiles"]

        def body(bufs, dims, counter):
            n, d, l = dims[4], dims[5], dims[13]
            beta = np.float64(carray(bufs[0], (1,), dtype)[0])
            if not good_beta(beta):
                return 2
            x, dec = carray(bufs[1], (n, d), dtype), carray(bufs[2], (n, d), dtype)
            mu, lv = carray(bufs[3], (n, l), dtype), carray(bufs[4], (n, l), dtype)
            elbo = carray(bufs[5], (n,), dtype)
            bad = carray(bufs[19], (n,), np.bool_)
            try:
                tiles(carray(counter, (2,)), -(-n // rows), elbo, bad, x, dec, mu, lv, beta,
                      rows)
            except Exception:   # noqa: BLE001
                return 1
            return 0
    else:
        tiles = P["forward_gaussian_tiles"]

        def body(bufs, dims, counter):
            n, d, l = dims[4], dims[5], dims[13]
            beta = np.float64(carray(bufs[0], (1,), dtype)[0])
            if not good_beta(beta):
                return 2
            x, mean = carray(bufs[1], (n, d), dtype), carray(bufs[2], (n, d), dtype)
            mu, lv = carray(bufs[3], (n, l), dtype), carray(bufs[4], (n, l), dtype)
            dec_lv = carray(bufs[5], (d,), dtype)
            elbo = carray(bufs[6], (n,), dtype)
            inv_var = carray(bufs[18], (d,), np.float64)
            try:
                tiles(carray(counter, (2,)), -(-n // rows), elbo, x, mean, mu, lv, dec_lv,
                      inv_var, beta, rows)
            except Exception:   # noqa: BLE001
                return 1
            return 0
    return numba.cfunc(sig, nopython=True)(body)   # closures: not cached by Numba (~0.6 s)


_TILE_LOOP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                              ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64))
_EXPLAIN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                            ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_void_p,
                            ctypes.c_int64)


def _view(address, shape, dtype):
    """A NumPy array over ``size`` elements at ``address`` (no copy)."""
    count = int(np.prod(shape))
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


def _views(kid_or_spec, bufs, dims, n_bufs):
    """(inputs, outputs) of one call as NumPy views: shapes from dims, dtypes from the spec."""
    op, likelihood, dtype = kid_or_spec
    dtype = np.dtype(dtype)
    n_in = 6 if likelihood == "gaussian" else 5
    n_out = (5 if likelihood == "gaussian" else 4) if op == "loss" else 1
    arrays = []
    for i in range(n_in + n_out):   # every dimension is >= 1: the shape ends at the first 0
        shape = tuple(dims[4 * i + j] for j in range(4))
        shape = shape[:shape.index(0)] if 0 in shape else shape
        arrays.append(_view(bufs[i], shape, dtype))
    return arrays[:n_in], arrays[n_in:]


def _make_ctypes(op, likelihood, dtype):
    """Route ffi-ctypes: a ctypes callback (takes the GIL) that runs the same tile loop as the
    cfunc on fastvae's own pool (fastvae/_threads.py) over zero-copy views of XLA's buffers and
    of the shim's scratch (the shim then finishes the call as for the cfunc)."""
    P = _numba_parts()
    E = P["E"]
    spec = (op, likelihood, dtype.name)
    cached = {}

    def tile_loop(bufs, dims, counter):
        try:
            key = tuple(bufs[i] for i in range(20)) + tuple(dims[i] for i in range(80))
            views = cached.get(key)     # XLA reuses its buffers: views of the same memory
            if views is None:
                if len(cached) > 64:
                    cached.clear()
                ins, outs = _views(spec, bufs, dims, 16)
                n, d = ins[1].shape
                scratch = [_view(bufs[16], (n,), np.dtype(np.float64)) if bufs[16] else None,
                           _view(bufs[17], (dims[68], d), np.dtype(np.float64))
                           if bufs[17] else None,
                           _view(bufs[18], (d,), np.dtype(np.float64)) if bufs[18] else None,
                           _view(bufs[19], (n,), np.dtype(np.bool_)) if bufs[19] else None]
                views = cached[key] = (ins, outs, scratch)
            ins, outs, (elbo, partial, inv_var, bad) = views
            beta = float(ins[0])
            if not _good_beta(beta):
                return 2
            x, dec, mu, lv = ins[1:5]
            n, rows = x.shape[0], E.ROW_TILE
            if op == "loss" and likelihood == "bernoulli":
                run_tiles(-(-n // rows), E.elbo_bernoulli_loss_grads_tiles, elbo,
                          bad, outs[1], outs[2], outs[3], x, dec, mu, lv, -1.0 / n, beta,
                          rows)
            elif op == "loss":
                run_tiles(partial.shape[0], E.elbo_gaussian_loss_grads_tiles, elbo, outs[1],
                          partial, outs[2], outs[3], x, dec, mu, lv, ins[5], inv_var, -1.0 / n,
                          beta)
            elif likelihood == "bernoulli":
                run_tiles(-(-n // rows), P["forward_bernoulli_tiles"], outs[0],
                          bad, x, dec, mu, lv, beta, rows)
            else:
                run_tiles(-(-n // rows), P["forward_gaussian_tiles"], outs[0], x, dec, mu, lv,
                          ins[5], inv_var, beta, rows)
            return 0
        except Exception:   # noqa: BLE001: the explainer reruns fastvae.ops for the message
            return 1
    return _TILE_LOOP(tile_loop)


def _explain(kid, bufs, dims, n_bufs, message, size):
    """The message of the error fastvae.ops raises on the inputs of a failed call."""
    try:
        op, likelihood, dtype = _SPECS[kid]
        if op in IWAE_OPS:
            return _explain_iwae(op, likelihood, dtype, bufs, dims, message, size)
        if op in REPARAM_OPS:
            return _explain_reparam(op, dtype, bufs, dims, message, size)
        ins, _ = _views((op, likelihood, dtype), bufs, dims, n_bufs)
        kwargs = dict(likelihood=likelihood, dec_logvar=ins[5] if likelihood == "gaussian"
                      else None, beta=float(ins[0]))
        text = "fastvae kernel failed, but fastvae.ops raised nothing on the same inputs"
        try:
            if op == "loss":
                ops.elbo_loss_and_grads(*ins[1:5], **kwargs)
            else:
                ops.elbo_forward(*ins[1:5], **kwargs)
        except Exception as e:   # noqa: BLE001
            text = f"{type(e).__name__}: {e}"
            last_error[0] = e
            if _error_hook[0] is not None:
                _error_hook[0](e)
        data = text.encode("utf-8", "replace")[:size - 1] + b"\0"
        ctypes.memmove(message, data, len(data))
        return 0
    except Exception:   # noqa: BLE001
        return 1


def _report(e, message, size):
    text = "fastvae kernel failed, but fastvae.ops raised nothing on the same inputs"
    if e is not None:
        text = f"{type(e).__name__}: {e}"
        last_error[0] = e
        if _error_hook[0] is not None:
            _error_hook[0](e)
    data = text.encode("utf-8", "replace")[:size - 1] + b"\0"
    ctypes.memmove(message, data, len(data))
    return 0


def _explain_iwae(op, likelihood, dtype, bufs, dims, message, size):
    """The message of fastvae.ops.log_weight_forward's error on a failed IWAE call's inputs."""
    xi = 1 if op == "iwae_grads" else 0
    views = []
    for i in range(xi, xi + (6 if likelihood == "gaussian" else 5)):
        shape = tuple(dims[4 * i + j] for j in range(4))
        shape = shape[:shape.index(0)] if 0 in shape else shape
        views.append(_view(bufs[i], shape, np.dtype(dtype)))
    err = None
    try:
        ops.log_weight_forward(*views[:5], likelihood=likelihood,
                               dec_logvar=views[5] if likelihood == "gaussian" else None)
    except Exception as e:   # noqa: BLE001
        err = e
    return _report(err, message, size)


def _explain_reparam(op, dtype, bufs, dims, message, size):
    """The message of fastvae.ops.reparam_forward's error on a failed reparam call's inputs."""
    b0 = 1 if op == "reparam_dlogvar" else 0
    shape = (dims[4 * b0], dims[4 * b0 + 1])
    mu, lv = (_view(bufs[b0 + i], shape, np.dtype(dtype)) for i in range(2))
    seed, offset = (_view(bufs[b0 + i], (2,), np.dtype(np.uint32)) for i in (2, 3))
    err = None
    try:
        ops.reparam_forward(mu, lv, seed=int(seed[0]) | int(seed[1]) << 32,
                            offset=int(offset[0]) | int(offset[1]) << 32)
    except Exception as e:   # noqa: BLE001
        err = e
    return _report(err, message, size)


def _reparam_ffi(op, arrays, out_type):
    """Route ffi-numba: arrays = [dz for "reparam_dlogvar"], mu, logvar, seed, offset."""
    mu = arrays[1 if op == "reparam_dlogvar" else 0]
    kid = _kernel_id(op, "none", mu.dtype, "ffi-numba")
    call = jax.ffi.ffi_call(TARGET, [out_type], vmap_method="sequential")
    return call(*arrays, kernel=np.int64(kid), finish=np.int64(0), threads=np.int64(_threads()),
                n_tiles=np.int64(_tiles(op, None, mu.size)))[0]


# ---------------------------------------------------------------------------------------------
# the JAX ops
# ---------------------------------------------------------------------------------------------
def _threads():
    return num_threads()


def _ffi(route_name, op, likelihood, beta, arrays, out_types, reduction="mean"):
    x = arrays[0]
    n = x.shape[0]
    kid = _kernel_id(op, likelihood, x.dtype, route_name)
    call = jax.ffi.ffi_call(TARGET, out_types, vmap_method="sequential")
    finish = _finish(op, likelihood, reduction)
    return call(beta, *arrays, kernel=np.int64(kid), finish=np.int64(finish),
                threads=np.int64(_threads() if route_name == "ffi-numba" else 1),
                n_tiles=np.int64(_tiles(op, likelihood, n)))


def _iwae_ffi(op, likelihood, arrays, out_types):
    """Route ffi-numba, the IWAE ops: arrays = [dloss (N,) for "iwae_grads"], x, dec_out, mu,
    logvar, eps[, dec_logvar], all of one float dtype."""
    x = arrays[1 if op == "iwae_grads" else 0]
    kid = _kernel_id(op, likelihood, x.dtype, "ffi-numba")
    call = jax.ffi.ffi_call(TARGET, out_types, vmap_method="sequential")
    return call(*arrays, kernel=np.int64(kid), finish=np.int64(_finish(op, likelihood)),
                threads=np.int64(_threads()), n_tiles=np.int64(_tiles(op, likelihood,
                                                                      x.shape[0])))


def _iwae_out_types(op, arrays):
    x, dec_out, mu = arrays[:3]
    (n, k, _), dtype = dec_out.shape, x.dtype
    out = [jax.ShapeDtypeStruct((n,), dtype)]
    if op == "iwae_grads":
        out += [jax.ShapeDtypeStruct((n, k), dtype), jax.ShapeDtypeStruct(dec_out.shape, dtype),
                jax.ShapeDtypeStruct(mu.shape, dtype), jax.ShapeDtypeStruct(mu.shape, dtype)]
        out += [jax.ShapeDtypeStruct(a.shape, dtype) for a in arrays[5:]]
    return out


def _iwae_host(op, likelihood):
    """fastvae/jax.py's _host_iwae_loss / _host_iwae_loss_and_grads, on NumPy arrays."""
    def host(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        dloss, arrays = (arrays[0], arrays[1:]) if op == "iwae_grads" else (None, arrays)
        logw, weight_cache = ops.log_weight_forward(
            *arrays[:5], likelihood=likelihood,
            dec_logvar=arrays[5] if likelihood == "gaussian" else None)
        estimate, iwae_cache = ops.iwae_forward(logw)
        if dloss is None:
            return (-estimate,)
        dlogw = ops.iwae_backward(-dloss, iwae_cache)
        return (-estimate, dlogw, *ops.log_weight_backward(dlogw, weight_cache))
    return host


def _iwae_op(op, likelihood, route_name, dloss, arrays):
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    if len(arrays) != (6 if likelihood == "gaussian" else 5):
        raise ValueError("x, dec_out, mu, logvar, eps[, dec_logvar (gaussian only)] expected")
    arrays = [jnp.asarray(a) for a in arrays]
    out_types = _iwae_out_types(op, arrays)
    ins = ([jnp.asarray(dloss)] if op == "iwae_grads" else []) + arrays
    dtype = arrays[0].dtype
    if dtype not in (jnp.float32, jnp.float64) or any(a.dtype != dtype for a in ins):
        raise TypeError(f"all arrays must be of one float dtype (float32 or float64), got "
                        f"{[str(a.dtype) for a in ins]}")
    if (route_name or route()) == "pure_callback":
        return tuple(jax.pure_callback(_iwae_host(op, likelihood), out_types, *ins,
                                       vmap_method="sequential"))
    if (route_name or route()) != "ffi-numba":
        raise ValueError("the IWAE ops have the routes 'ffi-numba' and 'pure_callback'")
    return tuple(_iwae_ffi(op, likelihood, ins, out_types))


def iwae_loss_rows(x, dec_out, mu, logvar, eps, dec_logvar=None, *, likelihood="bernoulli",
                   route_name=None):
    """-> (N,) ``-(logsumexp_k logw_nk - log K)``: fastvae/jax.py's ``_host_iwae_loss``
    (fastvae.ops.log_weight_forward + iwae_forward) as a JAX op, bit for bit."""
    arrays = [x, dec_out, mu, logvar, eps] + ([dec_logvar] if dec_logvar is not None else [])
    return _iwae_op("iwae_loss", likelihood, route_name, None, arrays)[0]


def iwae_loss_and_grads(dloss, x, dec_out, mu, logvar, eps, dec_logvar=None, *,
                        likelihood="bernoulli", route_name=None):
    """dloss (N,) -> (rows (N,), dlogw (N, K), ddec_out, dmu, dlogvar[, ddec_logvar]):
    fastvae/jax.py's ``_host_iwae_loss_and_grads`` as a JAX op, bit for bit."""
    arrays = [x, dec_out, mu, logvar, eps] + ([dec_logvar] if dec_logvar is not None else [])
    return _iwae_op("iwae_grads", likelihood, route_name, dloss, arrays)


def _arrays(beta, x, dec_out, mu, logvar, dec_logvar, likelihood):
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    if (likelihood == "gaussian") != (dec_logvar is not None):
        raise ValueError("dec_logvar is given for (and only for) likelihood='gaussian'")
    arrays = [jnp.asarray(a) for a in (x, dec_out, mu, logvar)]
    if dec_logvar is not None:
        arrays.append(jnp.asarray(dec_logvar))
    dtype = arrays[0].dtype
    if dtype not in (jnp.float32, jnp.float64) or any(a.dtype != dtype for a in arrays):
        raise TypeError(f"all arrays must be of one float dtype (float32 or float64), got "
                        f"{[str(a.dtype) for a in arrays]}")
    beta = jnp.asarray(beta)
    if beta.shape != ():
        raise ValueError(f"beta must be 0-d, got shape {beta.shape}")
    return beta.astype(dtype), arrays


def _host_fallback(op, likelihood, beta, arrays, out_types):
    """Route pure_callback: fastvae.ops through jax.pure_callback (fastvae/jax.py's way)."""

    def on_host(beta, *host):
        host = [np.asarray(a) for a in host]
        kwargs = dict(likelihood=likelihood, dec_logvar=host[4] if len(host) > 4 else None,
                      beta=float(beta))
        if op == "loss":
            loss, grads = ops.elbo_loss_and_grads(*host[:4], **kwargs)
            return (np.asarray(loss, dtype=grads[0].dtype), *grads)
        elbo, _ = ops.elbo_forward(*host[:4], **kwargs)
        if op == "forward":
            return elbo
        return np.asarray(-np.mean(elbo, dtype=np.float64), dtype=elbo.dtype)
    return jax.pure_callback(on_host, out_types, beta, *arrays, vmap_method="sequential")


def _dispatch(op, likelihood, beta, arrays, out_types, route_name=None):
    route_name = route_name or route()
    if route_name == "pure_callback":
        return _host_fallback(op, likelihood, beta, arrays, out_types)
    return _ffi(route_name, op, likelihood, beta, arrays, out_types)


def elbo_loss_and_grads(beta, x, dec_out, mu, logvar, dec_logvar=None, *,
                        likelihood="bernoulli", route_name=None):
    """-> (loss 0-d, ddec_out, dmu, dlogvar[, ddec_logvar]) of ``loss = -mean_n elbo_n``:
    ``fastvae.ops.elbo_loss_and_grads`` as a JAX op (module docstring)."""
    beta, arrays = _arrays(beta, x, dec_out, mu, logvar, dec_logvar, likelihood)
    dtype = arrays[0].dtype
    out_types = [jax.ShapeDtypeStruct((), dtype)] + [jax.ShapeDtypeStruct(a.shape, dtype)
                                                      for a in arrays[1:]]
    return tuple(_dispatch("loss", likelihood, beta, arrays, out_types, route_name))


def elbo_forward(beta, x, dec_out, mu, logvar, dec_logvar=None, *, likelihood="bernoulli",
                 route_name=None):
    """-> per-row ELBO (N,): ``fastvae.ops.elbo_forward(...)[0]`` as a JAX op."""
    beta, arrays = _arrays(beta, x, dec_out, mu, logvar, dec_logvar, likelihood)
    out = jax.ShapeDtypeStruct((arrays[0].shape[0],), arrays[0].dtype)
    if (route_name or route()) == "pure_callback":
        return _host_fallback("forward", likelihood, beta, arrays, out)
    return _ffi(route_name or route(), "forward", likelihood, beta, arrays, [out])[0]


def elbo_loss(beta, x, dec_out, mu, logvar, dec_logvar=None, *, likelihood="bernoulli",
              route_name=None):
    """-> 0-d ``-mean_n elbo_n`` from the forward kernel alone, as fastvae/jax.py's host_loss:
    ``-np.mean(elbo, dtype=np.float64)`` of the per-row ELBO (rounded to the dtype), rounded to
    the dtype."""
    beta, arrays = _arrays(beta, x, dec_out, mu, logvar, dec_logvar, likelihood)
    n, dtype = arrays[0].shape[0], arrays[0].dtype
    out_types = [jax.ShapeDtypeStruct((n,), dtype), jax.ShapeDtypeStruct((), dtype)]
    if (route_name or route()) == "pure_callback":
        return _host_fallback("mean", likelihood, beta, arrays, out_types[1])
    return _ffi(route_name or route(), "mean", likelihood, beta, arrays, out_types)[1]


# ---------------------------------------------------------------------------------------------
# fastvae.jax.elbo_loss's custom_vjp on a chosen route (for benchmarks/dev/jax_ffi.py)
# ---------------------------------------------------------------------------------------------
def elbo_loss_with_route(route_name, likelihood="bernoulli"):
    """``fvj.elbo_loss``'s Bernoulli/Gaussian loss (x, dec_out, mu, logvar[, dec_logvar],
    beta=1.0) with its forward run by ``elbo_loss_and_grads`` on ``route_name``: the
    integration fastvae/jax.py would get, for measuring."""
    @jax.custom_vjp
    def loss_fn(beta, *arrays):
        return elbo_loss_and_grads(beta, *arrays, likelihood=likelihood,
                                   route_name=route_name)[0]

    def forward(beta, *arrays):
        loss, *grads = elbo_loss_and_grads(beta, *arrays, likelihood=likelihood,
                                           route_name=route_name)
        return loss, (grads, arrays[1:4])

    def backward(residuals, dloss):
        grads, (dec_out, mu, logvar) = residuals
        dx = -grads[0] if likelihood == "gaussian" else -dec_out / dec_out.shape[0]
        dbeta = 0.5 * jnp.mean(jnp.sum(mu * mu + jnp.expm1(logvar) - logvar, axis=1))
        return (dbeta * dloss, dx * dloss, *(g * dloss for g in grads))

    loss_fn.defvjp(forward, backward)

    def elbo_loss_(x, dec_out, mu, logvar, dec_logvar=None, beta=1.0):
        arrays = [x, dec_out, mu, logvar] + ([dec_logvar] if dec_logvar is not None else [])
        return loss_fn(jnp.asarray(beta, x.dtype), *arrays)
    return elbo_loss_


# ---------------------------------------------------------------------------------------------
# fastvae/jax.py's host indirection
# ---------------------------------------------------------------------------------------------
def callback(host_fn, shapes, *args, fallback):
    """``fastvae.jax._callback(host_fn, shapes, *args)`` on an FFI route where one exists for
    ``host_fn``, else ``fallback(host_fn, shapes, *args)`` (jax.pure_callback). -> a tuple of
    arrays with ``shapes``: the numbers the host function gives, bit for bit.

    Handled: a ``functools.partial`` binding ``likelihood`` (and optionally ``reduction``, "mean"
    or "sum"; "none" for _host_elbo_loss) of fastvae/jax.py's ``_host_elbo_loss_and_grads``,
    ``_host_elbo_loss`` and ``_host_elbo_forward``, args (beta, x, dec_out, mu, logvar[,
    dec_logvar]) of one float dtype; on route ffi-numba, ``_host_iwae_loss`` (args x, dec_out,
    mu, logvar, eps[, dec_logvar]) and ``_host_iwae_loss_and_grads`` (dloss (N,) first),
    ``_host_z`` (mu, logvar, seed, offset: (2,) uint32 words) and ``_host_dlogvar`` (dz first).
    Everything else (the per-row ELBO backward) takes ``fallback``."""
    route_name = route()
    fn = getattr(host_fn, "func", host_fn)
    kw = getattr(host_fn, "keywords", None) or {}
    name = getattr(fn, "__name__", "")
    likelihood, reduction = kw.get("likelihood"), kw.get("reduction", "mean")
    if name in ("_host_iwae_loss", "_host_iwae_loss_and_grads"):
        return _iwae_callback(name, route_name, likelihood, kw, shapes, host_fn, args, fallback)
    if name in ("_host_z", "_host_dlogvar"):
        return _reparam_callback(name, route_name, kw, shapes, host_fn, args, fallback)
    ok = (route_name != "pure_callback" and likelihood in ("bernoulli", "gaussian")
          and jax.default_backend() == "cpu"      # the target is registered for the CPU only
          and set(kw) <= {"likelihood", "reduction"}
          and len(args) == (6 if likelihood == "gaussian" else 5)
          and all(getattr(a, "dtype", None) == args[1].dtype and getattr(a, "ndim", -1) >= 0
                  for a in args)
          and args[1].dtype in (jnp.float32, jnp.float64) and args[0].ndim == 0)
    if not ok:
        return fallback(host_fn, shapes, *args)
    beta, arrays = args[0], list(args[1:])
    n, dtype = arrays[0].shape[0], arrays[0].dtype
    if name == "_host_elbo_loss_and_grads" and reduction in ("mean", "sum"):
        out_types = [jax.ShapeDtypeStruct((), dtype)] + [jax.ShapeDtypeStruct(a.shape, dtype)
                                                          for a in arrays[1:]]
        loss, *grads = _ffi(route_name, "loss", likelihood, beta, arrays, out_types, reduction)
        if reduction == "sum":           # as the host did: g * dtype.type(n), one rounding
            grads = [g * jnp.asarray(n, dtype) for g in grads]
        return (loss, *grads)
    if name == "_host_elbo_forward" or (name == "_host_elbo_loss" and reduction == "none"):
        rows = _ffi(route_name, "forward", likelihood, beta, arrays,
                    [jax.ShapeDtypeStruct((n,), dtype)])[0]
        return (rows,) if name == "_host_elbo_forward" else (-rows,)
    if name == "_host_elbo_loss" and reduction in ("mean", "sum"):
        out_types = [jax.ShapeDtypeStruct((n,), dtype), jax.ShapeDtypeStruct((), dtype)]
        return (_ffi(route_name, "mean", likelihood, beta, arrays, out_types, reduction)[1],)
    return fallback(host_fn, shapes, *args)


def _iwae_callback(name, route_name, likelihood, kw, shapes, host_fn, args, fallback):
    """fastvae/jax.py's IWAE host functions on route ffi-numba (the others: ``fallback``)."""
    op = "iwae_grads" if name == "_host_iwae_loss_and_grads" else "iwae_loss"
    arrays = args[1:] if op == "iwae_grads" else args
    dtype = getattr(args[0], "dtype", None)
    ok = (route_name == "ffi-numba" and likelihood in ("bernoulli", "gaussian")
          and jax.default_backend() == "cpu" and set(kw) == {"likelihood"}
          and len(arrays) == (6 if likelihood == "gaussian" else 5)
          and dtype in (jnp.float32, jnp.float64)
          and all(getattr(a, "dtype", None) == dtype for a in args)
          and [getattr(a, "ndim", -1) for a in arrays[:5]] == [2, 3, 2, 2, 3])
    if not ok:
        return fallback(host_fn, shapes, *args)
    return tuple(_iwae_ffi(op, likelihood, list(args), _iwae_out_types(op, list(arrays))))


def _reparam_callback(name, route_name, kw, shapes, host_fn, args, fallback):
    """fastvae/jax.py's _host_z (mu, logvar, seed, offset) and _host_dlogvar (dz first), seed
    and offset (2,) uint32 words, on route ffi-numba (the others: ``fallback``)."""
    op = "reparam_dlogvar" if name == "_host_dlogvar" else "reparam_z"
    floats, words = args[:-2], args[-2:]
    dtype = getattr(floats[0], "dtype", None) if floats else None
    ok = (route_name == "ffi-numba" and not kw and jax.default_backend() == "cpu"
          and len(floats) == (3 if op == "reparam_dlogvar" else 2)
          and dtype in (jnp.float32, jnp.float64)
          and all(getattr(a, "dtype", None) == dtype and getattr(a, "ndim", -1) == 2
                  and a.shape == floats[0].shape for a in floats)
          and all(getattr(w, "dtype", None) == jnp.uint32 and getattr(w, "shape", None) == (2,)
                  for w in words))
    if not ok:
        return fallback(host_fn, shapes, *args)
    return (_reparam_ffi(op, list(args), jax.ShapeDtypeStruct(floats[0].shape, dtype)),)
