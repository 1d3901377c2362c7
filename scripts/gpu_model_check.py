"""The whole model on the GPU against the CPU backend (run by scripts/gpu_check.sh).

Trains the canonical 784-400-20 Bernoulli VAE for 2 epochs on generated binary data three times
with the same seed: device="cuda" float32, CPU float32 and CPU float64. The per-epoch losses must
agree within the three-way tolerance of tests/helpers.py (|cuda - cpu64| <= 2 |cpu32 - cpu64| +
atol). Then estimates log p(x) at K=5000 on 16 rows on both devices and compares them the same
way. Writes gpu_model_check.json into --out; exit 1 if a comparison fails.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastvae  # noqa: E402
from tests.helpers import assert_close3  # noqa: E402

ROWS, EPOCHS, BATCH, SEED = 2048, 2, 128, 0


def train(device, dtype, x):
    model = fastvae.VAE(784, (400,), 20, seed=SEED, dtype=dtype, device=device)
    start = time.perf_counter()
    history = model.fit(x, epochs=EPOCHS, batch_size=BATCH, lr=1e-3, progress=False)
    return model, [h["loss"] for h in history], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/gpu-check")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    x = (np.random.default_rng(1).random((ROWS, 784)) < 0.3).astype(np.float32)
    runs = {name: train(device, dtype, x) for name, device, dtype in
            (("cuda32", "cuda", "float32"), ("cpu32", "cpu", "float32"),
             ("cpu64", "cpu", "float64"))}
    result = {name: dict(losses=r[1], seconds=r[2]) for name, r in runs.items()}
    failures = []
    losses = [np.array(runs[name][1]) for name in ("cuda32", "cpu32", "cpu64")]
    try:
        assert_close3(*losses, atol=1e-6 * np.abs(losses[2]).max(), name="epoch losses")
    except AssertionError as e:
        failures.append(str(e))
    rows = x[:16]
    ll = {}
    for name in ("cuda32", "cpu32", "cpu64"):
        start = time.perf_counter()
        ll[name] = runs[name][0].log_likelihood(rows, K=5000, seed=3, progress=False)
        result[name]["log_likelihood_K5000_seconds"] = time.perf_counter() - start
        result[name]["log_likelihood_K5000_mean"] = float(np.mean(ll[name]))
    # each device's model is its own training run: compare the estimates of one set of
    # parameters too, the CPU float32 model's, moved to the GPU and widened to float64
    model = runs["cpu32"][0]
    ll_cpu = model.log_likelihood(rows, K=5000, seed=3, progress=False)
    model.to("cuda")
    ll_gpu = model.log_likelihood(rows, K=5000, seed=3, progress=False)
    model.to("cpu")
    ref64 = runs["cpu64"][0]
    ref64.params.flat[...] = model.params.flat.astype(np.float64)
    ll_64 = ref64.log_likelihood(rows, K=5000, seed=3, progress=False)
    try:
        assert_close3(ll_gpu, ll_cpu, ll_64, atol=1e-5 * np.abs(ll_64).max(),
                      name="log p(x), K=5000, same parameters")
    except AssertionError as e:
        failures.append(str(e))
    result["same_parameters_log_likelihood"] = dict(cuda32=ll_gpu.tolist(),
                                                     cpu32=ll_cpu.tolist(), cpu64=ll_64.tolist())
    result["failures"] = failures
    with open(os.path.join(out, "gpu_model_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    for name in ("cuda32", "cpu32", "cpu64"):
        r = result[name]
        print(f"{name}: losses {['%.4f' % v for v in r['losses']]}, fit {r['seconds']:.1f} s, "
              f"log p(x) K=5000 mean {r['log_likelihood_K5000_mean']:.3f} "
              f"({r['log_likelihood_K5000_seconds']:.2f} s)")
    print("same parameters, log p(x) mean: cuda %.4f, cpu32 %.4f, cpu64 %.4f" %
          (ll_gpu.mean(), ll_cpu.mean(), ll_64.mean()))
    print("FAIL:\n" + "\n".join(failures) if failures else "model check: CPU and GPU agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
