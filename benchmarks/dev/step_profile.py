"""Per-kernel profile of one training step:
.venv/bin/python benchmarks/dev/step_profile.py BATCH [HIDDEN,..] [LATENT]
Medians over 200 steps of the time spent in each kernel family."""
import os, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np
from fastvae._threads import cpu_work
import fastvae
from fastvae import network as M   # repeat_rows, sum_samples: the network's sample reshapes
from fastvae.optim import Adam
from fastvae.train import train_step

B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
hidden = tuple(int(h) for h in sys.argv[2].split(",")) if len(sys.argv) > 2 else (400,)
L = int(sys.argv[3]) if len(sys.argv) > 3 else 20
D = 784
rng = np.random.default_rng(0)
x = (rng.random((B, D)) < 0.3).astype(np.float32)
model = fastvae.VAE(D, hidden, L, seed=0, dtype="float32")
opt = Adam(model.params.flat, 1e-3)
grads = model.params.zeros_like()

# wrap kernels with timers
T = {}
def timed(name, f):
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k)
        T[name] = T.get(name, 0) + time.perf_counter() - t0; return r
    return g
import types
k = model.kernels
ns = {}
for stem in ("dense", "random", "reparam", "elbo", "adam"):
    mod = getattr(k, stem)
    wrapped = types.SimpleNamespace(**{n: timed(f"{stem}.{n}", getattr(mod, n)) for n in dir(mod)
                                       if not n.startswith("_") and callable(getattr(mod, n))})
    ns[stem] = wrapped
model.kernels = opt.kernels = types.SimpleNamespace(**{**vars(k), **ns})
orig_sum = M.sum_samples; M.sum_samples = timed("sum_samples", orig_sum)
orig_rep = M.repeat_rows; M.repeat_rows = timed("repeat_rows", orig_rep)

def one():
    with cpu_work("cpu"):
        train_step(model, opt, x, grads, seed=0, batch_size=B)
for _ in range(20): one()
steps = []
per = {}
for _ in range(200):
    T.clear()
    t0 = time.perf_counter(); one(); dt = time.perf_counter() - t0
    steps.append(dt)
    for n, v in T.items(): per.setdefault(n, []).append(v)
med = np.median(steps)
print(f"B={B} hidden={hidden} L={L}: step median {med*1e3:.2f} ms = {B/med:.0f} samples/s")
tot = 0
for n, v in sorted(per.items(), key=lambda kv: -np.median(kv[1])):
    m = np.median(v); tot += m
    print(f"  {n:<32} {m*1e3:7.3f} ms {100*m/med:5.1f}%")
print(f"  {'(other: python, checks)':<32} {(med-tot)*1e3:7.3f} ms {100*(med-tot)/med:5.1f}%")
