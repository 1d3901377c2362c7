"""Log-likelihood pairs/s (784-400-20 float32; 32 rows at K=1000, 8 at K=5000; medians of 5).
Used by old_vs_new.sh."""
import sys, time, numpy as np, fastvae
m = fastvae.VAE(784, (400,), 20, seed=0)
x = (np.random.default_rng(0).random((64, 784)) < 0.3).astype(np.float32)
for K in (1000, 5000):
    rows = 32 if K == 1000 else 8
    m.log_likelihood(x[:rows], K=K, progress=False)
    rates = []
    for _ in range(5):
        t = time.perf_counter(); m.log_likelihood(x[:rows], K=K, progress=False)
        rates.append(rows * K / (time.perf_counter() - t))
    print(f"{sys.argv[1]} loglik K={K} rows={rows}: {np.median(rates)/1e3:.1f}k pairs/s "
          f"[{min(rates)/1e3:.1f}-{max(rates)/1e3:.1f}]", flush=True)
