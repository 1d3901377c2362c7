"""fastvae's own threads: one persistent pool that runs every CPU step of training and evaluation.

Model work alternates GEMMs with short fused kernels. Handing the GEMMs to OpenBLAS's threads
leaves every kernel between them on one core, and OpenBLAS's fixed split waits on a descheduled
partner: with one other CPU-bound process on 2 cores a training step kept 26-40% of its quiet rate
(issue 11's table). Here fastvae owns the cores, as XLA's CPU runtime does:

- ``Pool``: ``num_threads() - 1`` persistent worker threads plus the calling thread. Work comes in
  phases (one layer's forward, say) of tiles whose shape does not depend on the thread count.
  Every thread claims the next tile from a shared atomic counter (fastvae/cpu/_atomic.py), so no
  tile belongs to a fixed thread: when the OS deschedules one worker, the others take its share,
  and a phase waits only for tiles already started. OpenBLAS and Numba run on one thread inside.
- Idle workers spin for at most ``SPIN_SECONDS`` (100 us) reading the phase counter, then block
  on a condition variable.
- Deterministic: each tile is computed by the same calls whichever thread runs it, and reductions
  over tiles run in a fixed order afterwards, so results are bit for bit the same for 1, 2 or 3
  threads and whatever the scheduling.
- ``ordered_map`` (the log-likelihood's row blocks, Dask's per-worker work) runs on the same
  threads.

Threads: ``num_threads()`` is ``FASTVAE_NUM_THREADS`` if set, else the CPUs this process may run
on, capped by ``OMP_NUM_THREADS`` if that is set (Dask workers set it to their thread count).
``set_num_threads(n)`` overrides both.
"""
import atexit
import contextlib
import os
import threading

import numpy as np

_override = None
_user_chose = False   # set_num_threads was called (with a count)
_pool = None
_lock = threading.Lock()
_local = threading.local()   # .in_pool: this thread is running a tile of a pool phase

# How long an idle worker (or a caller waiting for the last tiles) spins, reading the phase
# counter, before it blocks. A training step's phases follow each other 20-100 us apart (the
# caller's Python between them); a worker that had gone to sleep started its share 40-70 us late
# (futex wake-up and the GIL), when a tile takes 30-300 us (784-400-20, batch 32; traced with a
# wrapper that time-stamped each thread's share of each phase). Long enough to catch the next
# phase, short enough that a worker with nothing to do gives its core away almost at once.
SPIN_SECONDS = 100e-6
_spin_reads = []


def spin_reads():
    """Reads of an atomic counter that take about SPIN_SECONDS here (measured once)."""
    if not _spin_reads:
        import time

        from .cpu._atomic import spin_while_equal
        probe = np.zeros(1, dtype=np.int64)
        spin_while_equal(probe, 0, 0, 1000)        # compiled / loaded from the cache
        reads, took = 1 << 14, 0.0
        while took < 2e-3 and reads < 1 << 30:
            reads *= 2
            start = time.perf_counter()
            spin_while_equal(probe, 0, 0, reads)
            took = time.perf_counter() - start
        _spin_reads.append(max(1000, int(reads * SPIN_SECONDS / took)))
    return _spin_reads[0]


def num_threads():
    """Worker threads fastvae uses for CPU work (>= 1)."""
    if _override is not None:
        return _override
    env = os.environ.get("FASTVAE_NUM_THREADS")
    if env:
        return max(1, int(env))
    cpus = _cpus()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cpus, int(omp) if omp.isdigit() and int(omp) > 0 else cpus))


def _cpus():
    """The CPUs this process may run on, read once (a system call: ~3 us on every phase)."""
    if not _cpu_count:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        _cpu_count.append(n or 1)
    return _cpu_count[0]


_cpu_count = []


def set_num_threads(n):
    """Use n threads for CPU work from now on (None: back to the default): the pool's, and
    Numba's for the row-parallel kernels of ``fastvae.ops``. A count set here is the user's
    choice: ``follow`` (the thread count of a host library) no longer changes it."""
    global _user_chose
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    _user_chose = n is not None
    _set(n)


def follow(n):
    """Use the host library's thread count n (fastvae/torch.py follows torch.set_num_threads)
    unless the user chose fastvae's own: set_num_threads or FASTVAE_NUM_THREADS."""
    if not _user_chose and not os.environ.get("FASTVAE_NUM_THREADS") and n != num_threads():
        _set(n)


def _set(n):
    global _override
    _override = n
    import numba
    numba.set_num_threads(min(num_threads(), numba.config.NUMBA_NUM_THREADS))


def start_numba_threads():
    """Start Numba's thread pool with OpenMP's passive wait policy (called once, by
    fastvae/cpu/_numba.py, before any kernel runs).

    Numba's parallel kernels run on its OpenMP layer (GNU libgomp here), whose idle threads spin
    by default. Between GEMMs, and whenever the machine holds more busy threads than cores,
    those spinning threads steal the cores the GEMMs need. A training step (784-400-20, batch
    128, float32, 2 threads, benchmarks/dev/omp_wait_policy.py, same run, other jobs loading the
    machine to a load average of 3): default wait policy 8.7 ms/step in one round and 68 ms
    median (min 8.9) in the next; OMP_WAIT_POLICY=PASSIVE 8.8 and 9.0 ms. Passive costs nothing
    measurable when the machine is idle and removes the collapse. libgomp reads the variable
    once, when Numba's thread pool starts, so it is set only for that moment (unless the user
    chose a policy) and then removed, so that it does not reach other OpenMP runtimes loaded
    later in the process (PyTorch's own)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from numba.np.ufunc import parallel
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def pool():
    """The process's pool, with ``num_threads()`` threads (rebuilt when that changes)."""
    return _sized_pool(num_threads())


def shutdown():
    """Stop the pool's workers and wait for them (at exit; a later call starts a new pool)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
        _pool = None


class Phase:
    """n tiles of work that any thread of the pool may run, each exactly once.

    ``work(counter, n)`` is called by every thread that joins; it claims tiles with
    ``fetch_add(counter, 0, 1)`` until the index reaches n, marks each one done with
    ``fetch_add(counter, 1, 1)``, and returns True in the thread that completed the last one
    (the Numba tile loops of fastvae/cpu/dense.py, or ``python_tiles``).
    counter (2,) int64: [next unclaimed tile, tiles completed].
    """
    __slots__ = ("n", "work", "counter", "error")

    def __init__(self, n, work):
        self.n, self.work = n, work
        self.counter = np.zeros(2, dtype=np.int64)
        self.error = None

    def join(self):
        """Run tiles until none is left; -> True if this thread completed the last one."""
        outer = getattr(_local, "in_pool", False)
        _local.in_pool = True
        try:
            return bool(self.work(self.counter, self.n))
        except BaseException as e:       # noqa: B902 (re-raised by the caller of Pool.run)
            if self.error is None:
                self.error = e
            return self._abandon_unclaimed()
        finally:
            _local.in_pool = outer

    def _abandon_unclaimed(self):
        """After an error: no new tile starts; the unclaimed ones count as done."""
        from .cpu._atomic import add as fetch_add
        claimed = fetch_add(self.counter, 0, self.n)
        unclaimed = max(0, self.n - claimed)
        return unclaimed > 0 and fetch_add(self.counter, 1, unclaimed) + unclaimed == self.n

    def done(self):
        from .cpu._atomic import read
        return read(self.counter, 1) >= self.n


def python_tiles(tile):
    """A Phase ``work`` that calls ``tile(i)`` (Python) for each claimed tile i. A tile that
    raises still counts as done (so the phase ends), and its error propagates."""
    from .cpu._atomic import add as fetch_add

    def work(counter, n):
        last = False
        while True:
            i = fetch_add(counter, 0, 1)
            if i >= n:
                return last
            try:
                tile(i)
            finally:
                last = fetch_add(counter, 1, 1) == n - 1
    return work


class Pool:
    """``size - 1`` worker threads; the thread that calls ``run`` works too."""

    def __init__(self, size):
        self.size = size
        self._generation = np.zeros(1, dtype=np.int64)   # bumped for every phase
        self._current = (0, None)                         # (generation, Phase)
        self._wake = threading.Condition()
        self._finished = threading.Condition()
        self._sleepers = 0    # workers blocked on _wake
        self._waiting = 0     # callers blocked on _finished
        self._closed = False
        self._spins = spin_reads()
        self._threads = [threading.Thread(target=self._worker, name=f"fastvae-{i + 1}",
                                          daemon=True) for i in range(size - 1)]
        for t in self._threads:
            t.start()

    def run(self, phase):
        """Run every tile of ``phase`` on the pool's threads and this one; return when all are
        done. The first error a tile raised is raised here (after the tiles already started
        have finished; tiles not started are skipped). Inside a tile (nested), or with one
        thread, the tiles run on this thread in order."""
        if self.size == 1 or phase.n <= 1 or getattr(_local, "in_pool", False):
            phase.join()
        else:
            self._publish(phase)
            phase.join()
            self._wait(phase)
        if phase.error is not None:
            raise phase.error

    def _publish(self, phase):
        from .cpu._atomic import add as fetch_add
        with self._wake:
            if self._closed:
                raise RuntimeError("the fastvae thread pool was shut down")
            self._current = (self._current[0] + 1, phase)
            fetch_add(self._generation, 0, 1)
            if self._sleepers:
                self._wake.notify_all()

    def _wait(self, phase):
        """Wait for tiles other threads still run: a bounded spin, then blocking."""
        from .cpu._atomic import spin_until_at_least
        if spin_until_at_least(phase.counter, 1, phase.n, self._spins):
            return
        with self._finished:
            self._waiting += 1
            try:
                while not phase.done():
                    self._finished.wait(0.005)
            finally:
                self._waiting -= 1

    def _worker(self):
        import numba
        from .cpu._atomic import spin_while_equal
        numba.set_num_threads(1)     # thread-local in Numba
        seen = 0
        while True:
            if spin_while_equal(self._generation, 0, seen, self._spins) == seen:
                with self._wake:
                    self._sleepers += 1
                    while self._current[0] == seen and not self._closed:
                        self._wake.wait()
                    self._sleepers -= 1
            if self._closed:
                return
            seen, phase = self._current
            if phase is not None and phase.join() and self._waiting:
                with self._finished:
                    self._finished.notify_all()

    def close(self):
        """Stop the workers (after their current tile) and wait for them."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)

    @property
    def closed(self):
        return self._closed

    @property
    def threads(self):
        return list(self._threads)


def _forget_pool_after_fork():
    """A forked child has none of the parent's threads (and its locks may be held): it starts
    a pool of its own when it first needs one."""
    global _pool, _lock, _blas_lock
    _pool, _lock, _blas_lock = None, threading.Lock(), threading.Lock()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


# ---------------------------------------------------------------------------------------------
# the thread policy of a CPU computation
# ---------------------------------------------------------------------------------------------
_blas_users = 0
_blas_before = None
_blas_lock = threading.Lock()


class cpu_work:
    """``with cpu_work(device):`` while the body runs, OpenBLAS and this thread's Numba kernels
    run on one thread each: the parallelism comes from the pool's tiles. Process-wide for BLAS
    (counted, so nested and concurrent users restore it once, when the last one leaves); works
    from any thread. Nested on one thread it costs ~1 us (the outermost one ~15 us); every
    launcher of a tiled kernel enters it, so that a direct call of an op keeps the rule too."""
    __slots__ = ("device", "numba_before")

    def __init__(self, device="cpu"):
        self.device = device

    def __enter__(self):
        if self.device != "cpu":    # other devices: nothing to set, and no CPU depth counted
            return self
        depth = getattr(_local, "cpu_work_depth", 0)
        _local.cpu_work_depth = depth + 1
        if depth:
            return self
        import numba
        self.numba_before = numba.get_num_threads()
        numba.set_num_threads(1)
        _enter_single_threaded_blas()
        return self

    def __exit__(self, *exc):
        if self.device != "cpu":
            return
        _local.cpu_work_depth -= 1
        if _local.cpu_work_depth:
            return
        import numba
        _local.pool = None
        _leave_single_threaded_blas()
        numba.set_num_threads(self.numba_before)


def _enter_single_threaded_blas():
    global _blas_users, _blas_before
    from .cpu._blas import set_blas_threads_local
    with _blas_lock:
        _blas_users += 1
        if _blas_users == 1:
            _blas_before = set_blas_threads_local(1)


def _leave_single_threaded_blas():
    global _blas_users
    from .cpu._blas import set_blas_threads_local
    with _blas_lock:
        _blas_users -= 1
        if _blas_users == 0 and _blas_before is not None:
            set_blas_threads_local(_blas_before)


def current_pool():
    """The pool for a phase: inside ``cpu_work``, the one its first phase found (saves reading
    the settings on every phase), else ``pool()``."""
    found = getattr(_local, "pool", None)
    if found is None or found.closed:
        found = pool()
        if getattr(_local, "cpu_work_depth", 0):
            _local.pool = found
    return found


def run_tiles(n_tiles, tile_loop, *args):
    """Run the Numba tile loop ``tile_loop(counter, n_tiles, *args)`` (a Phase's work) on the
    pool, inside ``cpu_work``: what every tiled launcher of fastvae/cpu does."""
    with cpu_work():
        current_pool().run(Phase(n_tiles, lambda counter, n: tile_loop(counter, n, *args)))


@contextlib.contextmanager
def single_threaded_blas():
    """BLAS on one thread while the body runs (process-wide, restored on exit)."""
    _enter_single_threaded_blas()
    try:
        yield
    finally:
        _leave_single_threaded_blas()


def ordered_map(fn, items, device="cpu", n_threads=None):
    """Yield fn(item) for each item, in order. On the CPU, BLAS and Numba run on one thread
    and the items run on the pool's threads (this one included), in windows of 2 per thread
    (memory stays bounded). On other devices: a plain loop. If fn raises, the items not started
    are skipped and the running ones finish before the error propagates."""
    items = iter(items)
    if device != "cpu":
        yield from (fn(item) for item in items)
        return
    workers = pool() if n_threads is None else _sized_pool(n_threads)
    window = 2 * workers.size
    with cpu_work(device):
        while True:
            batch = [item for _, item in zip(range(window), items)]
            if not batch:
                return
            results = [None] * len(batch)

            def tile(i):
                results[i] = fn(batch[i])
            workers.run(Phase(len(batch), python_tiles(tile)))
            yield from results


def _sized_pool(n):
    global _pool
    current = _pool
    if current is not None and current.size == n and not current.closed:
        return current
    with _lock:
        if _pool is None or _pool.size != n or _pool.closed:
            if _pool is not None:
                _pool.close()
            _pool = Pool(n)
        return _pool
