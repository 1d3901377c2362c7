"""Training-step samples/s of fastvae.train.train_step (784-400-20 float32, fresh model per batch
size, 7 blocks of 0.4 s, median [min-max]); BATCHES=32,128,512. Used by old_vs_new.sh."""
import sys, time, numpy as np
import fastvae
from fastvae.train import train_step
try:
    from fastvae._threads import cpu_work as blas_owns_the_cores
except ImportError:
    from fastvae._backend import blas_owns_the_cores
def rate(batch, arch=(400,), L=20, seconds=0.4, reps=7):
    m = fastvae.VAE(784, arch, L, seed=0)
    from fastvae.optim import Adam
    import inspect   # Adam(model) before fastvae/optim.py took the flat parameters
    opt = Adam(m.params.flat if "params" in inspect.signature(Adam).parameters else m)
    grads = m.params.zeros_like()
    x = (np.random.default_rng(0).random((batch, 784)) < 0.3).astype(np.float32)
    out = []
    with blas_owns_the_cores("cpu"):
        for _ in range(5): train_step(m, opt, x, grads, seed=0, batch_size=batch)
        for r in range(reps):
            n = 0; t = time.perf_counter()
            while time.perf_counter() - t < seconds:
                train_step(m, opt, x, grads, seed=0, batch_size=batch); n += 1
            out.append(n * batch / (time.perf_counter() - t))
    return np.median(out), min(out), max(out)
for b in [int(v) for v in __import__("os").environ.get("BATCHES", "32,128,512").split(",")]:
    med, lo, hi = rate(b)
    print(f"{sys.argv[1] if len(sys.argv)>1 else ''} batch {b}: {med/1e3:.1f}k samples/s "
          f"[{lo/1e3:.1f}-{hi/1e3:.1f}]", flush=True)
