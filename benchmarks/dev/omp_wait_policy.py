"""One process = one variant. ADAM_THREADS: numba threads for Adam (and ELBO) inside the step."""
import os, sys, time
import numpy as np
import numba
from fastvae._threads import cpu_work
import fastvae
from fastvae.optim import Adam
from fastvae.train import train_step
B = int(os.environ.get("B", 128))
rng = np.random.default_rng(0)
x = (rng.random((B, 784)) < 0.3).astype(np.float32)
model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32")
opt = Adam(model.params.flat, 1e-3); grads = model.params.zeros_like()
opt.kernels = model.kernels   # one namespace: the wrapped Adam below is the one the step calls
nt = int(os.environ.get("ADAM_THREADS", 1))
if nt > 1:
    for stem in ("adam", "elbo"):
        mod = getattr(model.kernels, stem)
        name = {"adam": "adam_update", "elbo": "elbo_loss_and_grads"}[stem]
        f = getattr(mod, name)
        def wrap(*a, _f=f, **k):
            numba.set_num_threads(nt)
            try: return _f(*a, **k)
            finally: numba.set_num_threads(1)
        import types
        public = {n: getattr(mod, n) for n in dir(mod) if not n.startswith("__")}
        setattr(model.kernels, stem, types.SimpleNamespace(**{**public, name: wrap}))
def run(n):
    t0 = time.perf_counter()
    for _ in range(n):
        with cpu_work("cpu"):
            train_step(model, opt, x, grads, seed=0, batch_size=B)
    return (time.perf_counter() - t0) / n
run(30)
r = [run(20) for _ in range(8)]
print(f"{os.environ.get('TAG','?'):<28} layer={numba.threading_layer()} "
      f"{np.median(r)*1e3:6.2f} ms/step  (min {min(r)*1e3:.2f})")
