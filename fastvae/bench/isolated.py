"""Measurements that need a fresh process: startup (import + build + first training step) and
the log-likelihood's working memory. Each is a short script run as ``python -c``; it prints one
JSON line, which ``run_script`` returns as a dict (or {"error": ...}).

The scripts inherit the caller's environment (thread counts, core pinning), plus PYTHONPATH
pointing at this fastvae, so they measure the same build the suite runs.
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import fastvae

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastvae.__file__)))

# The clock starts before the first import. Model 784-400-20, batch 128, Adam lr 1e-3.
STARTUP = {
    "fastvae": """
        import time; t0 = time.perf_counter()
        import json
        import numpy as np
        import fastvae
        from fastvae._threads import cpu_work
        from fastvae.optim import Adam
        from fastvae.train import train_step
        t1 = time.perf_counter()
        model = fastvae.VAE(784, (400,), 20, seed=0, dtype="float32")
        opt, grads = Adam(model.params.flat, 1e-3), model.params.zeros_like()
        x = (np.random.default_rng(0).random((128, 784)) < 0.3).astype(np.float32)
        t2 = time.perf_counter()
        with cpu_work(model.device):
            train_step(model, opt, x, grads, seed=0, batch_size=128)
        t3 = time.perf_counter()
    """,
    "torch": """
        import time; t0 = time.perf_counter()
        import json, os
        import numpy as np
        import torch
        from fastvae.bench.arch import CANONICAL
        from fastvae.bench.peers import torch_train_step
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        t1 = time.perf_counter()
        x = (np.random.default_rng(0).random((128, 784)) < 0.3).astype(np.float32)
        step = torch_train_step(torch, CANONICAL, x, fused=False)
        t2 = time.perf_counter()
        step()
        t3 = time.perf_counter()
    """,
    "jax": """
        import time; t0 = time.perf_counter()
        import json
        import numpy as np
        import jax
        from fastvae.bench.arch import CANONICAL
        from fastvae.bench.peers import jax_train_step
        t1 = time.perf_counter()
        x = (np.random.default_rng(0).random((128, 784)) < 0.3).astype(np.float32)
        run, sync = jax_train_step(jax, CANONICAL, x)
        t2 = time.perf_counter()
        run(); sync()   # the first call traces and compiles
        t3 = time.perf_counter()
    """,
}
_STARTUP_REPORT = """
    print(json.dumps(dict(import_s=t1 - t0, build_s=t2 - t1, first_step_s=t3 - t2,
                          total_s=t3 - t0)))
"""

# Working memory of one log-likelihood call on N rows with K samples (model 784-400-20):
# resident high-water mark during the call minus the resident size just before it, after a
# warm-up call on one row (compilation, the same chunk sizes) and with the peak reset.
# xla_temp_bytes is XLA's own memory_analysis() of the compiled program, kept for reference.
MEMORY = {
    "fastvae": """
        import gc, json, time, tracemalloc
        import fastvae
        from fastvae.bench import timing
        from fastvae.bench.arch import CANONICAL, binary_data
        from fastvae.eval import DEFAULT_MAX_PAIRS
        a = CANONICAL
        model = fastvae.VAE(a.input_dim, a.hidden, a.latent, seed=0, dtype="float32")
        x = binary_data(N, a.input_dim, seed=1)
        model.log_likelihood(x[:1], K=K, seed=1, progress=False)   # warm-up: same chunk sizes
        gc.collect()
        before, exact = timing.rss_bytes(), timing.reset_peak_rss()
        t0 = time.perf_counter()
        model.log_likelihood(x, K=K, seed=1, progress=False)
        seconds = time.perf_counter() - t0
        peak = timing.peak_rss_bytes()
        # Allocations made through Python's allocator hooks (NumPy arrays) during a call on the
        # first rows only: the working set is per chunk, so it does not grow with N.
        rows = min(N, max(1, 2 * DEFAULT_MAX_PAIRS // K))
        tracemalloc.start()
        model.log_likelihood(x[:rows], K=K, seed=1, progress=False)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(json.dumps(dict(working_bytes=peak - before, exact_peak=exact, seconds=seconds,
                              rss_before=before, model_bytes=int(model.params.flat.nbytes),
                              tracemalloc_peak_bytes=traced, tracemalloc_rows=rows)))
    """,
    "jax": """
        import gc, json, time
        import jax
        from fastvae.bench import timing
        from fastvae.bench.arch import CANONICAL, binary_data
        from fastvae.bench.peers import _jax_loglik_fn, jax_params
        a = CANONICAL
        p, key = jax_params(jax, a), jax.random.PRNGKey(1)
        xb = jax.numpy.asarray(binary_data(N, a.input_dim, seed=1))
        compiled = _jax_loglik_fn(jax, a, N, K, K).lower(p, xb, key).compile()   # all K at once
        planned = compiled.memory_analysis()
        planned = None if planned is None else int(planned.temp_size_in_bytes)
        out = dict(xla_temp_bytes=planned)
        if RUN:
            gc.collect()
            before, exact = timing.rss_bytes(), timing.reset_peak_rss()
            t0 = time.perf_counter()
            compiled(p, xb, key).block_until_ready()
            out.update(seconds=time.perf_counter() - t0, exact_peak=exact, rss_before=before,
                       working_bytes=timing.peak_rss_bytes() - before)
        print(json.dumps(out))
    """,
}


def run_script(code, env_extra=None, timeout=900):
    """Run ``code`` in a fresh interpreter; -> its JSON line as a dict plus wall_s (the whole
    process, interpreter start-up included), or {"error": the tail of stderr}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                   else []))
    env.update(env_extra or {})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return dict(json.loads(lines[-1]), wall_s=wall)


def startup(contender, cold=False):
    """Seconds from a fresh interpreter to the end of the first training step.

    fastvae warm: run twice with the current Numba cache, report the second (the first fills
    the cache if it was stale). cold: NUMBA_CACHE_DIR set to a new empty directory, so every
    kernel compiles. Peers have no on-disk JIT cache by default: run twice, report the second
    (the OS file cache is then warm for all).
    """
    code = textwrap.dedent(STARTUP[contender]) + textwrap.dedent(_STARTUP_REPORT)
    if cold:
        with tempfile.TemporaryDirectory(prefix="fastvae-cold-numba-") as cache:
            return run_script(code, {"NUMBA_CACHE_DIR": cache})
    first = run_script(code)
    if "error" in first:
        return first
    return dict(run_script(code), first_run_total_s=first["total_s"])


def memory(contender, n_rows, K, run=True):
    """Working memory of the log-likelihood on n_rows x K pairs in a fresh process (see
    MEMORY); run=False (JAX only) compiles and reports XLA's planned temporaries without
    running."""
    code = f"N, K, RUN = {int(n_rows)}, {int(K)}, {bool(run)}\n" + \
        textwrap.dedent(MEMORY[contender])
    return run_script(code)
