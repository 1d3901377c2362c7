"""Current loglik (OpenBLAS 2 threads, numba 1) vs 2 Python threads over row halves with
1-thread BLAS."""
import time, numpy as np, fastvae
from concurrent.futures import ThreadPoolExecutor
from threadpoolctl import threadpool_limits
K = 1000
rng = np.random.default_rng(0)
x = (rng.random((32, 784)) < 0.3).astype(np.float32)
model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32")
pool = ThreadPoolExecutor(2)
def cur():
    return model.log_likelihood(x, K=K, seed=1, progress=False)
def split():
    with threadpool_limits(1, user_api="blas"):
        parts = list(pool.map(
            lambda r: model.log_likelihood(x[r:r+16], K=K, seed=1, progress=False), (0, 16)))
    return np.concatenate(parts)
a, b = cur(), split()
print("max diff (noise index differs for 2nd half, expected!)", np.abs(a - b).max())
res = {"cur": [], "split": []}
for _ in range(6):
    for name, f in (("cur", cur), ("split", split)):
        t0 = time.perf_counter(); f(); res[name].append(32 * K / (time.perf_counter() - t0))
for n, v in res.items():
    print(f"{n:<6} {np.median(v)/1e3:.1f}k pairs/s  {[round(r/1e3,1) for r in v]}")
