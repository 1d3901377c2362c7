"""What guarding the Adam update against overflow costs in a training step (issue: a step with
lr=1e39 must not leave inf in the parameters). Three variants of Adam.update, timed in the same
run, interleaved:

  bare      adam_update alone (no guard: an overflowing step lands)
  bound     what fastvae/optim.py does: running upper bounds of max |param|, |m|, v from the
            gradient's sum |g| (already computed by the gradient guard) prove the step finite;
            the exact check runs only where they cannot
  check     adam_stays_finite (an exact read-only pass over param, m, v, grad) before every
            adam_update (losing: the pass costs as much as the update)
  undo      copy param, m, v; adam_update; all_finite(param); restore on failure (losing: the
            copies also evict the step's weights from the caches)

    .venv/bin/python benchmarks/dev/adam_guard_cost.py        # REP=15 STEPS=20

Canonical model VAE(784, (400,), 20) float32, batch 128, inside cpu_work as fit runs;
medians (min-max) of per-step times over REP repeats of STEPS steps.
"""
import os
import time

import numpy as np

from fastvae import VAE
from fastvae._threads import cpu_work
from fastvae.bench.probes import sgemm_gflops
from fastvae.optim import Adam
from fastvae.train import train_step

REP = int(os.environ.get("REP", 15))
STEPS = int(os.environ.get("STEPS", 20))


def bare(self, grad, grad_abs_sum=None):
    self.step += 1
    self.kernels.adam.adam_update(self.params, grad, self.m, self.v, self.step,
                                  self.lr, self.beta1, self.beta2, self.eps)
    return True


def check(self, grad, grad_abs_sum=None):
    args = (self.params, grad, self.m, self.v, self.step + 1, self.lr, self.beta1,
            self.beta2, self.eps)
    return self.kernels.adam.adam_stays_finite(*args) and bare(self, grad)


def undo(self, grad, grad_abs_sum=None):
    flat = self.params
    if not hasattr(self, "_saved"):
        self._saved = [np.empty_like(flat) for _ in range(3)]
    for saved, a in zip(self._saved, (flat, self.m, self.v)):
        saved[...] = a
    bare(self, grad)
    if self.kernels.adam.all_finite(flat):
        return True
    for saved, a in zip(self._saved, (flat, self.m, self.v)):
        a[...] = saved
    self.step -= 1
    return False


VARIANTS = {"bare": bare, "bound": Adam.update, "check": check, "undo": undo}


def main():
    model = VAE(784, (400,), 20, seed=0)
    opt, grads = Adam(model.params.flat), model.params.zeros_like()
    x = (np.random.default_rng(0).random((128, 784)) < 0.3).astype(np.float32)
    times = {name: [] for name in VARIANTS}
    print(f"sgemm probe at start: {sgemm_gflops():.0f} GFLOP/s")
    with cpu_work("cpu"):
        for rep in range(REP + 1):
            for name, update in VARIANTS.items():
                Adam.update = update
                t0 = time.perf_counter()
                for _ in range(STEPS):
                    train_step(model, opt, x, grads, seed=0, batch_size=128)
                if rep:                        # the first repeat warms up
                    times[name].append((time.perf_counter() - t0) / STEPS * 1e3)
    Adam.update = VARIANTS["bound"]
    print(f"sgemm probe at end: {sgemm_gflops():.0f} GFLOP/s")
    base = np.median(times["bare"])
    for name, t in times.items():
        print(f"{name:6s} {np.median(t):6.2f} ms/step ({min(t):.2f}-{max(t):.2f}), "
              f"{np.median(t) / base - 1:+.1%} vs bare")


if __name__ == "__main__":
    main()
