"""Jitted value_and_grad of the fused ELBO loss under JAX: fastvae through jax.pure_callback
(fastvae.jax today) vs fastvae through XLA's FFI (fastvae/_xla.py) vs the pure-jnp formula of
tests/test_jax.py; plus the cost of an empty pure_callback and the bare kernel on NumPy arrays.

    .venv/bin/python benchmarks/dev/jax_ffi.py [N,D,L ...]      # default 128,784,20 4096,784,20
    .venv/bin/python benchmarks/dev/jax_ffi.py --iwae [N,K,D,L ...]
                                           # default 32,64,784,20 128,256,784,20

--iwae: jitted value_and_grad (dec_out, mu, logvar) of fvj.iwae_loss (mean, Bernoulli) on its
route (fastvae/_xla.py's ffi-numba where it builds) vs the same through jax.pure_callback vs the
pure-jnp formula of tests/test_jax.py::jax_iwae_loss.
    .venv/bin/python benchmarks/dev/jax_ffi.py --reparam [N,L ...]    # default 128,20 4096,20

--reparam: jitted value_and_grad (mu, logvar) of sum(fvj.reparameterize(mu, logvar, key) * w) on
its route vs through jax.pure_callback vs the jnp formula with jax.random.normal noise.

float32, Bernoulli, beta = 1. Every contender is warmed up, then the contenders run interleaved:
REPEATS rounds (default 21), each round times a block of calls of every contender (block sized to
~BLOCK_S seconds on the warm-up), and the median per-call time over rounds is printed with the
min-max. Thread settings are printed first (XLA's CPU client uses the cores of the process).
"""
import os
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

import fastvae
import fastvae.jax as fvj
from fastvae import ops

REPEATS = int(os.environ.get("REPEATS", "21"))
BLOCK_S = float(os.environ.get("BLOCK_S", "0.05"))


def jnp_loss(x, dec_out, mu, logvar):
    ll = jnp.sum(x * dec_out - jnp.logaddexp(0.0, dec_out), axis=1)
    kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1 - logvar, axis=1)
    return -jnp.mean(ll - kl)


def inputs(n, d, l, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.uniform(0.02, 0.98, (n, d)).astype(dtype), rng.normal(0, 2, (n, d)).astype(dtype),
            rng.normal(0, 1, (n, l)).astype(dtype), rng.normal(0, 1, (n, l)).astype(dtype)]


def contenders(n, d, l):
    arrays = inputs(n, d, l)
    jarrays = [jnp.asarray(a) for a in arrays]
    out = {}
    out["pure jnp"] = (jax.jit(jax.value_and_grad(jnp_loss, argnums=(1, 2, 3))), jarrays)
    out["fvj pure_callback"] = (jax.jit(jax.value_and_grad(fvj.elbo_loss, argnums=(1, 2, 3))),
                                jarrays)
    try:
        from fastvae import _xla
        for route in _xla.available_routes():
            loss = _xla.elbo_loss_with_route(route)
            out[f"fvj {route}"] = (jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3))), jarrays)
    except ImportError:
        pass
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in jarrays[1:])
    loss_shape = jax.ShapeDtypeStruct((), jnp.float32)
    outs = tuple(np.zeros(s.shape, s.dtype) for s in shapes)
    zero = np.zeros((), np.float32)

    def empty_same_io(x, dec_out, mu, logvar):
        return jax.pure_callback(lambda *a: (zero, *outs), (loss_shape, *shapes),
                                 x, dec_out, mu, logvar)
    out["empty pure_callback (same I/O)"] = (jax.jit(empty_same_io), jarrays)

    def empty_scalar(x):
        return jax.pure_callback(lambda a: zero, loss_shape, x)
    out["empty pure_callback (0-d in/out)"] = (jax.jit(empty_scalar), [jnp.zeros((), jnp.float32)])
    out["ops.elbo_loss_and_grads (NumPy)"] = (
        lambda *a: ops.elbo_loss_and_grads(*a), arrays)
    return out


def step_contenders(n, hidden=400, l=20, d=784):
    """A jitted VAE training step (784-400-20 MLP, relu, SGD): value_and_grad over the params of
    the loss, the same model and noise for every contender; only the loss differs."""
    rng = np.random.default_rng(1)
    def w(i, o):
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(i), (i, o)), jnp.float32)
    params = {"e1": w(d, hidden), "b1": jnp.zeros(hidden), "e2": w(hidden, 2 * l),
              "b2": jnp.zeros(2 * l), "d1": w(l, hidden), "c1": jnp.zeros(hidden),
              "d2": w(hidden, d), "c2": jnp.zeros(d)}
    x = jnp.asarray(rng.random((n, d)) < 0.3, jnp.float32)
    eps = jnp.asarray(rng.normal(0, 1, (n, l)), jnp.float32)

    def make(loss):
        def objective(p, x, eps):
            h = jax.nn.relu(x @ p["e1"] + p["b1"])
            mu, logvar = jnp.split(h @ p["e2"] + p["b2"], 2, axis=1)
            z = mu + jnp.exp(logvar / 2) * eps
            logits = jax.nn.relu(z @ p["d1"] + p["c1"]) @ p["d2"] + p["c2"]
            return loss(x, logits, mu, logvar)

        @jax.jit
        def step(p, x, eps):
            value, g = jax.value_and_grad(objective)(p, x, eps)
            return value, jax.tree_util.tree_map(lambda a, b: a - 1e-3 * b, p, g)
        return step
    out = {"step: pure jnp": (make(jnp_loss), [params, x, eps]),
           "step: fvj pure_callback": (make(fvj.elbo_loss), [params, x, eps])}
    try:
        from fastvae import _xla
        for route in _xla.available_routes():
            out[f"step: fvj {route}"] = (make(_xla.elbo_loss_with_route(route)), [params, x, eps])
    except ImportError:
        pass
    return out


def jnp_iwae_loss(x, dec_out, mu, logvar, eps):
    # tests/test_jax.py::jax_iwae_loss, Bernoulli, mean
    log_2pi = float(np.log(2.0 * np.pi))
    z = mu[:, None] + jnp.exp(logvar / 2)[:, None] * eps
    log_pz = -0.5 * jnp.sum(z * z + log_2pi, axis=2)
    log_qz = -0.5 * jnp.sum(log_2pi + logvar[:, None] + eps * eps, axis=2)
    ll = jnp.sum(x[:, None] * dec_out - jnp.logaddexp(0.0, dec_out), axis=-1)
    logw = ll + log_pz - log_qz
    return jnp.mean(-(jax.scipy.special.logsumexp(logw, axis=1) - np.log(logw.shape[1])))


def iwae_contenders(n, k, d, l):
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0.02, 0.98, (n, d)), rng.normal(0, 2, (n, k, d)),
              rng.normal(0, 1, (n, l)), rng.normal(0, 1, (n, l)), rng.normal(0, 1, (n, k, l))]
    jarrays = [jnp.asarray(a, jnp.float32) for a in arrays]
    argnums = (1, 2, 3)
    out = {"pure jnp": (jax.jit(jax.value_and_grad(jnp_iwae_loss, argnums=argnums)), jarrays)}
    # fvj.iwae_loss traced with _callback = _pure_callback: the route before the FFI port
    saved = fvj._callback
    fvj._callback = fvj._pure_callback
    fvj._iwae_fn.cache_clear()
    try:
        fn = jax.jit(jax.value_and_grad(fvj.iwae_loss, argnums=argnums))
        block(fn, jarrays)                    # traced and compiled now, on pure_callback
        out["fvj pure_callback"] = (fn, jarrays)
    finally:
        fvj._callback = saved
        fvj._iwae_fn.cache_clear()
    try:
        from fastvae import _xla
        name = f"fvj {_xla.route()}"
    except ImportError:
        name = "fvj"
    out[name] = (jax.jit(jax.value_and_grad(fvj.iwae_loss, argnums=argnums)), jarrays)
    return out


def reparam_contenders(n, l):
    rng = np.random.default_rng(0)
    mu, logvar, w = (jnp.asarray(rng.normal(0, 1, (n, l)), jnp.float32) for _ in range(3))
    key = jax.random.key(0)

    def jnp_loss(mu, logvar, key):
        eps = jax.random.normal(key, mu.shape, mu.dtype)
        return jnp.sum((mu + jnp.exp(logvar / 2) * eps) * w)

    def fvj_loss(mu, logvar, key):
        return jnp.sum(fvj.reparameterize(mu, logvar, key=key) * w)
    args = [mu, logvar, key]
    out = {"pure jnp": (jax.jit(jax.value_and_grad(jnp_loss, argnums=(0, 1))), args)}
    saved = fvj._callback
    fvj._callback = fvj._pure_callback      # traced now, on pure_callback
    try:
        fn = jax.jit(jax.value_and_grad(fvj_loss, argnums=(0, 1)))
        block(fn, args)
        out["fvj pure_callback"] = (fn, args)
    finally:
        fvj._callback = saved
    try:
        from fastvae import _xla
        name = f"fvj {_xla.route()}"
    except ImportError:
        name = "fvj"
    out[name] = (jax.jit(jax.value_and_grad(fvj_loss, argnums=(0, 1))), args)
    return out


def block(fn, args):
    r = fn(*args)
    jax.block_until_ready(r)


def main():
    argv = sys.argv[1:]
    iwae, reparam = "--iwae" in argv, "--reparam" in argv
    argv = [a for a in argv if a not in ("--iwae", "--reparam")]
    default = ([(32, 64, 784, 20), (128, 256, 784, 20)] if iwae else
               [(128, 20), (4096, 20)] if reparam else [(128, 784, 20), (4096, 784, 20)])
    sizes = [tuple(int(v) for v in s.split(",")) for s in argv] or default
    import numba
    print(f"jax {jax.__version__}, devices {jax.devices()}, fastvae.num_threads() = "
          f"{fastvae.num_threads() if hasattr(fastvae, 'num_threads') else '?'}, numba threads "
          f"{numba.get_num_threads()}, os.sched_getaffinity {len(os.sched_getaffinity(0))}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"FASTVAE_NUM_THREADS={os.environ.get('FASTVAE_NUM_THREADS', '')!r}, "
          f"load {os.getloadavg()[0]:.2f}")
    try:
        from fastvae import _xla
        print(f"fastvae._xla.route() = {_xla.route()}")
    except ImportError:
        pass
    if reparam:
        runs = [(f"reparameterize value_and_grad, (N, L) = {s}", reparam_contenders(*s),
                 "pure jnp") for s in sizes]
    elif iwae:
        runs = [(f"iwae_loss value_and_grad, (N, K, D, L) = {s}", iwae_contenders(*s),
                 "pure jnp") for s in sizes]
    else:
        runs = [(f"(N, D, L) = ({n}, {d}, {l})", contenders(n, d, l), "pure jnp")
                for n, d, l in sizes]
    if not (iwae or reparam) and os.environ.get("STEP", "1") != "0":
        runs.append(("VAE step 784-400-20, batch 128", step_contenders(128), "step: pure jnp"))
    for title, cs, base_name in runs:
        reps = {}
        for name, (fn, args) in cs.items():        # warm-up (and compile)
            for _ in range(3):
                block(fn, args)
            t = time.perf_counter()
            k = 0
            while time.perf_counter() - t < BLOCK_S / 2 or k < 2:
                block(fn, args)
                k += 1
            reps[name] = max(1, int(k * BLOCK_S / (time.perf_counter() - t) * 0.5 + 0.5))
        times = {name: [] for name in cs}
        for _ in range(REPEATS):
            for name, (fn, args) in cs.items():
                t = time.perf_counter()
                for _ in range(reps[name]):
                    block(fn, args)
                times[name].append((time.perf_counter() - t) / reps[name])
        base = np.median(times[base_name])
        print(f"\n{title}, float32, median of {REPEATS} interleaved rounds "
              f"[min-max], us/call, ratio to {base_name}:")
        for name, ts in times.items():
            med = np.median(ts)
            print(f"  {name:40s} {med * 1e6:9.1f}  [{min(ts) * 1e6:.1f}-{max(ts) * 1e6:.1f}]"
                  f"  x{med / base:.2f}  ({reps[name]} calls/round)")


if __name__ == "__main__":
    main()
