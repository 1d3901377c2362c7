"""What the input check that every evaluation chunk takes (fastvae/eval.py::_chunk, one min and
one max per chunk: fastvae.data.block_is_clean) costs against the calls it guards.

    .venv/bin/python benchmarks/dev/input_check_cost.py        # REP=7 N_ELBO=10000 THREADS=2

Canonical model VAE(784, (400,), 20) float32 on uniform [0, 1] rows, 2 threads. Two measures,
interleaved, median of REP repeats:
- "check alone": block_is_clean on exactly the chunks the call checks (same sizes, same data,
  already converted as _chunk converts them: for float32 rows that is a view, no copy), against
  the whole call with the check. The precise one.
- "on - off": the whole call with the check minus the whole call with it replaced by a no-op
  (eval.block_is_clean patched), median of adjacent differences. Noisy on a shared machine:
  the difference is within the run-to-run spread. CASES=0 runs the ELBO case only.
"""
import os
import time

import numpy as np

import fastvae
import fastvae.eval as E
from fastvae import _threads
from fastvae.data import block_is_clean

REP = int(os.environ.get("REP", 7))
THREADS = int(os.environ.get("THREADS", 2))
N_ELBO = int(os.environ.get("N_ELBO", 10000))

_threads.set_num_threads(THREADS)
try:
    import numba
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
except ImportError:   # pragma: no cover
    pass

model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32")
rng = np.random.default_rng(0)
X = rng.random((N_ELBO, 784), dtype=np.float32)

CASES = [   # (label, call, chunk rows, rows)
    (f"elbo, {N_ELBO} rows (batch 1024)", lambda x: model.elbo(x, seed=1), 1024, N_ELBO),
    ("log_likelihood K=1000, 200 rows",
     lambda x: model.log_likelihood(x, K=1000, seed=1, progress=False),
     max(1, E.DEFAULT_MAX_PAIRS // 1000), 200),
    ("log_likelihood K=100, 2000 rows",
     lambda x: model.log_likelihood(x, K=100, seed=1, progress=False),
     max(1, E.DEFAULT_MAX_PAIRS // 100), 2000),
]


def check_only(x, rows_per_chunk):
    """The check on the chunks, without the (free for float32) conversion: the direct number."""
    chunks = [np.ascontiguousarray(x[i:i + rows_per_chunk], dtype=model.dtype)
              for i in range(0, len(x), rows_per_chunk)]
    t0 = time.perf_counter()
    for c in chunks:
        block_is_clean(c, model.likelihood)
    return time.perf_counter() - t0


def whole(call, x, checked):
    saved = E.block_is_clean
    if not checked:
        E.block_is_clean = lambda b, likelihood: True
    try:
        t0 = time.perf_counter()
        call(x)
        return time.perf_counter() - t0
    finally:
        E.block_is_clean = saved


print(f"fastvae {fastvae.__version__ if hasattr(fastvae, '__version__') else ''} "
      f"threads={THREADS} REP={REP} load {os.getloadavg()[0]:.2f}")
ONLY = os.environ.get("CASES")            # e.g. CASES=0 for the elbo only
for case, (label, call, rows_per_chunk, n) in enumerate(CASES):
    if ONLY is not None and str(case) not in ONLY.split(","):
        continue
    x = X[:n]
    call(x), check_only(x, rows_per_chunk)                         # warm up (JIT, caches)
    on, off, alone = [], [], []
    for _ in range(REP):
        on.append(whole(call, x, True))
        alone.append(check_only(x, rows_per_chunk))
        off.append(whole(call, x, False))
    on_m, off_m, alone_m = (float(np.median(v)) for v in (on, off, alone))
    spread = (max(on) - min(on)) / on_m * 100
    ratio = float(np.median([a / c for a, c in zip(alone, on)])) * 100   # adjacent pairs
    paired = float(np.median([a - b for a, b in zip(on, off)]))           # adjacent pairs
    print(f"{label}: call {on_m * 1e3:.1f} ms (spread {spread:.0f}%, best {min(on) * 1e3:.1f}), "
          f"check alone {alone_m * 1e3:.3f} ms (best {min(alone) * 1e3:.3f}): "
          f"{ratio:.3f}% of the call (median of adjacent ratios; best/best "
          f"{min(alone) / min(on) * 100:.3f}%); on - off (median of adjacent differences) "
          f"{paired * 1e3:+.1f} ms = {paired / on_m * 100:+.2f}%, best on - best off "
          f"{(min(on) - min(off)) * 1e3:+.1f} ms")
print(f"load at end {os.getloadavg()[0]:.2f}")
