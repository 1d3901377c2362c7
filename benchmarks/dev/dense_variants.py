"""Variants of the CPU dense layer that lost, timed next to the ones in the library.

Run: .venv/bin/python benchmarks/dev/dense_variants.py [gemm] [rows] [step]
Not collected by pytest (no bench_ prefix). The numbers decided the choices recorded in
fastvae/cpu/dense.py (GFLOP/s with flops = 2 N I O per GEMM; elementwise work ignored):

gemm  NumPy ``x @ W`` (allocating), ``np.matmul(x, W, out=y)`` (preallocated), numba's
      ``np.dot(x, W, y)`` inside njit (BLAS through scipy's OpenBLAS), and hand-written numba
      loops (i-k-j order, inner loop over contiguous j; serial and prange over rows).
rows  The two elementwise passes alone, ns per element: bias+act in place after the GEMM, and
      act-grad + db in the backward; serial vs prange over rows (chunked float64 partial sums
      for db) vs the first version with numba's scalar libm exp/tanh/log1p/expm1 vs NumPy.
step  What decides serial vs parallel: a 784-400-20-400-784 forward+backward step, where every
      row pass sits between OpenBLAS calls, with the library's serial passes vs prange passes.
"""
import math
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import prange

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fastvae.cpu import dense  # noqa: E402
from fastvae.cpu._numba import jit, jit_parallel  # noqa: E402

LAYERS = ((784, 400, "relu"), (400, 20, "identity"), (20, 400, "relu"), (400, 784, "sigmoid"))


# Single-threaded runs (OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1) time the CPU time of the
# thread, which other processes on the shared machine disturb far less than the wall clock.
SINGLE = os.environ.get("OPENBLAS_NUM_THREADS") == "1"
clock = time.thread_time if SINGLE else time.perf_counter


def seconds(fn, repeats=7, rounds=3):
    """Best over ``rounds`` of the median of ``repeats`` samples of ~2 ms (noisy 2-core box)."""
    fn()
    t0 = clock()
    fn()
    inner = max(1, int(2e-3 / max(clock() - t0, 1e-6)))
    result = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            t0 = clock()
            for _ in range(inner):
                fn()
            times.append((clock() - t0) / inner)
        result = min(result, float(np.median(times)))
    return result


# ---- gemm --------------------------------------------------------------------------------------
@jit
def gemm_numba_dot_kernel(y, x, W):
    # y (N, O) = x (N, I) @ W (I, O) through numba's np.dot (BLAS via scipy)
    np.dot(x, W, y)


@jit
def _gemm_loop_row(y, x, W, i, I, O):
    for j in range(O):
        y[i, j] = 0
    for k in range(I):
        xik = x[i, k]
        for j in range(O):
            y[i, j] += xik * W[k, j]


@jit
def gemm_loop_kernel(y, x, W, N, I, O):
    # y (N, O) = x (N, I) @ W (I, O), i-k-j order
    for i in range(N):
        _gemm_loop_row(y, x, W, i, I, O)


@jit_parallel
def gemm_loop_parallel_kernel(y, x, W, N, I, O):
    # y (N, O) = x (N, I) @ W (I, O), i-k-j order, prange over rows
    for i in prange(N):
        _gemm_loop_row(y, x, W, i, I, O)


def bench_gemm():
    # The prange loop runs last, for all sizes at once: OpenBLAS calls made while numba's OpenMP
    # threads are about (even after a prange returned) were seen 10-500x slower here (see step).
    print("gemm: float32 GFLOP/s (flops = 2 N I O); BLAS variants interleaved, loops after")
    rng = np.random.default_rng(0)
    cases, rates = [], []
    for I, O, _ in LAYERS:
        for N in (32, 128, 512):
            x = rng.standard_normal((N, I)).astype(np.float32)
            W = rng.standard_normal((I, O)).astype(np.float32)
            cases.append((N, I, O, x, W, np.empty((N, O), np.float32)))
    for N, I, O, x, W, y in cases:
        ref = (x.astype(np.float64) @ W).astype(np.float32)
        y[:] = np.nan
        gemm_numba_dot_kernel(y, x, W)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
        blas = [lambda: x @ W, lambda: np.matmul(x, W, out=y),
                lambda: gemm_numba_dot_kernel(y, x, W)]
        best = [float("inf")] * 3
        for _ in range(3):   # interleave so drift hits every variant alike
            for v, fn in enumerate(blas):
                best[v] = min(best[v], seconds(fn, rounds=1))
        rates.append([2.0 * N * I * O / t / 1e9 for t in best])
    for kernel, (N, I, O, x, W, y), r in [(k, c, r) for k in (gemm_loop_kernel,
                                          gemm_loop_parallel_kernel) for c, r in zip(cases, rates)]:
        y[:] = np.nan
        kernel(y, x, W, N, I, O)
        np.testing.assert_allclose(y, (x.astype(np.float64) @ W), rtol=1e-4, atol=1e-3)
        r.append(2.0 * N * I * O / seconds(lambda: kernel(y, x, W, N, I, O)) / 1e9)
    print(f"{'N x I x O':<16}{'numpy @':>9}{'matmul out=':>13}{'numba dot':>11}"
          f"{'loop':>8}{'loop prange':>13}")
    for (N, I, O, *_), r in zip(cases, rates):
        print(f"{f'{N}x{I}x{O}':<16}" + "".join(f"{v:>{w}.1f}" for v, w in
                                               zip(r, (9, 13, 11, 8, 13))))


# ---- rows: parallel row passes (losing variants; the library's kernels are serial) -------------
@jit_parallel
def dense_bias_act_parallel_kernel(y, b, act, N, O):
    # math: fastvae/_reference.py::dense_forward (after the GEMM). y (N, O) in place, b (O,)
    for i in prange(N):
        dense._bias_act_row(y, b, i, act, 0, O)


@jit_parallel
def dense_act_grad_parallel_kernel(da, db, dy, y, act, N, O, n_chunks):
    # math: fastvae/_reference.py::dense_backward (da, db). One float64 partial db per chunk
    # of rows, merged in chunk order (no atomics).
    partial = np.zeros((n_chunks, O), dtype=np.float64)
    for c in prange(n_chunks):
        for i in range(c * N // n_chunks, (c + 1) * N // n_chunks):
            dense._act_grad_row(da, dy, y, i, act, 0, O)
            for j in range(O):
                partial[c, j] += da[i, j]
    for j in range(O):
        s = 0.0
        for c in range(n_chunks):
            s += partial[c, j]
        db[j] = s


@jit
def _bias_act_row_libm(y, b, i, act, O):
    # the first version of fastvae.cpu.dense._bias_act_row: numba's scalar libm calls
    if act == dense.TANH:
        for j in range(O):
            y[i, j] = math.tanh(y[i, j] + b[j])
    elif act == dense.SOFTPLUS:
        for j in range(O):
            a = y[i, j] + b[j]
            y[i, j] = (a if a > 0 else 0) + math.log1p(math.exp(-abs(a)))
    elif act == dense.SIGMOID:
        for j in range(O):
            a = y[i, j] + b[j]
            if a >= 0:
                y[i, j] = 1 / (1 + math.exp(-a))
            else:
                e = math.exp(a)
                y[i, j] = e / (1 + e)
    else:
        dense._bias_act_row(y, b, i, act, 0, O)


@jit
def dense_bias_act_libm_kernel(y, b, act, N, O):
    for i in range(N):
        _bias_act_row_libm(y, b, i, act, O)


@jit
def dense_act_grad_libm_kernel(da, db, dy, y, act, N, O):
    # softplus with libm expm1; the other activations are algebraic (same as the library)
    if act != dense.SOFTPLUS:
        dense.dense_act_grad_kernel(da, db, dy, y, act, N, O)
        return
    acc = np.zeros(O, dtype=np.float64)
    for i in range(N):
        for j in range(O):
            g = dy[i, j] * -math.expm1(-y[i, j])
            da[i, j] = g
            acc[j] += g
    for j in range(O):
        db[j] = acc[j]


NUMPY_ACT = {"identity": lambda a: a, "relu": lambda a: np.maximum(a, 0),
             "tanh": np.tanh, "softplus": lambda a: np.logaddexp(0, a),
             "sigmoid": lambda a: 1 / (1 + np.exp(-a))}


def bench_rows():
    print("\nrows: the elementwise passes alone (no BLAS between calls), float32, ns per element")
    print(f"{'pass':<13}{'act':<10}{'N x O':<10}{'serial':>8}{'prange':>8}{'libm':>8}{'numpy':>8}")
    rng = np.random.default_rng(1)
    threads = numba.get_num_threads()
    for name in ("identity", "relu", "tanh", "softplus", "sigmoid"):
        act = dense.activation_code(name)
        for N, O in ((32, 400), (128, 400), (512, 400), (128, 784), (512, 784)):
            a = (5 * rng.standard_normal((N, O))).astype(np.float32)
            b = rng.standard_normal(O).astype(np.float32)
            y = a.copy()
            t = [seconds(lambda: dense.dense_bias_act_kernel(y, b, act, N, O)),
                 seconds(lambda: dense_bias_act_parallel_kernel(y, b, act, N, O)),
                 seconds(lambda: dense_bias_act_libm_kernel(y, b, act, N, O)),
                 seconds(lambda: NUMPY_ACT[name](a + b))]
            print(f"{'bias+act':<13}{name:<10}{f'{N}x{O}':<10}"
                  + "".join(f"{v * 1e9 / (N * O):>8.2f}" for v in t))
            y0 = NUMPY_ACT[name](a + b)
            dy = rng.standard_normal((N, O)).astype(np.float32)
            da, db = np.empty_like(dy), np.empty(O, np.float32)
            t = [seconds(lambda: dense.dense_act_grad_kernel(da, db, dy, y0, act, N, O)),
                 seconds(lambda: dense_act_grad_parallel_kernel(da, db, dy, y0, act, N, O,
                                                                threads)),
                 seconds(lambda: dense_act_grad_libm_kernel(da, db, dy, y0, act, N, O))]
            print(f"{'act-grad+db':<13}{name:<10}{f'{N}x{O}':<10}"
                  + "".join(f"{v * 1e9 / (N * O):>8.2f}" for v in t))


# ---- step: serial vs prange row passes between BLAS calls --------------------------------------
def forward_parallel(x, W, b, activation):
    act = dense.activation_code(activation)
    y = np.empty((x.shape[0], W.shape[1]), dtype=x.dtype)
    np.matmul(x, W, out=y)
    dense_bias_act_parallel_kernel(y, b, act, y.shape[0], y.shape[1])
    return y, (x, W, y, activation)


def backward_parallel(dy, cache, need_dx=True):
    x, W, y, activation = cache
    act = dense.activation_code(activation)
    N, O = dy.shape
    da = dy if act == dense.IDENTITY else np.empty_like(dy)
    db = np.empty(O, dtype=dy.dtype)
    dense_act_grad_parallel_kernel(da, db, dy, y, act, N, O, numba.get_num_threads())
    return (da @ W.T if need_dx else None), x.T @ da, db


def step(forward, backward, x, params):
    h, caches = x, []
    for (W, b), (_, _, act) in zip(params, LAYERS):
        h, cache = forward(h, W, b, act)
        caches.append(cache)
    d = h - x
    for i in reversed(range(len(caches))):
        d = backward(d, caches[i], need_dx=i > 0)[0]


def bench_step():
    rng = np.random.default_rng(2)
    x = rng.random((8, 784)).astype(np.float32)
    forward_parallel(x, np.ones((784, 400), np.float32), np.ones(400, np.float32), "relu")
    print(f"\nstep: 784-400-20-400-784 forward + backward, float32, milliseconds "
          f"(numba threading layer {numba.threading_layer()})")
    for N in (32, 128, 512):
        x = rng.random((N, 784)).astype(np.float32)
        params = [((rng.standard_normal((I, O)) / np.sqrt(I)).astype(np.float32),
                   (0.1 * rng.standard_normal(O)).astype(np.float32)) for I, O, _ in LAYERS]
        serial = lambda: step(dense.dense_forward, dense.dense_backward, x, params)  # noqa
        parallel = lambda: step(forward_parallel, backward_parallel, x, params)  # noqa
        ts, tp = float("inf"), float("inf")
        for _ in range(2):
            ts = min(ts, seconds(serial, rounds=1))
            tp = min(tp, seconds(parallel, rounds=1))
        print(f"N={N:<5} serial {ts * 1e3:7.2f}   prange {tp * 1e3:7.2f}   "
              f"serial/prange speedup {tp / ts:.2f}x")


if __name__ == "__main__":
    print(f"numba threads {numba.get_num_threads()}, OpenBLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, clock {clock.__name__}")
    parts = sys.argv[1:] or ["gemm", "rows", "step"]
    if "gemm" in parts:
        bench_gemm()
    if "rows" in parts:
        bench_rows()
    if "step" in parts:
        bench_step()
