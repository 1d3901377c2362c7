"""fastvae's PyTorch and JAX wrappers against each library's own formula, in one run.

    .venv/bin/python benchmarks/interop.py [--quick] [--threads 2] [--json PATH]

Part 1, per-call overhead (float32, forward + backward, time per call):

- PyTorch eager: ``fvt.reparameterize`` against ``mu + exp(0.5 logvar) * randn_like(mu)``;
  ``fvt.elbo_loss`` against BCE-with-logits summed over D plus the analytic KL, mean over N;
  ``fvt.iwae_loss`` against the same log w in torch and ``logsumexp`` over K. The backward is
  ``torch.autograd.grad`` (reparameterize: with a given dz), so nothing accumulates in ``.grad``.
- JAX: ``jax.jit(jax.value_and_grad(f))`` of ``fvj.*`` against the same formula in ``jnp``
  (reparameterize: ``f = vdot(z, dz)``), ``block_until_ready`` after every call.

  Sizes: reparameterize (N, L) = (128, 20) and (4096, 64); ELBO (N, D, L) = (128, 784, 20) and
  (4096, 784, 64); IWAE (N, K, D) = (32, 64, 784) and (128, 256, 784) with L = 20. Before
  timing, the ELBO and IWAE loss values of the two contenders are compared (rtol 1e-4); a row
  whose values differ is marked "(values differ!)".

Part 2, one VAE training step, 784-400-20 (relu), batch 128, Adam lr 1e-3, steps/s:

- PyTorch: ``torch.compile(fullgraph=True)`` of forward + reparameterize + loss (AOTAutograd
  compiles its backward), ``loss.backward()``, and ``torch.compile``'d ``Adam.step``; the seed
  and offset are int64 tensors, the offset advanced in place after each step. fastvae's
  ``reparameterize`` + ``elbo_loss`` against ``randn_like`` + the torch formula. A compile
  failure is caught and its error text goes into the table.
- JAX: one ``jax.jit`` step (value_and_grad + Adam written in jnp, state donated), fvj against
  ``jax.random.normal`` + the jnp formula; synchronous (``block_until_ready`` every step).

Timing: every row's two contenders are timed interleaved (A B A B ...; the four training steps
A B C D A B C D ...), each first warmed up (compilation included: the first-call time is kept
in the JSON and printed for the steps), in blocks of about
``--block`` seconds after a short pause; a cell is the median over ``--repeats`` blocks, with
the min-max range. ratio = formula time / fastvae time (above 1: fastvae is ahead). The NumPy
sgemm probe (fastvae/bench/probes.py) is printed at the start and at the end. Threads: the
process is pinned to ``--threads`` cores (when it has more) and OMP/MKL/OpenBLAS/Numba thread
counts are set before NumPy, PyTorch or JAX load (``fastvae.bench.pin_threads``); then
``torch.set_num_threads`` and ``fastvae.set_num_threads``; XLA's Eigen pool follows the
affinity (one thread: ``--xla_cpu_multi_thread_eigen=false``).

A contender whose function does not exist reads "n/a (missing)"; one that raises reads
"n/a (error: ...)". Results go to --json (default benchmark-interop.json). --quick: the small
size of each op only, 3 blocks of ~0.03 s (a smoke run, about a minute); the full run takes
about 2-3 minutes on 2 cores.
"""
import argparse
import json
import math
import os
import sys
import time

from fastvae.bench import pin_threads   # light: argparse, os, sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sizes only, short blocks, 3 repeats (< 60 s)")
    p.add_argument("--threads", type=int, default=2, help="threads for every library (2)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per contender")
    p.add_argument("--block", type=float, default=None, help="seconds per timed block")
    p.add_argument("--json", dest="json_path", default="benchmark-interop.json")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    args.repeats = args.repeats or (3 if args.quick else 11)
    args.block = args.block or (0.03 if args.quick else 0.12)
    args.settle = 0.03 if args.quick else 0.1
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    pin_threads(ARGS.threads)   # before NumPy, Numba, PyTorch and JAX load

import numpy as np  # noqa: E402

import fastvae  # noqa: E402
from fastvae.bench import probes  # noqa: E402


def load(name):
    """The module, or the error text that every contender needing it reports."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception as exc:   # noqa: BLE001 - a wrapper mid-rewrite may not import
        return f"n/a (import {name}: {type(exc).__name__}: {exc})"


torch, jax = load("torch"), load("jax")   # error text where not installed
F = None if isinstance(torch, str) else torch.nn.functional
jnp = None if isinstance(jax, str) else jax.numpy
FVT = FVJ = None                          # fastvae.torch / fastvae.jax (or error), in main

N_STEP, ARCH = 128, (784, 400, 20)
SEED = 7
SIZES = {"reparameterize": [(128, 20), (4096, 64)],
         "elbo_loss": [(128, 784, 20), (4096, 784, 64)],
         "iwae_loss": [(32, 64, 784), (128, 256, 784)]}
IWAE_L = 20


class Missing(Exception):
    """The wrapper does not (yet) define the function."""


def need(module, name):
    fn = getattr(module, name, None)
    if fn is None:
        raise Missing(name)
    return fn


def error_text(exc):
    if isinstance(exc, Missing):
        return "n/a (missing)"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:3]
    return f"n/a (error: {type(exc).__name__}: {' / '.join(lines)})"


# ---------------------------------------------------------------------------------------------
# timing: warm-up, then interleaved blocks
# ---------------------------------------------------------------------------------------------
def warm(fn, block_s):
    """One first call (timed: compilation), one more, then a warm-up block -> (calls per
    block, first-call seconds)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    calls = max(1, int(block_s / max(one, 1e-7)))
    for _ in range(calls if one < block_s else 0):   # slow calls: the second was the warm-up
        fn()
    return calls, first


def timed_block(fn, calls):
    """Seconds per call over one block of ``calls`` calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def interleave(contenders, args):
    """contenders {name: zero-arg fn or error text} -> {name: dict(seconds=[per call, one per
    block], median, min, max, first_s) or dict(error=text)}; blocks run A B A B ..."""
    out, plan = {}, {}
    for name, fn in contenders.items():
        try:
            if isinstance(fn, str):
                raise RuntimeError(fn)
            plan[name], first = warm(fn, args.block)
            out[name] = dict(seconds=[], first_s=first)
        except Exception as exc:   # noqa: BLE001 - a failing contender is a result
            out[name] = dict(error=fn if isinstance(fn, str) else error_text(exc))
    for _ in range(args.repeats):
        for name in list(plan):
            time.sleep(args.settle)
            try:
                out[name]["seconds"].append(timed_block(contenders[name], plan[name]))
            except Exception as exc:   # noqa: BLE001
                out[name] = dict(error=error_text(exc))
                del plan[name]
    for name in plan:
        s = out[name]["seconds"]
        out[name].update(median=float(np.median(s)), min=min(s), max=max(s))
    return out


def build(builder, *args):
    """builder(*args) -> the zero-arg fn, or the error text when building fails."""
    try:
        return builder(*args)
    except Exception as exc:   # noqa: BLE001
        return error_text(exc)


# ---------------------------------------------------------------------------------------------
# inputs (NumPy, float32, fixed seed)
# ---------------------------------------------------------------------------------------------
def op_inputs(op, size):
    rng = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    if op == "reparameterize":
        n, l = size
        return dict(mu=randn(n, l), logvar=randn(n, l, scale=0.5), dz=randn(n, l))
    if op == "elbo_loss":
        n, d, l = size
        return dict(x=(rng.random((n, d)) < 0.5).astype(np.float32), dec_out=randn(n, d),
                    mu=randn(n, l, scale=0.5), logvar=randn(n, l, scale=0.5))
    n, k, d = size
    return dict(x=(rng.random((n, d)) < 0.5).astype(np.float32), dec_out=randn(n, k, d),
                mu=randn(n, IWAE_L, scale=0.5), logvar=randn(n, IWAE_L, scale=0.5),
                eps=randn(n, k, IWAE_L))


WRT = {"reparameterize": ("mu", "logvar"), "elbo_loss": ("dec_out", "mu", "logvar"),
       "iwae_loss": ("dec_out", "mu", "logvar")}


def vae_init(rng):
    """[(W, b)] for enc0 784->400, enc1 400->2L, dec0 L->400, dec1 400->784 (torch's init)."""
    d, h, l = ARCH
    shapes = [(d, h), (h, 2 * l), (l, h), (h, d)]
    out = []
    for n_in, n_out in shapes:
        bound = 1 / math.sqrt(n_in)
        out.append((rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32),
                    rng.uniform(-bound, bound, n_out).astype(np.float32)))
    return out


def step_batch():
    rng = np.random.default_rng(1)
    return (rng.random((N_STEP, ARCH[0])) < 0.3).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
def torch_elbo(x, dec_out, mu, logvar):
    rec = F.binary_cross_entropy_with_logits(dec_out, x, reduction="none").sum(1)
    kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1)
    return (rec + kl).mean()


def torch_iwae(x, dec_out, mu, logvar, eps):
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
    ll = -F.binary_cross_entropy_with_logits(dec_out, x[:, None].expand_as(dec_out),
                                             reduction="none").sum(-1)
    log_w = ll - 0.5 * (z * z).sum(-1) + 0.5 * (logvar[:, None] + eps * eps).sum(-1)
    return -(torch.logsumexp(log_w, 1) - math.log(dec_out.shape[1])).mean()


def torch_reparam(mu, logvar):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


TORCH_FORMULA = {"reparameterize": torch_reparam, "elbo_loss": torch_elbo,
                 "iwae_loss": torch_iwae}


def torch_op_fn(op, fn, arrays):
    """Zero-arg fn: fn(**tensors) forward, torch.autograd.grad backward -> (value, grads)."""
    t = {k: torch.from_numpy(v).requires_grad_(k in WRT[op]) for k, v in arrays.items()}
    dz = t.pop("dz", None)
    wrt = [t[k] for k in WRT[op]]

    def call():
        out = fn(**t)
        return out, torch.autograd.grad(out, wrt, dz)
    return call


def fastvae_op(module, op):
    """module.<op> with the call signature of the formula (reparameterize: seed, offset 0)."""
    if isinstance(module, str):
        raise ImportError(module)
    f = need(module, op)
    return (lambda mu, logvar: f(mu, logvar, SEED, 0)) if op == "reparameterize" else f


def torch_op_pair(op, arrays):
    return {"fastvae": build(lambda: torch_op_fn(op, fastvae_op(FVT, op), arrays)),
            "formula": build(torch_op_fn, op, TORCH_FORMULA[op], arrays)}


def torch_vae():
    """(enc, dec): 784-400-20 relu torch.nn.Sequential from vae_init."""
    lins = []
    for w, b in vae_init(np.random.default_rng(0)):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T))
            lin.bias.copy_(torch.from_numpy(b))
        lins.append(lin)
    relu = torch.nn.ReLU
    return torch.nn.Sequential(lins[0], relu(), lins[1]), torch.nn.Sequential(lins[2], relu(),
                                                                                lins[3])


def torch_fastvae_loss(enc, dec, x, seed, offset):
    mu, logvar = enc(x).chunk(2, dim=1)
    z = FVT.reparameterize(mu, logvar, seed, offset)
    return FVT.elbo_loss(x, dec(z), mu, logvar)


def torch_formula_loss(enc, dec, x, seed, offset):
    mu, logvar = enc(x).chunk(2, dim=1)
    return torch_elbo(x, dec(torch_reparam(mu, logvar)), mu, logvar)


def torch_step_fn(use_fastvae):
    """Zero-arg training step: forward + loss compiled (fullgraph), Adam.step compiled."""
    if use_fastvae:
        fastvae_op(FVT, "reparameterize"), fastvae_op(FVT, "elbo_loss")   # else n/a
    loss_fn = torch_fastvae_loss if use_fastvae else torch_formula_loss
    enc, dec = torch_vae()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    forward = torch.compile(loss_fn, fullgraph=True)
    opt_step = torch.compile(opt.step)
    x = torch.from_numpy(step_batch())
    seed, offset = torch.tensor(SEED), torch.tensor(0)

    def step():
        loss = forward(enc, dec, x, seed, offset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt_step()
        offset.add_(N_STEP * ARCH[2])
        return loss
    return step


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------
def jnp_bce(logits, x):
    """-log p(x | logits), elementwise, stable."""
    return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def jnp_elbo(x, dec_out, mu, logvar):
    kl = 0.5 * (mu * mu + jnp.exp(logvar) - 1 - logvar).sum(1)
    return jnp.mean(jnp_bce(dec_out, x).sum(1) + kl)


def jnp_iwae(x, dec_out, mu, logvar, eps):
    z = mu[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps
    ll = -jnp_bce(dec_out, x[:, None]).sum(-1)
    log_w = ll - 0.5 * (z * z).sum(-1) + 0.5 * (logvar[:, None] + eps * eps).sum(-1)
    return -jnp.mean(jax.nn.logsumexp(log_w, axis=1) - math.log(dec_out.shape[1]))


def jnp_reparam(mu, logvar, key):
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def jax_op_fn(op, fn, arrays):
    """Zero-arg fn: jit(value_and_grad) of fn over WRT[op], blocked until ready."""
    a = {k: jnp.asarray(v) for k, v in arrays.items()}
    wrt = WRT[op]
    rest = {k: v for k, v in a.items() if k not in wrt}
    dz = rest.pop("dz", None)

    def loss(*diff, **kw):
        out = fn(**dict(zip(wrt, diff)), **kw)
        return out if dz is None else jnp.vdot(out, dz)
    step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(wrt)))))
    diff = [a[k] for k in wrt]
    return lambda: jax.block_until_ready(step(*diff, **rest))


def jax_formula(op):
    if op == "reparameterize":
        key = jax.random.key(SEED)
        return lambda mu, logvar: jnp_reparam(mu, logvar, key)
    return {"elbo_loss": jnp_elbo, "iwae_loss": jnp_iwae}[op]


def jax_op_pair(op, arrays):
    return {"fastvae": build(lambda: jax_op_fn(op, fastvae_op(FVJ, op), arrays)),
            "formula": build(jax_op_fn, op, jax_formula(op), arrays)}


def jax_encode(p, x):
    (w0, b0), (w1, b1) = p[:2]
    return jnp.split(jax.nn.relu(x @ w0 + b0) @ w1 + b1, 2, axis=1)


def jax_decode(p, z):
    (w2, b2), (w3, b3) = p[2:]
    return jax.nn.relu(z @ w2 + b2) @ w3 + b3


def jax_loss_fn(use_fastvae):
    """loss(p, x, t): fvj's reparameterize (offset t N L) and ELBO, or the jnp formula with
    jax.random noise from fold_in(key, t)."""
    if use_fastvae:
        fastvae_op(FVJ, "reparameterize"), fastvae_op(FVJ, "elbo_loss")   # else n/a
    key0 = jax.random.key(SEED)

    def loss(p, x, t):
        mu, logvar = jax_encode(p, x)
        if use_fastvae:
            z = FVJ.reparameterize(mu, logvar, SEED, t * mu.size)
            return FVJ.elbo_loss(x, jax_decode(p, z), mu, logvar)
        z = jnp_reparam(mu, logvar, jax.random.fold_in(key0, t))
        return jnp_elbo(x, jax_decode(p, z), mu, logvar)
    return loss


def adam(p, m, v, g, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
    tf = t.astype(jnp.float32)
    lr_t = lr * jnp.sqrt(1 - b2 ** tf) / (1 - b1 ** tf)
    return jax.tree.map(lambda p, m, v: p - lr_t * m / (jnp.sqrt(v) + eps), p, m, v), m, v


def jax_step_fn(use_fastvae):
    """Zero-arg jitted training step (value_and_grad + Adam, donated state) -> loss."""
    loss_fn = jax_loss_fn(use_fastvae)

    def step(state, x):
        p, m, v, t = state
        loss, g = jax.value_and_grad(loss_fn)(p, x, t)
        p, m, v = adam(p, m, v, g, t + 1)
        return (p, m, v, t + 1), loss

    jitted = jax.jit(step, donate_argnums=0)
    p = jax.tree.map(jnp.asarray, vae_init(np.random.default_rng(0)))
    box = {"state": (p, jax.tree.map(jnp.zeros_like, p), jax.tree.map(jnp.zeros_like, p),
                     jnp.int32(0))}
    x = jnp.asarray(step_batch())

    def run():
        box["state"], loss = jitted(box["state"], x)
        return loss.block_until_ready()
    return run


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def check(pair):
    """Loss values of the two contenders agree (ELBO, IWAE); None where not comparable."""
    def value(fn):
        out = fn()[0]
        return np.asarray(out.detach() if hasattr(out, "detach") else out)
    try:
        a, b = value(pair["fastvae"]), value(pair["formula"])
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4))
    except Exception:   # noqa: BLE001 - a failing contender is reported by interleave
        return None


def op_rows(library, args):
    pair_of = torch_op_pair if library == "torch" else jax_op_pair
    rows = []
    for op, sizes in SIZES.items():
        for size in sizes[:1] if args.quick else sizes:
            pair = pair_of(op, op_inputs(op, size))
            ok = None if op == "reparameterize" else check(pair)
            rows.append(dict(part="op", op=op, size=list(size), library=library,
                             unit="time/call", values_agree=ok, **interleave(pair, args)))
            log(rows[-1])
    return rows


STEP_BUILDERS = {"torch": ("torch.compile", torch_step_fn), "jax": ("jax.jit", jax_step_fn)}


def step_rows(args):
    """The torch and JAX training steps, with and without fastvae: four contenders interleaved
    in one run, reported as one row per library."""
    contenders = {(lib, who): build(STEP_BUILDERS[lib][1], who == "fastvae")
                  for lib in libraries() for who in ("fastvae", "formula")}
    res = interleave(contenders, args)
    rows = []
    for lib in libraries():
        rows.append(dict(part="step", op=f"train step ({STEP_BUILDERS[lib][0]})",
                         size=[N_STEP, *ARCH], library=lib, unit="steps/s", values_agree=None,
                         fastvae=res[lib, "fastvae"], formula=res[lib, "formula"]))
        log(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def log(row):
    cells = "  ".join(f"{k}={cell(row, k)}" for k in ("fastvae", "formula"))
    print(f"  {row['library']:5} {row['op']:26} {fmt_size(row['size']):16} {cells}",
          file=sys.stderr, flush=True)


def fmt_size(size):
    return "x".join(map(str, size))


def scaled(row, values):
    """Per-call seconds -> (numbers, unit): steps/s for steps, else us, ms or s per call (by
    the first value)."""
    if row["unit"] == "steps/s":
        return [1 / v for v in values], "steps/s"
    scale, unit = next((f, u) for f, u in ((1e6, "us"), (1e3, "ms"), (1, "s"))
                       if values[0] * f < 1000 or u == "s")
    return [v * scale for v in values], unit


def cell(row, who):
    res = row[who]
    if "error" in res:
        return res["error"]
    (med,), unit = scaled(row, [res["median"]])
    return f"{med:.4g} {unit}"


def spread(row, who):
    res = row[who]
    if "error" in res:
        return "-"
    (_, lo, hi), _unit = scaled(row, [res["median"], res["min"], res["max"]])
    lo, hi = sorted((lo, hi))
    return f"{lo:.3g}-{hi:.3g}"


def ratio(row):
    """formula time / fastvae time: above 1, fastvae is ahead."""
    if "median" not in row["fastvae"] or "median" not in row["formula"]:
        return "-"
    return f"{row['formula']['median'] / row['fastvae']['median']:.2f}x"


def clip(text, width=70):
    return text if len(text) <= width else text[:width - 3] + "..."


def table(rows):
    lines = ["| op | size | library | fastvae median | formula median | ratio "
             "| spread (min-max) fastvae / formula |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (values differ!)" if r["values_agree"] is False else ""
        lines.append(f"| {r['op']}{mark} | {fmt_size(r['size'])} | {r['library']} "
                     f"| {clip(cell(r, 'fastvae'))} | {clip(cell(r, 'formula'))} | {ratio(r)} "
                     f"| {spread(r, 'fastvae')} / {spread(r, 'formula')} |")
    return "\n".join(lines)


def notes(rows):
    """Full error texts and the first-call (compile) times of the training steps."""
    out = []
    for r in rows:
        for who in ("fastvae", "formula"):
            res = r[who]
            where = f"{r['library']} {r['op']} {fmt_size(r['size'])} {who}"
            if "error" in res and len(res["error"]) > 70:
                out.append(f"- {where}: {res['error']}")
            elif r["part"] == "step" and "first_s" in res:
                out.append(f"- {where}: first call (compilation) {res['first_s']:.1f} s")
    return out


def thread_line(threads):
    import numba
    parts = [f"requested {threads}", f"affinity {sorted(os.sched_getaffinity(0))}",
             f"fastvae {fastvae.num_threads()}", f"numba {numba.get_num_threads()}"]
    if not isinstance(torch, str):
        parts.append(f"torch {torch.get_num_threads()}")
    if not isinstance(jax, str):
        flags = os.environ.get("XLA_FLAGS") or "none"
        parts.append(f"XLA: Eigen pool over the affinity (XLA_FLAGS={flags})")
    return "threads: " + ", ".join(parts)


def versions():
    import numba
    out = dict(fastvae=fastvae.__version__, numpy=np.__version__, numba=numba.__version__)
    for name, module in (("torch", torch), ("jax", jax)):
        out[name] = None if isinstance(module, str) else module.__version__
    return out


def setup(threads):
    """Thread counts, then fastvae.torch and fastvae.jax (or their import errors)."""
    global FVT, FVJ
    if not isinstance(torch, str):
        torch.set_num_threads(threads)
    fastvae.set_num_threads(threads)
    FVT = torch if isinstance(torch, str) else load("fastvae.torch")
    FVJ = jax if isinstance(jax, str) else load("fastvae.jax")


def libraries():
    """The libraries that imported: 'torch', 'jax'."""
    return [name for name, m in (("torch", torch), ("jax", jax)) if not isinstance(m, str)]


def main(args):
    t0 = time.perf_counter()
    setup(args.threads)
    header = [thread_line(args.threads),
              f"float32; {args.repeats} blocks of ~{args.block} s per contender, interleaved; "
              "ratio = formula time / fastvae time (> 1: fastvae ahead)"
              + ("; --quick: small sizes only" if args.quick else "")]
    gflops = {"start": probes.sgemm_gflops()}
    print(f"sgemm probe (start): {gflops['start']:.1f} GFLOP/s (NumPy float32, "
          f"{fmt_size(probes.OP_GEMM)})", flush=True)
    rows = [row for library in libraries() for row in op_rows(library, args)]
    rows += step_rows(args)
    gflops["end"] = probes.sgemm_gflops()
    print("\n".join(header) + "\n\n" + table(rows))
    missing = [f"- {m}" for m in (torch, jax) if isinstance(m, str)]
    print("\n".join(notes(rows) + missing))
    print(f"\nsgemm probe (end): {gflops['end']:.1f} GFLOP/s")
    result = dict(settings=vars(args), header=header, sgemm_gflops=gflops,
                  times="seconds per call (per step), each block's in 'seconds'",
                  versions=versions(), rows=rows, wall_s=time.perf_counter() - t0)
    with open(args.json_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json_path} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main(ARGS)
