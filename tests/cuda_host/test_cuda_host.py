"""Self-tests of the host execution harness (cuda_host.h / cuda_host.py) on its example kernels.

Results against NumPy in all three fiber orders, the bugs in bad/ that it must expose (missing
barrier, legacy warp-synchronous code, divergent barrier, shuffle deadlock, bad masks, poisoned
shared memory), argument type checks, and ThreadSanitizer / AddressSanitizer runs in subprocesses.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.cuda_host.cuda_host import ORDERS, HostModule, thread_order, unavailable_reason

HERE = pathlib.Path(__file__).resolve().parent
KDIR, BAD = HERE / "kernels", HERE / "bad"

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


@pytest.fixture(params=ORDERS)
def order(request):
    with thread_order(request.param):   # fiber resume order at each scheduling pass
        yield request.param


@pytest.fixture(scope="session")
def mods():
    opts = ("-I", str(KDIR))
    return {p.stem: HostModule(p, options=opts) for p in [*KDIR.glob("*.cu"), *BAD.glob("*.cu")]}


def np_lse(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = m + np.log(np.exp(x - np.where(np.isfinite(m), m, 0)).sum(axis=1, keepdims=True))
    return np.where(np.isneginf(m), -np.inf, r)[:, 0]


@pytest.mark.parametrize("n", [1, 31, 257, 4099, 100_003])
def test_block_sum(mods, order, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = np.zeros(1, np.float32)
    mods["reduce"].get_function("block_sum")((min(40, -(-n // 256)),), (256,), (x, np.int32(n), out))
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (33, 257), (2, 4099)])
def test_row_logsumexp(mods, order, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 20).astype(np.float32)
    x[0, :] += 80.0                   # exp would overflow without the max shift
    if shape[0] > 2:
        x[1, :] = -np.inf             # empty row
    out = np.full(shape[0], np.nan, np.float32)
    mods["lse"].get_function("row_logsumexp")((shape[0],), (256,), (x, np.int32(shape[0]), np.int32(shape[1]), out))
    np.testing.assert_allclose(out, np_lse(x), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (129, 7)])
def test_transpose_2d(mods, order, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = np.full(shape[::-1], np.nan, np.float32)
    grid = (-(-shape[1] // 32), -(-shape[0] // 32))
    mods["transpose"].get_function("transpose")(grid, (32, 8), (x, out, np.int32(shape[0]), np.int32(shape[1])))
    np.testing.assert_array_equal(out, x.T)


@pytest.mark.parametrize("n,block", [(1000, 128), (777, 64), (5, 32)])
def test_dynamic_shared(mods, n, block):
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    s, npos = np.zeros(1, np.float64), np.zeros(1, np.int32)
    mods["dyn_sum"].get_function("dyn_sum")((-(-n // block),), (block,), (x, np.int32(n), s, npos), shared_mem=4 * block)
    np.testing.assert_allclose(s[0], x.astype(np.float64).sum(), rtol=1e-5)
    assert npos[0] == (x > 0).sum()


def test_argument_type_checks(mods):
    k = mods["reduce"].get_function("block_sum")
    assert k.signature == ["*f4", "i4", "*f4"]
    with pytest.raises(TypeError, match="float32"):
        k((1,), (256,), (np.zeros(4), np.int32(4), np.zeros(1, np.float32)))
    with pytest.raises(TypeError, match="int32"):
        k((1,), (256,), (np.zeros(4, np.float32), np.int64(4), np.zeros(1, np.float32)))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        k((1,), (256,), (np.zeros(4, np.float32), np.int32(4)))


def test_thread_order_rejects_unknown_order():
    with pytest.raises(ValueError, match="order must be one of"):
        with thread_order("sideways"):
            pass


# ---- bugs the harness must expose ----
def _nosync_sum(mods, kernel, mod, n=4096):
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    out = np.zeros(1, np.float32)
    mods[mod].get_function(kernel)((n // 256,), (256,), (x, np.int32(n), out))
    return out[0], x.astype(np.float64).sum()


def test_missing_syncthreads_is_caught(mods):
    results = {}
    for o in ORDERS:
        with thread_order(o):
            got, want = _nosync_sum(mods, "block_sum_nosync", "missing_sync")
        results[o] = bool(np.isclose(got, want, rtol=1e-4))
    assert not all(results.values()), results      # at least one schedule exposes the race


def test_legacy_warp_synchronous_code_is_caught(mods):
    with thread_order("fwd"):
        got, want = _nosync_sum(mods, "legacy_warp_sum", "legacy_warp")
    assert not np.isclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("kernel,nthreads,msg", [
    ("divergent_barrier", 64, "divergent __syncthreads"),
    ("shfl_deadlock", 64, "deadlock"),
    ("shfl_partial_warp", 48, "nonexistent lanes"),
])
def test_collective_misuse_raises(mods, kernel, nthreads, msg):
    with pytest.raises(RuntimeError, match=msg):
        mods["misuse"].get_function(kernel)((2,), (nthreads,), (np.zeros(nthreads, np.float32),))


def test_uninitialized_shared_memory_is_poisoned(mods):
    out = np.zeros(64, np.float32)
    mods["misuse"].get_function("uninit_shared")((3,), (64,), (out,))
    assert (out[:32] == 1).all() and np.isnan(out[32:]).all()


def test_invalid_launch_configuration(mods):
    k = mods["reduce"].get_function("block_sum")
    with pytest.raises(RuntimeError, match="invalid launch configuration"):
        k((1,), (2048,), (np.zeros(4, np.float32), np.int32(4), np.zeros(1, np.float32)))


# ---- sanitizers: ThreadSanitizer (fiber-aware) finds intra-block races, ASan finds out-of-bounds
# global accesses. Each runs run_sanitized.py in a subprocess with the runtime preloaded.
def _runtime(name):
    p = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return p if os.path.isabs(p) else None


@pytest.mark.parametrize("san,case,expect", [
    ("thread", "clean", None),
    ("thread", "missing_sync", "missing_sync.cu:5"),
    ("thread", "legacy_warp", "legacy_warp.cu:13"),
    ("address", "oob", "heap-buffer-overflow"),
])
def test_sanitizers(san, case, expect, tmp_path_factory):
    libs = [_runtime("libtsan.so" if san == "thread" else "libasan.so"), _runtime("libstdc++.so")]
    if not all(libs):
        pytest.skip("sanitizer runtime not installed (Debian: libtsan2, libasan8)")
    env = dict(os.environ, LD_PRELOAD=" ".join(libs), ASAN_OPTIONS="detect_leaks=0", TSAN_OPTIONS="halt_on_error=0")
    from tests.cuda_host.cuda_host import default_cache_dir
    r = subprocess.run([sys.executable, str(HERE / "run_sanitized.py"), san, case, str(default_cache_dir())],
                       capture_output=True, text=True, env=env, timeout=300)
    if expect is None:
        assert r.returncode == 0 and "Sanitizer" not in r.stderr, r.stderr[-3000:]
    else:
        assert r.returncode != 0 and expect in r.stderr, r.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# The compile cache on a cold directory: threads of one process and separate processes building
# the same module at once (the log-likelihood's worker threads did, and two temporaries named by
# the pid alone collided: FileNotFoundError in os.replace).

def _build_lse(cache_dir):
    return HostModule(KDIR / "lse.cu", options=("-I", str(KDIR)), cache_dir=cache_dir)


def _assert_one_clean_build(cache_dir):
    assert sorted(p.suffix for p in pathlib.Path(cache_dir).iterdir()) == [".so"]


def test_cold_cache_threads_build_the_same_module_at_once(tmp_path):
    import concurrent.futures
    import threading
    start = threading.Barrier(4)

    def build(_):
        start.wait()
        return _build_lse(tmp_path)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        modules = list(pool.map(build, range(4)))
    assert len({m.so for m in modules}) == 1
    _assert_one_clean_build(tmp_path)
    x = np.random.default_rng(3).standard_normal((5, 37)).astype(np.float32)
    out = np.empty(5, np.float32)
    modules[-1].get_function("row_logsumexp")((5,), (32,), (x, np.int32(5), np.int32(37), out))
    np.testing.assert_allclose(out, np_lse(x), rtol=1e-5)


def test_cold_cache_processes_build_the_same_module_at_once(tmp_path):
    code = ("import sys; from tests.cuda_host.test_cuda_host import _build_lse; "
            "_build_lse(sys.argv[1])")
    root = HERE.parent.parent
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=root,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    _assert_one_clean_build(tmp_path)
