"""One-thread BLAS GEMMs callable from inside Numba kernels, on sub-blocks of arrays.

The tiled layers (fastvae/cpu/dense.py) call ``cblas_?gemm`` of NumPy's own OpenBLAS through a
ctypes function pointer passed to the kernel as an argument (Numba then caches the kernel: the
address is not baked into the compiled code). Each call works on one tile of the output, addressed
by a pointer and a leading dimension, so tiles are written in place with no copies.

float32 GFLOP/s on one thread, thread CPU time, medians of 7 (SkylakeX, 2026-12-02,
benchmarks/dev/gemm_pointer.py):

    M x K x N       numpy matmul   NumPy's cblas from Numba   scipy cython_blas from Numba
    32x784x400          42.0               49.1                        36.5
    128x784x400         62.0               80.5                        64.3
    32x784x128          55.4               53.7                        42.9
    128x400x784         85.4               77.5                        71.6
    8x400x784           26.4               29.0                        13.2
    512x784x400         79.7               76.9                        75.5

NumPy's cblas from Numba ties ``np.matmul`` (and gives the same bits); SciPy's bundled OpenBLAS
(an older release, Fortran interface) is 10-50% slower at small shapes, so it is only the
fallback for a NumPy whose BLAS exports no ``cblas_?gemm`` this module can find.
"""
import ctypes

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_gemms = None


def gemm_for(dtype):
    """The ctypes ``cblas_?gemm`` (row-major interface) for float32 or float64 arrays."""
    global _gemms
    if _gemms is None:
        _gemms = _find_gemms()
    return _gemms[dtype]   # keyed by the dtype objects (np.dtype.name costs ~18 us)


def _signature(c_int, c_float):
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, c_int, c_int, c_int,
                            c_float, ctypes.c_void_p, c_int, ctypes.c_void_p, c_int, c_float,
                            ctypes.c_void_p, c_int)


def _find_gemms():
    """NumPy's OpenBLAS (ILP64, ``scipy_cblas_?gemm64_``, found through threadpoolctl), else
    SciPy's (LP64, ``scipy_cblas_?gemm``) or any library exporting plain ``cblas_?gemm``."""
    from threadpoolctl import threadpool_info
    np.ones(2) @ np.ones(2)        # make sure NumPy's BLAS is loaded
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS for the fallback)
    libs = sorted(threadpool_info(), key=lambda i: "numpy" not in i["filepath"])
    for info in libs:
        if info.get("user_api") != "blas":
            continue
        lib = ctypes.CDLL(info["filepath"])
        for prefix, suffix, c_int in (("scipy_cblas_", "64_", ctypes.c_int64),
                                      ("scipy_cblas_", "", ctypes.c_int32),
                                      ("cblas_", "", ctypes.c_int32)):
            try:
                s = getattr(lib, f"{prefix}sgemm{suffix}")
                d = getattr(lib, f"{prefix}dgemm{suffix}")
            except AttributeError:
                continue
            single = _signature(c_int, ctypes.c_float)(ctypes.cast(s, ctypes.c_void_p).value)
            double = _signature(c_int, ctypes.c_double)(ctypes.cast(d, ctypes.c_void_p).value)
            return {np.dtype(np.float32): single, np.float32: single,
                    np.dtype(np.float64): double, np.float64: double}
    raise RuntimeError("fastvae needs a BLAS with cblas_sgemm/cblas_dgemm (NumPy's OpenBLAS or "
                       "SciPy's); none was found")


def set_blas_threads_local(n):
    """Set OpenBLAS's thread count with ``openblas_set_num_threads_local`` of NumPy's OpenBLAS,
    which (unlike ``openblas_set_num_threads``) takes effect when called from any thread, and
    for the whole process (measured: a call from a worker thread made the main thread's sgemm
    single-threaded; 0 goes back to the global setting). -> the previous value, or None (and
    nothing done) where NumPy's BLAS has no such function; then threadpoolctl's limit is applied
    instead, which works from the main thread only."""
    fn = _local_thread_setter()
    if fn is not None:
        return fn(n)
    global _threadpoolctl_limit
    if n == 1 and _threadpoolctl_limit is None:
        from threadpoolctl import threadpool_limits
        _threadpoolctl_limit = threadpool_limits(limits=1, user_api="blas")
    elif n != 1 and _threadpoolctl_limit is not None:
        _threadpoolctl_limit.restore_original_limits()
        _threadpoolctl_limit = None
    return 0


_threadpoolctl_limit = None
_setter = []


def _local_thread_setter():
    if not _setter:
        from threadpoolctl import threadpool_info
        np.ones(2) @ np.ones(2)
        fn = None
        for info in threadpool_info():
            if info.get("user_api") == "blas" and "numpy" in info["filepath"]:
                fn = getattr(ctypes.CDLL(info["filepath"]), "openblas_set_num_threads_local",
                             None)
                if fn is not None:
                    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                break
        _setter.append(fn)
    return _setter[0]
