import os, sys, time
os.environ["OMP_NUM_THREADS"] = "2"
if len(sys.argv) > 1:
    import fastvae.cpu.adam  # starts numba's pool
import torch, numpy as np
torch.set_num_threads(2)
from fastvae.bench import peers
from fastvae.bench.arch import CANONICAL
x = (np.random.default_rng(0).random((32, 784)) < 0.3).astype(np.float32)
for fused in (False, True):
    step = peers.torch_train_step(torch, CANONICAL, x, fused)
    for _ in range(20): step()
    t0 = time.perf_counter()
    for _ in range(200): step()
    print(("with fastvae imported " if len(sys.argv) > 1 else "alone ") +
          ("fused" if fused else "eager"), f"{200*32/(time.perf_counter()-t0)/1e3:.2f}k samples/s")
