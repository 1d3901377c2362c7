"""A/B in one process, interleaved: the training step whole with BLAS's threads vs whole with
one-thread BLAS; the log-likelihood serial with BLAS's threads vs 2 worker threads vs 1. Cells:
median ± (max - min) / median, as fastvae bench reports them (fastvae/bench/timing.py::summary).

    .venv/bin/python benchmarks/dev/threading_ab.py      # BS=32,128,512 K=1000 H=400 L=20 REP=7

The third training variant measured for fastvae/train.py::train_step, one shard of the batch per
worker thread, was dropped from the library in bfe28f4 (run this script at its parent commit to
repeat it)."""
import os, time, numpy as np, fastvae
from fastvae import _threads
from fastvae.optim import Adam
import fastvae.train as T
import fastvae.eval as E
from fastvae.bench.probes import sgemm_gflops as gemm_probe   # 128x784x400, GFLOP/s
from fastvae.bench.timing import summary


def cells(res, unit_fmt):
    """'name median (±spread%)' per mode, medians scaled to thousands."""
    return "  ".join(f"{m} {format(s['median'] / 1e3, unit_fmt)}k (±{s['spread'] * 100:.0f}%)"
                     for m, s in ((m, summary(r)) for m, r in res.items()))


hidden = tuple(int(h) for h in os.environ.get("H", "400").split(","))
L = int(os.environ.get("L", 20))
REP = int(os.environ.get("REP", 7))
print(f"sgemm probe 128x784x400: {gemm_probe():.0f} GFLOP/s; load {os.getloadavg()[0]:.2f}")
for B in [int(b) for b in os.environ.get("BS", "32,128,512").split(",")]:
    rng = np.random.default_rng(0)
    x = (rng.random((B, 784)) < 0.3).astype(np.float32)
    model = fastvae.VAE(784, hidden, L, seed=0, dtype="float32")
    opt = Adam(model.params.flat, 1e-3); g = model.params.zeros_like()
    def run(mode, steps):
        ctx = _threads.single_threaded_blas() if mode == "blas1" else _threads.cpu_work("cpu")
        t0 = time.perf_counter()
        with ctx, _threads.cpu_work("cpu"):
            for _ in range(steps): T.train_step(model, opt, x, g, seed=0, batch_size=B)
        return steps * B / (time.perf_counter() - t0)
    modes = ("whole", "blas1")
    steps = max(3, 3072 // B)
    for m in modes: run(m, steps)
    res = {m: [] for m in modes}
    for _ in range(REP):
        for m in modes: res[m].append(run(m, steps))
    print(f"{hidden} B={B}: " + cells(res, ".2f"))
K = int(os.environ.get("K", 1000))
xl = (np.random.default_rng(1).random((32, 784)) < 0.3).astype(np.float32)
model = fastvae.VAE(784, hidden, L, seed=0, dtype="float32")
orig = E.ordered_map
def ll(mode):
    if mode == "blas2":
        _threads.set_num_threads(1)
        E.ordered_map = lambda fn, items, device: (fn(i) for i in items)
    else:
        _threads.set_num_threads(2 if mode == "workers2" else 1); E.ordered_map = orig
    t0 = time.perf_counter(); model.log_likelihood(xl, K=K, seed=1, progress=False)
    E.ordered_map = orig
    return 32 * K / (time.perf_counter() - t0)
modes = ("blas2", "workers2", "workers1")
for m in modes: ll(m)
res = {m: [] for m in modes}
for _ in range(REP):
    for m in modes: res[m].append(ll(m))
print(f"loglik K={K}: " + cells(res, ".1f"))
print(f"sgemm probe end: {gemm_probe():.0f} GFLOP/s; load {os.getloadavg()[0]:.2f}")
