"""Per-phase trace of a training step: for each pool phase, its total time, how late the worker
started its share, and how long each thread worked (medians over 200 steps). Usage:
python benchmarks/dev/phase_trace.py BATCH"""
import sys, time, threading, numpy as np, fastvae, fastvae._threads as T, collections
from fastvae.train import train_step
from fastvae.optim import Adam
b = int(sys.argv[1])
log = []
orig_run = T.Pool.run
def run(self, phase):
    work = phase.work; rec = {"n": phase.n, "name": None, "joins": []}
    try: rec["name"] = phase.work.__closure__[-1].cell_contents.__name__
    except Exception: rec["name"] = "?"
    def wrapped(counter, n):
        t0 = time.perf_counter(); before = int(counter[0])
        r = work(counter, n)
        rec["joins"].append((threading.current_thread().name, t0, time.perf_counter()))
        return r
    phase.work = wrapped
    rec["t0"] = time.perf_counter(); orig_run(self, phase); rec["t1"] = time.perf_counter()
    log.append(rec)
T.Pool.run = run
m = fastvae.VAE(784, (400,), 20, seed=0); opt = Adam(m.params.flat); grads = m.params.zeros_like()
x = (np.random.default_rng(0).random((b, 784)) < 0.3).astype(np.float32)
with T.cpu_work():
    for _ in range(50): train_step(m, opt, x, grads, seed=0, batch_size=b)
    log.clear()
    for _ in range(200): train_step(m, opt, x, grads, seed=0, batch_size=b)
per = collections.defaultdict(list)
for i, r in enumerate(log):
    key = (i % (len(log)//200), r["name"], r["n"])
    worker = [j for j in r["joins"] if j[0] != "MainThread"]
    main = [j for j in r["joins"] if j[0] == "MainThread"]
    per[key].append(((r["t1"]-r["t0"])*1e6, (worker[0][1]-r["t0"])*1e6 if worker else np.nan,
                     (main[0][2]-main[0][1])*1e6 if main else np.nan,
                     (worker[0][2]-worker[0][1])*1e6 if worker else np.nan))
print("phase                              total  worker-start  main-busy worker-busy (us, medians)")
for k, v in per.items():
    a = np.nanmedian(np.array(v), axis=0)
    print(f"{k[0]:2d} {k[1]:32s}[{k[2]:3d}] {a[0]:7.0f} {a[1]:9.0f} {a[2]:9.0f} {a[3]:9.0f}")
steps = 200
tot = sum(r["t1"] - r["t0"] for r in log) / steps
print(f"sum of phases per step: {tot*1e3:.2f} ms")
with T.cpu_work():
    t = time.perf_counter()
    for _ in range(steps): train_step(m, opt, x, grads, seed=0, batch_size=b)
    print(f"step (traced): {(time.perf_counter()-t)/steps*1e3:.2f} ms")
