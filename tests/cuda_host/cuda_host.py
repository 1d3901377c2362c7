"""Run CUDA C kernel files on the CPU: compile with g++ against cuda_host.h, call via ctypes.

API mirrors cupy.RawModule / RawKernel, with numpy arrays in place of cupy arrays:
    mod = HostModule(path="kernels/lse.cu", options=("-I", "kernels"))
    mod.get_function("row_logsumexp")((rows,), (256,), (x, np.int32(rows), np.int32(cols), out))

Taken into fastvae from the prototype in ../shared/reference/cuda-host (the project owns this copy).
Thread order: env CUDA_HOST_ORDER=fwd|rev|rand (+ CUDA_HOST_SEED), read at every launch, or the
``thread_order(order, seed)`` context manager below. Compiled modules are cached by content hash
in $CUDA_HOST_CACHE, else $XDG_CACHE_HOME/cuda_host (~/.cache/cuda_host), else a temp folder.
"""
import contextlib
import ctypes
import platform
import shutil
import tempfile
import hashlib
import os
import pathlib
import re
import subprocess
import threading

import numpy as np

HEADER = pathlib.Path(__file__).resolve().with_name("cuda_host.h")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+'
                     r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_KERNEL_PAIR = re.compile(r'^\s*FV_KERNEL_F32_F64\(\s*(\w+)\s*,', re.M)   # kernels/common.cuh
_DYN_SMEM = re.compile(r'extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_][\w:]*)\s+'
                       r'(?:__align__\s*\(\s*\d+\s*\)\s*)?(\w+)\s*\[\s*\]')
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
_lock = threading.Lock()
_build_locks = {}   # .so path -> threading.Lock (see _compile_once)
ORDERS = ("fwd", "rev", "rand")


def kernel_names(text):
    """The ``extern "C" __global__`` kernels a .cu defines: written out, or generated in pairs
    (<name>_f32, <name>_f64) by kernels/common.cuh's FV_KERNEL_F32_F64(<name>, ...)."""
    names = _KERNEL.findall(text)
    for name in _KERNEL_PAIR.findall(text):
        names += [f"{name}_f32", f"{name}_f64"]
    return names


def unavailable_reason(cxx="g++"):
    """None if kernels can run here, else why not (the fiber switch is x86-64 Linux assembly)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"cuda_host needs x86-64 Linux, this is {platform.system()} {platform.machine()}"
    if shutil.which(cxx) is None:
        return f"cuda_host needs a C++ compiler: {cxx} not found (Debian: apt install g++)"
    return None


@contextlib.contextmanager
def thread_order(order, seed=None):
    """Resume the fibers of every block in ``order`` ("fwd", "rev" or "rand") inside the block."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    saved = {k: os.environ.get(k) for k in ("CUDA_HOST_ORDER", "CUDA_HOST_SEED")}
    os.environ["CUDA_HOST_ORDER"] = order
    if seed is not None:
        os.environ["CUDA_HOST_SEED"] = str(int(seed))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_cache_dir():
    env = os.environ.get("CUDA_HOST_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    try:
        (base / "cuda_host").mkdir(parents=True, exist_ok=True)
        if os.access(base / "cuda_host", os.W_OK):
            return base / "cuda_host"
    except OSError:
        pass
    return pathlib.Path(tempfile.gettempdir()) / f"cuda_host-{os.getuid()}"


def _compile_once(so, wrapper, command, source):
    """Build the cached ``so`` unless it exists. Safe for threads and processes sharing one cache:
    every build writes its own uniquely named .cpp and .so (mkstemp) and renames the .so into
    place atomically, so a reader never sees a partial file and two builders never share a
    temporary (a name made from the pid alone collided between two threads of one process). The
    per-file thread lock only saves a second thread the duplicate compile."""
    with _lock:
        lock = _build_locks.setdefault(so, threading.Lock())
    with lock:
        if so.exists():
            return
        fd, cpp = tempfile.mkstemp(prefix=f".{so.stem}-", suffix=".cpp", dir=so.parent)
        with os.fdopen(fd, "w") as f:
            f.write(wrapper)
        fd, tmp = tempfile.mkstemp(prefix=f".{so.stem}-", suffix=".so.tmp", dir=so.parent)
        os.close(fd)
        try:
            r = subprocess.run([*command, cpp, "-o", tmp], capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"host compile of {source} failed:\n{r.stderr}")
            os.replace(tmp, so)
        finally:
            for leftover in (cpp, tmp):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


def _sources(path, inc_dirs, seen=None):
    """The .cu file and every local header it pulls in with #include "..."."""
    seen = {} if seen is None else seen
    text = path.read_text()
    seen[path] = text
    for name in _INCLUDE.findall(text):
        for d in (path.parent, *inc_dirs):
            p = (d / name).resolve()
            if p.is_file() and p not in seen:
                _sources(p, inc_dirs, seen)
                break
    return seen


class HostModule:
    def __init__(self, path, options=(), cxx="g++", opt="-O1", extra_flags=(), cache_dir=None,
                 max_dyn_smem=48 * 1024, header=HEADER):
        path = pathlib.Path(path).resolve()
        inc, defs, it = [], [], iter(options)
        for o in it:   # keep RawModule options that matter on the host: include dirs and macros
            if o in ("-I", "--include-path"):
                inc.append(pathlib.Path(next(it)).resolve())
            elif o.startswith(("-I", "--include-path=")):
                inc.append(pathlib.Path(o.split("=", 1)[1] if o.startswith("--") else o[2:]).resolve())
            elif o.startswith("-D"):
                defs.append(o)
        srcs = _sources(path, inc)
        names = kernel_names(srcs[path])
        dyn = {m for t in srcs.values() for m in _DYN_SMEM.findall(t)}
        header = pathlib.Path(header).resolve()
        flags = ["-std=c++17", opt, "-g", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread",
                 "-Wall", "-Wno-unknown-pragmas", "-Wno-sign-compare", "-Wno-unused-function",
                 "-include", str(header), *(f"-I{d}" for d in (path.parent, *inc)), *defs, *extra_flags]
        if dyn:
            flags.append(f"-DCUDA_HOST_MAX_DYN_SMEM={max_dyn_smem}")
        wrapper = f'#include "{path}"\n' + "".join(f"CUDA_HOST_DYNAMIC_SHARED({t}, {n})\n" for t, n in sorted(dyn)) \
            + "".join(f"CUDA_HOST_EXPORT({n})\n" for n in names)
        h = hashlib.sha256("\0".join([cxx, *flags, wrapper, header.read_text(),
                                      *(f"{p}\0{t}" for p, t in sorted(srcs.items()))]).encode()).hexdigest()[:16]
        cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        so = cache / f"{path.stem}-{h}.so"
        _compile_once(so, wrapper, [cxx, *flags], path)
        self.path, self.names, self.so = path, names, so
        self.lib = ctypes.CDLL(str(so))
        self.lib.cudahost_last_error.restype = ctypes.c_char_p

    def get_function(self, name):
        if name not in self.names:
            raise AttributeError(f'{name}: no extern "C" __global__ kernel of that name in {self.path}')
        return HostKernel(self, name)


def _dim3(v):
    v = (v,) if isinstance(v, int) else tuple(v)
    return (ctypes.c_uint * 3)(*(list(v) + [1, 1, 1])[:3])


class HostKernel:
    def __init__(self, mod, name):
        self.mod, self.name = mod, name
        self._launch = getattr(mod.lib, f"cudahost_launch_{name}")
        self._launch.restype = ctypes.c_int
        sig = getattr(mod.lib, f"cudahost_sig_{name}")
        sig.restype = ctypes.c_char_p
        self.signature = sig().decode().split(",")[:-1]   # e.g. ['*f4', 'i4', '*f4']

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        keep, ptrs = [], []
        for i, (code, a) in enumerate(zip(self.signature, args)):
            if code.startswith("*"):
                if a is None:
                    cell = ctypes.c_void_p(0)
                else:
                    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                        raise TypeError(f"{self.name} arg {i}: expected a C-contiguous numpy array")
                    if code[1] != "V" and a.dtype != np.dtype(code[1:]):
                        raise TypeError(f"{self.name} arg {i}: kernel wants {np.dtype(code[1:])}, got {a.dtype}")
                    cell = ctypes.c_void_p(a.ctypes.data)
                keep.append((a, cell))
                ptrs.append(ctypes.addressof(cell))
            elif code.startswith("V"):
                buf = ctypes.create_string_buffer(bytes(a), int(code[1:]))
                keep.append(buf)
                ptrs.append(ctypes.addressof(buf))
            else:
                if isinstance(a, np.generic) and a.dtype != np.dtype(code):
                    raise TypeError(f"{self.name} arg {i}: kernel wants {np.dtype(code)}, got {a.dtype}")
                cell = np.array(a, dtype=code)   # OverflowError if the value does not fit
                keep.append(cell)
                ptrs.append(cell.ctypes.data)
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        with _lock:
            rc = self._launch(_dim3(grid), _dim3(block), ctypes.c_size_t(shared_mem), argv)
            err = self.mod.lib.cudahost_last_error().decode() if rc else ""
        if rc:
            raise RuntimeError(f"{self.name}: {err}")
