"""How fastvae uses the CPU cores for the log-likelihood: row blocks on worker threads.

Model work alternates BLAS GEMMs with short Numba kernels. Letting OpenBLAS thread each GEMM
leaves the Numba kernels between them on one core, and on a loaded machine OpenBLAS's threads
collapse (waiting on a descheduled partner). Here each worker thread instead runs a whole block
of rows with single-threaded BLAS and single-threaded Numba kernels, and the blocks run side by
side. NumPy's BLAS calls and the Numba kernels (nogil) release the GIL, so the threads overlap in
all the heavy parts.

Log-likelihood, 784-400-20, 32 rows, K = 1000, float32, 2 cores, interleaved in one process,
pairs/s, OpenBLAS 2 threads vs 2 workers: quiet machine (benchmarks/dev/threading_ab.py)
84.5k vs 84.5k; machine loaded by other jobs (benchmarks/dev/loglik_threads_loaded.py) 16.6k vs
25.7k. Equal when quiet, 1.55x when not, and the result does not depend on the thread count.
(Training keeps whole batches: see fastvae/train.py::train_step for why.)

Called from a thread other than the main one, the BLAS limit cannot be applied (see
``single_threaded_blas``): run the estimate from the main thread, or limit BLAS yourself
(``OPENBLAS_NUM_THREADS=1``, as Dask's workers do), to keep these properties.

Threads: ``num_threads()`` is ``FASTVAE_NUM_THREADS`` if set, else the CPUs this process may run
on, capped by ``OMP_NUM_THREADS`` if that is set (Dask workers set it to their thread count).
``set_num_threads(n)`` overrides both.
"""
import collections
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_override = None
_pool = None
_pool_size = 0
_lock = threading.Lock()
_blas = None


def num_threads():
    """Worker threads fastvae uses for CPU work (>= 1)."""
    if _override is not None:
        return _override
    env = os.environ.get("FASTVAE_NUM_THREADS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cpus or 1, int(omp) if omp.isdigit() and int(omp) > 0 else cpus or 1))


def set_num_threads(n):
    """Use n worker threads for CPU work from now on (None: back to the default)."""
    global _override
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    _override = n


def _executor(n):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="fastvae")
            _pool_size = n
        return _pool


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS on one thread (process-wide, restored on exit) via threadpoolctl (~30 us).

    Only from the main thread: OpenBLAS 0.3.31 (NumPy's) ignores openblas_set_num_threads called
    from other threads (a limit set there was not seen by the main thread or by new threads, and
    a restore from there left the limit in place), so elsewhere this does nothing. Dask workers
    run tasks on other threads but start with OPENBLAS_NUM_THREADS=1 from their nanny."""
    global _blas
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from threadpoolctl import ThreadpoolController
    if _blas is None:
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


def _one_core(fn, item):
    import numba
    numba.set_num_threads(1)   # thread-local in Numba: this worker's kernels stay on its core
    return fn(item)


def _numba_is_threadsafe():
    """Numba's 'workqueue' layer aborts the process when two threads launch parallel kernels at
    once; 'omp' and 'tbb' are safe. Starts Numba's thread pool to find out which one it uses."""
    import numba
    from numba.np.ufunc import parallel
    parallel._launch_threads()
    return numba.threading_layer() != "workqueue"


def ordered_map(fn, items, device="cpu", n_threads=None):
    """Yield fn(item) for each item, in order. On the CPU, BLAS runs on one thread and, with more
    than one thread, the items run on worker threads, at most 2 per thread submitted ahead
    (memory stays bounded), each with one-thread Numba. On other devices: a plain loop. If fn
    raises, the items not started are cancelled and the running ones finish before the error
    propagates.
    """
    n = num_threads() if n_threads is None else n_threads
    items = iter(items)
    if device != "cpu":
        yield from (fn(item) for item in items)
        return
    # One-thread BLAS even with one worker: OpenBLAS rounds some small products differently on
    # 2 threads than on 1, and results must not depend on the thread count.
    with single_threaded_blas():
        if n == 1 or not _numba_is_threadsafe():
            yield from (fn(item) for item in items)
        else:
            yield from _on_workers(fn, items, n)


def _on_workers(fn, items, n):
    pool, pending = _executor(n), collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(_one_core, fn, item))
            if len(pending) >= 2 * n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()   # wait; its error (if any) is not the first one
