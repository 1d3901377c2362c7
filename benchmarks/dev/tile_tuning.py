"""Training-step samples/s (784-400-20, float32, 2 threads) for several tile shapes of
fastvae/cpu/dense.py, interleaved in one process: 7 rounds of 0.25 s blocks per variant."""
import sys, time, numpy as np, fastvae, fastvae._threads as T
from fastvae.cpu import dense
from fastvae.train import train_step
from fastvae.optim import Adam
variants = {
 "A fwd64x128 dx64x128 dw128x128": ((64,128),(64,128),(128,128)),
 "B fwd64x256 dx64x256 dw128x256": ((64,256),(64,256),(128,256)),
 "F fwd128x256 dx128x256 dw256x256": ((128,256),(128,256),(256,256)),
 "G fwd32x400 dx32x400 dw400x128": ((32,400),(32,400),(400,128)),
 "H fwd128x128 dx128x128 dw128x784": ((128,128),(128,128),(128,784)),
}
def setup(b):
    m = fastvae.VAE(784, (400,), 20, seed=0); opt = Adam(m.params.flat); grads = m.params.zeros_like()
    x = (np.random.default_rng(0).random((b, 784)) < 0.3).astype(np.float32)
    return lambda: train_step(m, opt, x, grads, seed=0, batch_size=b)
for b in [int(v) for v in sys.argv[1].split(",")]:
    step = setup(b); rates = {k: [] for k in variants}
    with T.cpu_work():
        for k, v in variants.items():
            dense.FORWARD_TILE, dense.BACKWARD_DX_TILE, dense.BACKWARD_DW_TILE = v
            for _ in range(10): step()
        for r in range(7):
            for k, v in variants.items():
                dense.FORWARD_TILE, dense.BACKWARD_DX_TILE, dense.BACKWARD_DW_TILE = v
                n = 0; t = time.perf_counter()
                while time.perf_counter() - t < 0.25: step(); n += 1
                rates[k].append(n * b / (time.perf_counter() - t))
    for k, v in rates.items():
        print(f"batch {b} {k}: {np.median(v)/1e3:.1f}k [{min(v)/1e3:.1f}-{max(v)/1e3:.1f}]")
