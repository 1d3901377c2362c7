"""Timing: contenders interleaved in blocks (A B C A B C ...), medians and spreads; probes;
resident-memory high-water marks.

A block is ``n`` calls of one contender, ``n`` chosen so a block takes about ``block_s``
(at least one call), then ``sync()`` (None for synchronous work; for JAX and the GPU it waits
for the queued work) before the clock stops. Every contender gets one untimed warm-up block
first (compilation, caches, allocator), and each timed block starts after a pause of
``SETTLE_S`` (other libraries' idle threads stop spinning). A rate is work per block / block
time; a row reports the
median rate over ``repeats`` blocks and the spread (max - min) / median.

``cpu_load`` runs one busy-loop process beside the contenders (``--under-load``).
"""
import contextlib
import math
import os
import subprocess
import sys
import time

import numpy as np


def calibrate(fn, sync, block_s):
    """Calls per block so one block takes ~block_s (after one untimed call)."""
    fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    return max(1, int(block_s / max(time.perf_counter() - t0, 1e-7)))


# Idle time before every timed block. The libraries' worker threads keep spinning after their
# last parallel region (OpenBLAS for up to ~0.1 s, libgomp and Eigen shorter), so without a pause
# the contender that runs next shares its cores with the previous one's spinning threads.
# PyTorch eager, 784-400-20 batch 32, 2 threads: 3.94k samples/s alone in a process
# (benchmarks/dev/torch_alone.py), 0.82k when its blocks followed fastvae's with no pause.
SETTLE_S = 0.15


def warm_up(contenders, block_s, calls=None):
    """contenders {name: (fn, sync)} -> {name: calls per timed block}, after one untimed
    warm-up block each.

    calls: calls per block for every contender (None: calibrate each to ~block_s); with
    ``calls`` given, the warm-up block is one call (for work that takes seconds per call).
    """
    plan = {}
    for name, (fn, sync) in contenders.items():
        if calls is None:
            plan[name] = calibrate(fn, sync, block_s)
            warmup = plan[name]
        else:
            plan[name], warmup = calls, 1
        for _ in range(warmup):
            fn()
        if sync:
            sync()
    return plan


def timed_blocks(contenders, plan, work_per_call, repeats):
    """-> {name: [rate per block]}: ``repeats`` rounds of one timed block per contender, in
    order (A B C A B C ...), ``plan[name]`` calls each, every block after SETTLE_S."""
    rates = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (fn, sync) in contenders.items():
            n = plan[name]
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if sync:
                sync()
            rates[name].append(n * work_per_call / (time.perf_counter() - t0))
    return rates


def summary(rates):
    """{median, spread, n, rates} of a list of per-block rates."""
    r = np.asarray(rates, dtype=np.float64)
    med = float(np.median(r))
    return dict(median=med, spread=float((r.max() - r.min()) / med) if med > 0 else math.nan,
                n=int(r.size), rates=[float(v) for v in r])


def median_seconds(fn, reps, sync=None):
    """Median wall time of one fn() over ``reps`` calls, after one untimed call."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
# CPU load (--under-load)
# ---------------------------------------------------------------------------------------------
# One plain CPU-bound busy loop in its own interpreter. It says "busy" once it is in the loop,
# and it ends by itself when its parent goes (the parent's pid is argv[1]; checked every ~10 ms
# of looping), so even a worker killed with SIGKILL cannot leave it spinning.
LOAD_CODE = """# fastvae bench: CPU load
import os, sys
parent = int(sys.argv[1])
print("busy", flush=True)
try:
    while os.getppid() == parent:
        for _ in range(200_000):
            pass
except KeyboardInterrupt:
    pass
"""
LOAD_STOP_S = 5.0   # grace after terminate() before kill()


def start_cpu_load():
    """Start the busy-loop process and return its Popen once it is spinning. It inherits this
    process's core affinity, so it competes for the cores the contenders run on."""
    proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE, str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "busy":
            raise RuntimeError(f"the CPU load process exited early (code {proc.wait()})")
    except BaseException:
        stop_cpu_load(proc)
        raise
    return proc


def _children_cpu_s():
    try:
        import resource
    except ImportError:   # not POSIX
        return None
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stop_cpu_load(proc):
    """Terminate the load process (kill it if it has not gone after LOAD_STOP_S) and reap it.
    -> {stopped: "terminate" | "kill" | "exited by itself", returncode, cpu_s} (cpu_s: its CPU
    seconds, from the children's rusage; None where there is none)."""
    before, how = _children_cpu_s(), "exited by itself"
    if proc.poll() is None:
        proc.terminate()
        how = "terminate"
        try:
            proc.wait(LOAD_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            how = "kill"
            proc.wait()
    proc.stdout.close()
    after = _children_cpu_s()
    return dict(stopped=how, returncode=proc.returncode,
                cpu_s=None if before is None else after - before)


@contextlib.contextmanager
def cpu_load():
    """``with cpu_load() as load:`` one busy-loop process runs for the block, and is stopped on
    the way out whatever happens (exception, KeyboardInterrupt). ``load`` is a dict: pid and
    affinity (its cores, None where unknown) at once; wall_s, stopped, returncode and cpu_s
    once the block has ended (cpu_s / wall_s: the share of one core it got)."""
    proc = start_cpu_load()
    t0 = time.perf_counter()
    load = dict(pid=proc.pid, affinity=_affinity(proc.pid))
    try:
        yield load
    finally:
        load["wall_s"] = time.perf_counter() - t0
        load.update(stop_cpu_load(proc))


def _affinity(pid):
    try:
        return sorted(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def gpu_unavailable_reason():
    """None when CuPy imports and a CUDA device runs a kernel; otherwise why not (one line)."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install \"fastvae[cuda]\")"
    try:
        if not cupy.cuda.is_available():
            return "no CUDA GPU/driver (cupy.cuda.is_available() is False)"
        cupy.arange(4, dtype=cupy.float32).sum().item()
    except Exception as e:   # noqa: BLE001 - a broken driver install must not stop the run
        return f"CUDA unavailable: {type(e).__name__}: {e}"
    return None


def cuda_sync():
    import cupy
    cupy.cuda.get_current_stream().synchronize()


def cuda_median_seconds(fn, reps=25, warmup=3):
    """Median seconds of one fn() on the GPU between two CUDA events (after ``warmup`` calls);
    host-side launch overhead inside fn counts, as it does for a caller."""
    import cupy
    for _ in range(warmup):
        fn()
    cuda_sync()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)   # ms -> s
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
# resident memory (Linux /proc; elsewhere the getrusage high-water mark, a lower bound)
# ---------------------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss():
    """Reset the process's resident high-water mark (Linux >= 4.0: ``5 > clear_refs``).
    Returns True when it worked, else False (the peak then includes earlier work)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes():
    """Current resident set size in bytes."""
    try:
        return _status_kb("VmRSS") * 1024
    except (OSError, KeyError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes():
    """Resident high-water mark in bytes (since the last reset_peak_rss on Linux)."""
    try:
        return _status_kb("VmHWM") * 1024
    except (OSError, KeyError):
        import resource
        scale = 1 if sys.platform == "darwin" else 1024   # macOS reports bytes, Linux KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def available_memory_bytes():
    """MemAvailable from /proc/meminfo, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
