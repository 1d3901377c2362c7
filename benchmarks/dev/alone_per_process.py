"""Each contender alone in its own process (no other library loaded): the training step of
784-400-20, 2 threads, 7 blocks of 40 steps after a 0.15 s pause each (the suite's
timing.timed_blocks, fastvae/bench/timing.py), median. Run them one after another:

    for w in fastvae jax torchfused; do
      B=128 taskset -c 0,1 .venv/bin/python benchmarks/dev/alone_per_process.py $w
    done
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np  # noqa: E402

from fastvae._threads import cpu_work  # noqa: E402
from fastvae.bench import peers, timing  # noqa: E402
from fastvae.bench.arch import CANONICAL  # noqa: E402

B = int(os.environ.get("B", 32))
STEPS, BLOCKS = 40, 7


def contender(who, x):
    """(run, sync) of one training step on x."""
    if who == "jax":
        import jax
        return peers.jax_train_step(jax, CANONICAL, x)
    if who == "torchfused":
        import torch
        torch.set_num_threads(2)
        return peers.torch_train_step(torch, CANONICAL, x, True), None
    import fastvae
    from fastvae.optim import Adam
    from fastvae.train import train_step
    model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32")
    opt, grads = Adam(model.params.flat), model.params.zeros_like()

    def run():
        with cpu_work("cpu"):
            train_step(model, opt, x, grads, seed=0, batch_size=len(x))
    return run, None


def main(who):
    x = (np.random.default_rng(0).random((B, 784)) < 0.3).astype(np.float32)
    run, sync = contender(who, x)
    for _ in range(30):
        run()
    if sync:
        sync()
    rates = timing.timed_blocks({who: (run, sync)}, {who: STEPS}, B, BLOCKS)[who]
    print(f"{who} alone B={B}: {np.median(rates) / 1e3:.2f}k samples/s")


if __name__ == "__main__":
    main(sys.argv[1])
