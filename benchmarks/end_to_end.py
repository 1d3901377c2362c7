"""End-to-end benchmark: fastvae against PyTorch eager and JAX jit on the same work, one process.

    .venv/bin/python benchmarks/end_to_end.py [--quick] [--threads N] [--json out.json]

Work (canonical 784-400-20-400-784 Bernoulli VAE, float32, Adam lr 1e-3):

* train: one Adam step at batch 32, 128, 512 (samples/s). fastvae does exactly what
  ``fit`` does per step (``_Loop.step``): Philox noise, ``_loss_and_grads_into``, the finiteness
  checks and the fused Adam update, inside ``blas_owns_the_cores``. PyTorch: torch.nn.Linear,
  reparameterization, BCE-with-logits sum + analytic KL (mean over the batch), torch.optim.Adam
  (default foreach, and fused=True where available). JAX: jax.value_and_grad of the same loss and a
  hand-written Adam, all in one jit with donated buffers.
* loglik: importance-weighted log-likelihood, K=1000 for 32 examples ((x, k) pairs/s). fastvae
  ``model.log_likelihood``; torch and JAX chunked over K (125 samples x 32 rows = 4000 pairs per
  chunk, the same working set as fastvae's 4096-pair chunks), log-sum-exp merged across chunks.
* GEMM-only bound: the time of exactly the step's matrix products (forward, backward without the
  first layer's dx; the decoder's products for loglik) in NumPy float32 at the same shapes, probed
  at the start and at the end of the run; the bound is batch / that time. The FLOP count per step
  is forward F = 2*B*(784*400 + 2*400*20 + 20*400 + 400*784), backward 2F - 2*B*784*400.

Noise: every contender runs one block of steps (~0.15 s, ~0.05 s with --quick) per repeat, in the
order A B C A B C ..., after a warm-up block each; rows give the median of the per-block rates and
the spread (min-max as a fraction of the median). Peers that do not import show "not installed".
Threads: --threads N (default 2) pins the process to N cores when fewer than all, and sets
OpenBLAS/OMP/MKL/Numba thread counts and torch.set_num_threads before the libraries load; JAX's
CPU thread pool has no public knob, so for JAX the core pinning is what bounds it.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

D, H, L = 784, 400, 20
LR = 1e-3


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="7 repeats of short blocks")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--batches", default="32,128,512")
    p.add_argument("--K", type=int, default=1000)
    return p.parse_args()


ARGS = parse_args()
_all_cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
if _all_cpus and ARGS.threads < len(_all_cpus):
    os.sched_setaffinity(0, _all_cpus[:ARGS.threads])
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
if ARGS.threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastvae  # noqa: E402
from fastvae import _backend  # noqa: E402
from fastvae.optim import Adam  # noqa: E402
from fastvae.train import train_step  # noqa: E402

try:
    import torch
except ImportError:
    torch = None
try:
    import jax
    import jax.numpy as jnp
except ImportError:
    jax = jnp = None

REPEATS = 7 if ARGS.quick else 11
BLOCK_S = 0.05 if ARGS.quick else 0.15


# ---------------------------------------------------------------------------------------------
# timing: interleaved blocks
# ---------------------------------------------------------------------------------------------
def calibrate(fn):
    """Calls per block so one block takes ~BLOCK_S (one warm-up call first)."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(BLOCK_S / dt))


def interleaved(contenders, work_per_call):
    """contenders: {name: (fn, sync)} -> {name: [rate per block]}; A B C A B C ... after a
    warm-up block each. sync() (or None) waits for asynchronous work at the end of a block."""
    plan = {}
    for name, (fn, sync) in contenders.items():
        n = calibrate(lambda: (fn(), sync and sync()))
        for _ in range(n):     # warm-up block
            fn()
        if sync:
            sync()
        plan[name] = n
    rates = {name: [] for name in contenders}
    for _ in range(REPEATS):
        for name, (fn, sync) in contenders.items():
            n = plan[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if sync:
                sync()
            rates[name].append(n * work_per_call / (time.perf_counter() - t0))
    return rates


def summary(rates):
    r = np.asarray(rates)
    med = float(np.median(r))
    return dict(median=med, spread=float((r.max() - r.min()) / med), n=len(r),
                rates=[float(x) for x in r])


# ---------------------------------------------------------------------------------------------
# GEMM-only bound: exactly the step's products in NumPy float32
# ---------------------------------------------------------------------------------------------
def step_flops(b):
    fwd = 2 * b * (D * H + 2 * H * L + L * H + H * D)
    return fwd + 2 * fwd - 2 * b * D * H


def loglik_flops_per_pair():
    return 2 * (L * H + H * D)     # decoder per pair; the encoder runs once per row


def _gemm_step_fn(b):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w1, wmu, wlv, w3, w4 = f(b, D), f(D, H), f(H, L), f(H, L), f(L, H), f(H, D)
    h, z, h2, dout, dh2, dmu, dh = f(b, H), f(b, L), f(b, H), f(b, D), f(b, H), f(b, L), f(b, H)

    def run():
        x @ w1; h @ wmu; h @ wlv; z @ w3; h2 @ w4                      # forward
        h2.T @ dout; dout @ w4.T                                       # dec_out
        z.T @ dh2; dh2 @ w3.T                                          # dec0
        h.T @ dmu; dmu @ wmu.T; h.T @ dmu; dmu @ wlv.T                 # mu, logvar heads
        x.T @ dh                                                       # enc0 (no dx)
    return run


def _gemm_loglik_fn(pairs):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((pairs, L)).astype(np.float32)
    h = rng.standard_normal((pairs, H)).astype(np.float32)
    w3 = rng.standard_normal((L, H)).astype(np.float32)
    w4 = rng.standard_normal((H, D)).astype(np.float32)
    return lambda: (z @ w3, h @ w4)


def _median_seconds(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def gemm_probe(batches, chunk_pairs):
    out = {}
    for b in batches:
        s = _median_seconds(_gemm_step_fn(b), 31)
        out[f"train_b{b}"] = dict(seconds=s, gflops=step_flops(b) / s / 1e9, bound=b / s)
    s = _median_seconds(_gemm_loglik_fn(chunk_pairs), 15)
    out["loglik"] = dict(seconds=s, gflops=chunk_pairs * loglik_flops_per_pair() / s / 1e9,
                         bound=chunk_pairs / s)
    return out


# ---------------------------------------------------------------------------------------------
# fastvae
# ---------------------------------------------------------------------------------------------
def fastvae_step(b, x):
    model = fastvae.VAE(D, (H,), L, seed=0, dtype="float32")
    opt = Adam(model, LR)
    grads = model.params.zeros_like()
    xb = np.ascontiguousarray(x, dtype=np.float32)

    def step():   # exactly what fit runs per step, inside fit's blas_owns_the_cores
        with _backend.blas_owns_the_cores(model.device):
            train_step(model, opt, xb, grads, seed=0, batch_size=b)
    return step


def fastvae_loglik(x, K):
    model = fastvae.VAE(D, (H,), L, seed=0, dtype="float32")
    return lambda: model.log_likelihood(x, K=K, seed=1, progress=False)


# ---------------------------------------------------------------------------------------------
# PyTorch eager
# ---------------------------------------------------------------------------------------------
def _torch_model():
    nn = torch.nn
    torch.manual_seed(0)

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc0, self.enc_mu, self.enc_logvar = nn.Linear(D, H), nn.Linear(H, L), nn.Linear(H, L)
            self.dec0, self.dec_out = nn.Linear(L, H), nn.Linear(H, D)

        def encode(self, x):
            h = torch.relu(self.enc0(x))
            return self.enc_mu(h), self.enc_logvar(h)

        def decode(self, z):
            return self.dec_out(torch.relu(self.dec0(z)))

        def loss(self, x):
            mu, logvar = self.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec = torch.nn.functional.binary_cross_entropy_with_logits(
                self.decode(z), x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu * mu - torch.exp(logvar))
            return (rec + kl) / x.shape[0]
    return TorchVAE()


def torch_adam_fused_ok():
    try:
        m = torch.nn.Linear(2, 2)
        opt = torch.optim.Adam(m.parameters(), lr=LR, fused=True)
        m(torch.ones(1, 2)).sum().backward()
        opt.step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def torch_step(x, fused):
    model = _torch_model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, **({"fused": True} if fused else
                                                          {"fused": False}))
    xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(xb)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def torch_loglik(x, K, kc):
    model = _torch_model()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = xt.shape[0]
    log2pi = float(np.log(2 * np.pi))

    @torch.no_grad()
    def run():
        mu, logvar = model.encode(xt)
        std = torch.exp(0.5 * logvar)
        parts = []
        xr = xt.unsqueeze(1).expand(n, kc, D)
        for _ in range(0, K, kc):
            eps = torch.randn(n, kc, L)
            z = mu.unsqueeze(1) + std.unsqueeze(1) * eps
            logits = model.decode(z.reshape(n * kc, L)).reshape(n, kc, D)
            logpx = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xr, reduction="none").sum(-1)
            logpz = -0.5 * (z * z).sum(-1) - 0.5 * L * log2pi
            logq = -0.5 * (eps * eps + logvar.unsqueeze(1)).sum(-1) - 0.5 * L * log2pi
            parts.append(torch.logsumexp(logpx + logpz - logq, dim=1))
        return (torch.logsumexp(torch.stack(parts, 1), dim=1) - np.log(K)).numpy()
    return run


# ---------------------------------------------------------------------------------------------
# JAX jit
# ---------------------------------------------------------------------------------------------
def _jax_params():
    rng = np.random.default_rng(0)

    def lin(i, o):
        bound = 1 / np.sqrt(i)
        return (jnp.asarray(rng.uniform(-bound, bound, (i, o)).astype(np.float32)),
                jnp.zeros(o, jnp.float32))
    return dict(enc0=lin(D, H), enc_mu=lin(H, L), enc_logvar=lin(H, L), dec0=lin(L, H),
                dec_out=lin(H, D))


def _jax_encode(p, x):
    h = jax.nn.relu(x @ p["enc0"][0] + p["enc0"][1])
    return h @ p["enc_mu"][0] + p["enc_mu"][1], h @ p["enc_logvar"][0] + p["enc_logvar"][1]


def _jax_decode(p, z):
    return jax.nn.relu(z @ p["dec0"][0] + p["dec0"][1]) @ p["dec_out"][0] + p["dec_out"][1]


def _bce_logits(logits, x):   # -log p(x | logits), elementwise
    return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def jax_step(x):
    def loss_fn(p, xb, key):
        mu, logvar = _jax_encode(p, xb)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, jnp.float32)
        rec = _bce_logits(_jax_decode(p, z), xb).sum()
        kl = -0.5 * jnp.sum(1 + logvar - mu * mu - jnp.exp(logvar))
        return (rec + kl) / xb.shape[0]

    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(state, xb):
        p, m, v, t, key = state
        key, sub = jax.random.split(key)
        loss, g = jax.value_and_grad(loss_fn)(p, xb, sub)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        lr_t = LR * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = jax.tree_util.tree_map(lambda p, m, v: p - lr_t * m / (jnp.sqrt(v) + eps), p, m, v)
        return (p, m, v, t, key), loss
    step = jax.jit(step, donate_argnums=0)

    p = _jax_params()
    zeros = jax.tree_util.tree_map(jnp.zeros_like, p)
    box = {"state": (p, zeros, jax.tree_util.tree_map(jnp.zeros_like, p),
                     jnp.float32(0), jax.random.PRNGKey(0)), "loss": None}
    xb = jnp.asarray(np.ascontiguousarray(x, dtype=np.float32))

    def run():
        box["state"], box["loss"] = step(box["state"], xb)
    return run, lambda: box["loss"].block_until_ready()


def jax_loglik(x, K, kc):
    n = x.shape[0]
    log2pi = float(np.log(2 * np.pi))

    @jax.jit
    def loglik(p, xb, key):
        mu, logvar = _jax_encode(p, xb)
        std = jnp.exp(0.5 * logvar)

        def chunk(k):
            eps = jax.random.normal(k, (n, kc, L), jnp.float32)
            z = mu[:, None] + std[:, None] * eps
            logits = _jax_decode(p, z.reshape(n * kc, L)).reshape(n, kc, D)
            logpx = -_bce_logits(logits, xb[:, None]).sum(-1)
            logpz = -0.5 * (z * z).sum(-1) - 0.5 * L * log2pi
            logq = -0.5 * (eps * eps + logvar[:, None]).sum(-1) - 0.5 * L * log2pi
            return jax.nn.logsumexp(logpx + logpz - logq, axis=1)
        parts = jax.lax.map(chunk, jax.random.split(key, K // kc))   # (K/kc, n), one at a time
        return jax.nn.logsumexp(parts, axis=0) - jnp.log(K)

    p = _jax_params()
    xb = jnp.asarray(np.ascontiguousarray(x, dtype=np.float32))
    key = jax.random.PRNGKey(1)
    return lambda: loglik(p, xb, key).block_until_ready()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def _git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode != 0
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    import numba
    numba.set_num_threads(min(ARGS.threads, numba.config.NUMBA_NUM_THREADS))
    torch_fused = False
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
        torch_fused = torch_adam_fused_ok()
    batches = [int(b) for b in ARGS.batches.split(",")]
    K, n_ll = ARGS.K, 32
    kc = next(c for c in range(max(1, 4096 // n_ll), 0, -1) if K % c == 0)
    rng = np.random.default_rng(0)
    x_all = (rng.random((max(batches + [n_ll]), D)) < 0.3).astype(np.float32)

    probes = {"start": gemm_probe(batches, n_ll * kc)}
    peers = ["torch", "torch fused", "jax"]
    rows = []
    for b in batches:
        x = x_all[:b]
        c = {"fastvae": (fastvae_step(b, x), None)}
        if torch is not None:
            c["torch"] = (torch_step(x, fused=False), None)
            if torch_fused:
                c["torch fused"] = (torch_step(x, fused=True), None)
        if jax is not None:
            c["jax"] = jax_step(x)
        rows.append(dict(work="train step", batch=b, unit="samples/s", gemm_key=f"train_b{b}",
                         results={k: summary(v) for k, v in interleaved(c, b).items()}))
    x = x_all[:n_ll]
    c = {"fastvae": (fastvae_loglik(x, K), None)}
    if torch is not None:
        c["torch"] = (torch_loglik(x, K, kc), None)
    if jax is not None:
        c["jax"] = (jax_loglik(x, K, kc), None)
    rows.append(dict(work=f"loglik K={K}", batch=n_ll, unit="pairs/s", gemm_key="loglik",
                     results={k: summary(v) for k, v in interleaved(c, n_ll * K).items()}))
    probes["end"] = gemm_probe(batches, n_ll * kc)

    missing = {"torch": torch is None, "torch fused": torch is None or not torch_fused,
               "jax": jax is None}
    for row in rows:
        bound = min(probes["start"][row["gemm_key"]]["bound"], probes["end"][row["gemm_key"]]["bound"])
        bound_hi = max(probes["start"][row["gemm_key"]]["bound"], probes["end"][row["gemm_key"]]["bound"])
        row["gemm_bound"] = dict(low=bound, high=bound_hi)
        fv = row["results"]["fastvae"]["median"]
        row["fastvae_fraction_of_bound"] = fv / bound_hi, fv / bound
        row["ratio_fastvae_over"] = {p: fv / row["results"][p]["median"]
                                     for p in peers if p in row["results"]}

    # table
    def fmt(s):
        return f"{s['median'] / 1e3:7.1f}k ±{100 * s['spread']:3.0f}%"
    head = (f"{'work':<14}{'batch':>6} {'fastvae':>14}" + "".join(f" {p:>14}" for p in peers) +
            f" {'GEMM bound':>16} {'fv/bound':>11}" + "".join(f" {'fv/' + p:>14}" for p in peers))
    print()
    print(f"threads={ARGS.threads}  repeats={REPEATS} x ~{BLOCK_S:.2f} s blocks, interleaved; "
          f"median rate, ± spread = (max-min)/median")
    print("GEMM probe (step GEMMs in NumPy f32, GFLOP/s) start: " +
          ", ".join(f"{k}={v['gflops']:.0f}" for k, v in probes["start"].items()) +
          "; end: " + ", ".join(f"{k}={v['gflops']:.0f}" for k, v in probes["end"].items()))
    print(head)
    print("-" * len(head))
    for row in rows:
        r = row["results"]
        line = f"{row['work']:<14}{row['batch']:>6} {fmt(r['fastvae']):>14}"
        for p in peers:
            line += f" {fmt(r[p]) if p in r else 'not installed' if missing[p] else 'n/a':>14}"
        gb = row["gemm_bound"]
        fr = row["fastvae_fraction_of_bound"]
        line += f" {gb['low'] / 1e3:6.1f}-{gb['high'] / 1e3:5.1f}k {fr[0]:4.2f}-{fr[1]:4.2f}"
        for p in peers:
            ratio = row["ratio_fastvae_over"].get(p)
            line += f" {'' if ratio is None else f'{ratio:.2f}x':>14}"
        print(line)
    print(f"({row['unit']} for loglik: (x, k) pairs/s; train rows: samples/s; "
          f"loglik chunks of {kc} samples x {n_ll} rows for torch/JAX)")

    if ARGS.json:
        import numba as nb
        info = dict(
            machine=dict(platform=platform.platform(), cpu=_cpu_model(), cpus=os.cpu_count(),
                         affinity=sorted(os.sched_getaffinity(0)) if _all_cpus else None,
                         python=platform.python_version()),
            threads=ARGS.threads, quick=ARGS.quick, repeats=REPEATS, block_seconds=BLOCK_S,
            versions=dict(numpy=np.__version__, numba=nb.__version__,
                          fastvae=getattr(fastvae, "__version__", None),
                          torch=None if torch is None else torch.__version__,
                          jax=None if jax is None else jax.__version__,
                          jaxlib=None if jax is None else __import__("jaxlib").__version__),
            torch_fused_adam=torch_fused, git_commit=_git_commit(), probes=probes, rows=rows,
            env={k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                "NUMBA_NUM_THREADS", "XLA_FLAGS")})
        with open(ARGS.json, "w") as f:
            json.dump(info, f, indent=1)
        print(f"wrote {ARGS.json}")


if __name__ == "__main__":
    main()
