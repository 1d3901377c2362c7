"""Each contender alone in its own process (no other library loaded): the training step of 784-400-20,
2 threads, 7 blocks of 40 steps after a 0.15 s pause each, median. Run them one after another:

    for w in fastvae jax torchfused; do B=128 taskset -c 0,1 .venv/bin/python benchmarks/dev/alone_per_process.py $w; done
"""
import os, sys, time
os.environ.setdefault("OMP_NUM_THREADS", "2"); os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np
from fastvae._threads import cpu_work
B = int(os.environ.get("B", 32))
x = (np.random.default_rng(0).random((B, 784)) < 0.3).astype(np.float32)
from fastvae.bench.arch import CANONICAL
from fastvae.bench import peers
who = sys.argv[1]
if who == "jax":
    import jax; run, sync = peers.jax_train_step(jax, CANONICAL, x)
elif who == "torchfused":
    import torch; torch.set_num_threads(2); run, sync = peers.torch_train_step(torch, CANONICAL, x, True), None
else:
    import fastvae
    from fastvae.optim import Adam
    from fastvae.train import train_step
    model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32"); opt = Adam(model); g = model.params.zeros_like()
    def run():
        with cpu_work("cpu"): train_step(model, opt, x, g, seed=0, batch_size=B)
    sync = None
for _ in range(30): run()
sync and sync()
r = []
for _ in range(7):
    time.sleep(0.15); t0 = time.perf_counter()
    for _ in range(40): run()
    sync and sync(); r.append(40 * B / (time.perf_counter() - t0))
print(f"{who} alone B={B}: {np.median(r)/1e3:.2f}k samples/s")
