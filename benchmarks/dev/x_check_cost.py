"""What the Bernoulli x check costs in the fused ELBO pass (issue 13: refuse x outside [0, 1],
e.g. a call with (x, dec_out) swapped). Two variants of fastvae.cpu.elbo.elbo_loss_and_grads,
timed in the same process, interleaved (old, new, old, new, ...):

  old   the pass before the check, kept only here: the row functions of fastvae/cpu/loglik.py
        (_bernoulli_row_grads_f32/_f64) without the ``bad |= x_outside_unit(x)`` line, the
        row/tile kernels of fastvae/cpu/elbo.py without the flag array
  new   fastvae.cpu.elbo.elbo_loss_and_grads: the flag per row from the loop that reads x, and
        the launcher's ``bad.any()``

    .venv/bin/python benchmarks/dev/x_check_cost.py      # REP=21, 2 threads (THREADS=2)

float32, (N, D, L) = (128, 784, 20) and (4096, 784, 20), x uniform in [0, 1] with exact 0s and 1s,
logits 3 N(0, 1). Each repeat times CALLS calls of one variant; medians (min-max) per call over REP
repeats after a warm-up. Also checks that both variants give the same bits.
"""
import os
import time

import numpy as np
from numba import types
from numba.extending import overload

import fastvae
from fastvae._threads import run_tiles
from fastvae.cpu import elbo
from fastvae.cpu._atomic import fetch_add
from fastvae.cpu._math import exp_f32, exp_nonpositive, log1p_unit_f32, log1p_unit_f64
from fastvae.cpu._numba import FASTMATH, jit
from fastvae.cpu.kl import kl_row_and_backward

REP = int(os.environ.get("REP", 21))
THREADS = int(os.environ.get("THREADS", 2))
SHAPES = ((128, 784, 20, 40), (4096, 784, 20, 2))   # (N, D, L, CALLS per repeat)


# ---- the old pass (fastvae/cpu/loglik.py and elbo.py before the check), same code otherwise ---
@jit
def _old_row_f64(dlogit_row, dll_n, x_row, logit_row):
    acc = 0.0
    for d in range(x_row.shape[0]):
        x = np.float64(x_row[d])
        l = np.float64(logit_row[d])
        e = exp_nonpositive(-abs(l))
        acc += x * l - ((l if l > 0.0 else 0.0) + log1p_unit_f64(e))
        dlogit_row[d] = dll_n * (x - (1.0 if l >= 0.0 else e) / (1.0 + e))
    return acc


@jit
def _old_row_f32(dlogit_row, dll_n, x_row, logit_row):
    acc = np.float32(0.0)
    g = np.float32(dll_n)
    zero, one = np.float32(0.0), np.float32(1.0)
    for d in range(x_row.shape[0]):
        x = x_row[d]
        l = logit_row[d]
        e = exp_f32(-abs(l))
        acc += x * l - ((l if l > zero else zero) + log1p_unit_f32(e))
        dlogit_row[d] = g * (x - (one if l >= zero else e) / (one + e))
    return np.float64(acc)


def old_row(dlogit_row, dll_n, x_row, logit_row):
    raise NotImplementedError


@overload(old_row, jit_options={"fastmath": set(FASTMATH)})
def _old_row_by_dtype(dlogit_row, dll_n, x_row, logit_row):
    if logit_row.dtype == types.float32:
        return lambda dlogit_row, dll_n, x_row, logit_row: _old_row_f32(
            dlogit_row, dll_n, x_row, logit_row)
    return lambda dlogit_row, dll_n, x_row, logit_row: _old_row_f64(
        dlogit_row, dll_n, x_row, logit_row)


@jit
def _old_grads_row(dlogit_row, dmu_row, dlogvar_row, x_row, logit_row, mu_row, logvar_row, g,
                   beta):
    ll = old_row(dlogit_row, g, x_row, logit_row)
    return ll - beta * kl_row_and_backward(dmu_row, dlogvar_row, -beta * g, mu_row, logvar_row)


@jit
def _old_tiles(counter, n_tiles, out, dlogits, dmu, dlogvar, x, logits, mu, logvar, g, beta,
               tile_rows):
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        for n in range(t * tile_rows, min(x.shape[0], (t + 1) * tile_rows)):
            out[n] = _old_grads_row(dlogits[n], dmu[n], dlogvar[n], x[n], logits[n], mu[n],
                                    logvar[n], g, beta)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


def old_loss_and_grads(x, dec_out, mu, logvar, beta=1.0):
    n = x.shape[0]
    g, beta = -1.0 / n, float(beta)
    out = np.empty(n)
    ddec_out, dmu, dlogvar = np.empty_like(dec_out), np.empty_like(mu), np.empty_like(logvar)
    run_tiles(-(-n // elbo.ROW_TILE), _old_tiles, out, ddec_out, dmu, dlogvar, x, dec_out, mu,
              logvar, g, beta, elbo.ROW_TILE)
    return -float(out.sum()) / n, (ddec_out, dmu, dlogvar)


def new_loss_and_grads(x, dec_out, mu, logvar, beta=1.0):
    return elbo.elbo_loss_and_grads(x, dec_out, mu, logvar, "bernoulli", None, beta)


def inputs(n, d, l, dtype=np.float32):
    rng = np.random.default_rng(n)
    x = rng.random((n, d))
    x[:, ::7] = np.round(x[:, ::7])
    return tuple(a.astype(dtype) for a in (x, 3 * rng.standard_normal((n, d)),
                                           rng.standard_normal((n, l)),
                                           rng.standard_normal((n, l))))


def same_bits(args):
    (l0, g0), (l1, g1) = old_loss_and_grads(*args, 0.5), new_loss_and_grads(*args, 0.5)
    return l0 == l1 and all(a.tobytes() == b.tobytes() for a, b in zip(g0, g1))


def main():
    fastvae.set_num_threads(THREADS)
    print(f"threads {THREADS}, REP {REP}, float32; per call, median (min-max) over REP repeats")
    for dtype in (np.float32, np.float64):
        for n, d, l in ((1, 1, 1), (67, 129, 20), (128, 784, 20)):
            assert same_bits(inputs(n, d, l, dtype)), (dtype, n, d, l)
    print("old and new: the same bits (float32 and float64, 3 shapes)")
    for n, d, l, calls in SHAPES:
        args = inputs(n, d, l)
        variants = {"old": old_loss_and_grads, "new": new_loss_and_grads}
        times = {name: [] for name in variants}
        for fn in variants.values():   # warm-up
            for _ in range(calls):
                fn(*args)
        for _ in range(REP):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(*args)
                times[name].append((time.perf_counter() - start) / calls)
        med = {name: float(np.median(t)) for name, t in times.items()}
        row = ", ".join(f"{name} {med[name] * 1e3:.3f} ms ({min(t) * 1e3:.3f}-{max(t) * 1e3:.3f})"
                        for name, t in times.items())
        print(f"({n}, {d}, {l}): {row}; new/old {med['new'] / med['old']:.3f}")


if __name__ == "__main__":
    main()
