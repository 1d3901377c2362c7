"""One-thread float32 GFLOP/s of fastvae.cpu.dense.dense_forward for several tile shapes against
one whole np.matmul, at the log-likelihood decoder's shapes (the LARGE_TILE choice in
fastvae/cpu/dense.py)."""
import time, numpy as np, fastvae._threads as T
from fastvae.cpu import dense
T.set_num_threads(1)
rng = np.random.default_rng(0)
def t(fn, reps=7):
    fn(); ts=[]
    for _ in range(reps):
        n=0; t0=time.perf_counter()
        while time.perf_counter()-t0 < 0.1: fn(); n+=1
        ts.append((time.perf_counter()-t0)/n)
    return np.median(ts)
for (N,I,O) in [(4000,20,400),(4000,400,784)]:
    x = rng.standard_normal((N,I)).astype(np.float32)
    W = rng.standard_normal((I,O)).astype(np.float32)
    b = np.zeros(O, np.float32)
    fl = 2*N*I*O/1e9
    with T.cpu_work():
        res = [f"matmul {fl/t(lambda: x @ W):.0f}"]
        for tile in [(64, 128), (128, 256), (256, 512), (256, 784)]:
            dense.FORWARD_TILE = tile
            res.append(f"{tile} {fl/t(lambda: dense.dense_forward(x, W, b, 'relu')):.0f}")
    print(f"{N}x{I}x{O} GFLOP/s:", ", ".join(res))
