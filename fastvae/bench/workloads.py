"""What the suite times: architectures, FLOP and byte counts, the GEMM-only bound, and the
fastvae / NumPy side of every workload (the PyTorch and JAX builders are in ``peers.py``).

Every builder returns a zero-argument callable that does one unit of work (one step, one epoch,
one log-likelihood call, one op call); ``timing.interleaved`` times them side by side.
"""
from dataclasses import dataclass

import numpy as np

import fastvae
from fastvae import _device, ops
from fastvae._threads import cpu_work
from fastvae.optim import Adam
from fastvae.train import train_step

from .arch import CANONICAL, LR, SEED


# ---------------------------------------------------------------------------------------------
# GEMM-only bound: exactly the products of a step / a log-likelihood chunk, in the array library
# ---------------------------------------------------------------------------------------------
def _randn(xp, rng, *shape):
    return xp.asarray(rng.standard_normal(shape).astype(np.float32))


def gemm_step_fn(arch, batch, xp=np):
    """One call = the matrix products of one training step of ``arch`` at ``batch`` rows, with
    preallocated outputs (forward x @ W; backward x.T @ dy and dy @ W.T, no dx for enc0)."""
    rng = np.random.default_rng(0)
    products = []
    for idx, (_, n_in, n_out) in enumerate(arch.layers()):
        x, w, dy = _randn(xp, rng, batch, n_in), _randn(xp, rng, n_in, n_out), \
            _randn(xp, rng, batch, n_out)
        products.append((x, w, xp.empty((batch, n_out), xp.float32)))            # forward
        products.append((x.T, dy, xp.empty((n_in, n_out), xp.float32)))         # dW
        if idx > 0:
            products.append((dy, w.T, xp.empty((batch, n_in), xp.float32)))     # dx
    return lambda: [xp.matmul(a, b, out=c) for a, b, c in products]


def gemm_loglik_fn(arch, pairs, xp=np):
    """One call = the decoder products of ``pairs`` (x, z) pairs (one log-likelihood chunk)."""
    rng = np.random.default_rng(0)
    products = [(_randn(xp, rng, pairs, i), _randn(xp, rng, i, o),
                 xp.empty((pairs, o), xp.float32))
                for name, i, o in arch.layers() if name.startswith("dec")]
    return lambda: [xp.matmul(a, b, out=c) for a, b, c in products]


def gemm_fn(m, k, n, xp=np):
    """One (m, k) @ (k, n) float32 product: the per-op dense layer's GEMM."""
    rng = np.random.default_rng(0)
    a, b, c = _randn(xp, rng, m, k), _randn(xp, rng, k, n), xp.empty((m, n), xp.float32)
    return lambda: xp.matmul(a, b, out=c)


def copy_fn(n_bytes=64 << 20, xp=np):
    """One copy of n_bytes (moves 2 n_bytes: read + write): the bandwidth probe."""
    src = xp.ones(n_bytes // 4, xp.float32)
    dst = xp.empty_like(src)
    return lambda: xp.copyto(dst, src)


# ---------------------------------------------------------------------------------------------
# fastvae
# ---------------------------------------------------------------------------------------------
def fastvae_model(arch, device="cpu"):
    return fastvae.VAE(arch.input_dim, arch.hidden, arch.latent, "bernoulli", "relu", seed=SEED,
                       dtype="float32", device=device)


def fastvae_train_step(arch, xb, device="cpu"):
    """One ``train_step`` (what ``fit`` runs per batch: Philox noise, forward, backward,
    finiteness checks, fused Adam), inside ``cpu_work`` as ``fit`` runs it."""
    model = fastvae_model(arch, device)
    opt = Adam(model.params.flat, LR)
    grads = model.params.zeros_like()
    xb = model.kernels.xp.asarray(np.ascontiguousarray(xb, dtype=np.float32))
    batch = len(xb)

    def step():
        with cpu_work(model.device):
            train_step(model, opt, xb, grads, seed=SEED, batch_size=batch)
    return step


def fastvae_epoch(arch, x, batch, device="cpu"):
    """One more epoch of ``model.fit`` over x (N, D) float32 on the host: shuffle, gather,
    ``train_step`` per batch (the last one partial), per-epoch loss; no validation, no
    binarization, no progress bar. ``epochs`` counts epochs more, so each call trains one."""
    model = fastvae_model(arch, device)
    return lambda: model.fit(x, epochs=1, batch_size=batch, lr=LR, seed=SEED, progress=False)


def fastvae_loglik(arch, x, K, device="cpu"):
    """``model.log_likelihood(x, K)`` with fastvae's default chunking (4096 pairs a chunk)."""
    model = fastvae_model(arch, device)
    return lambda: model.log_likelihood(x, K=K, seed=SEED + 1, progress=False)


# ---------------------------------------------------------------------------------------------
# per-op: fastvae.ops against the same work in NumPy
# ---------------------------------------------------------------------------------------------
@dataclass
class Op:
    """One op row: fastvae and NumPy callables on the same inputs, the work per call (flops for
    GEMM-bound ops, bytes for memory-bound ones) and the probe it is compared with."""
    name: str
    size: str
    fastvae: object
    numpy: object
    flops: float = 0.0
    nbytes: float = 0.0
    cuda: object = None   # (device) fastvae.ops on CuPy arrays, or None

    @property
    def probe_key(self):
        return "gemm_128x784x400" if self.flops else "copy"


def _on_model_threads(fn):
    """Run an op as the model runs it: inside ``cpu_work`` (one-thread BLAS and Numba inside
    the pool's tiles, fastvae/_threads.py)."""
    def call():
        with cpu_work("cpu"):
            return fn()
    return call


def _close(got, want, what):
    got, want = _device.to_host(got), np.asarray(want)
    scale = float(np.abs(want).max()) + 1.0
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
        raise AssertionError(f"{what}: fastvae and NumPy disagree (max |diff| "
                             f"{float(np.abs(got - want).max()):.3g}); not timing it")


def _np_dense_fwd(x, W, b):
    return np.maximum(x @ W + b, 0)


def _np_dense_bwd(dy, x, W, y):
    da = dy * (y > 0)
    return da @ W.T, x.T @ da, da.sum(axis=0)


def _np_elbo(x, logits, mu, logvar):
    """-mean ELBO (Bernoulli, analytic KL) and its gradients, written straightforwardly."""
    g = np.float32(-1.0 / x.shape[0])
    ll = np.sum(x * logits - np.logaddexp(np.float32(0), logits), axis=1)
    em1 = np.expm1(logvar)
    kl = 0.5 * np.sum(mu * mu + em1 - logvar, axis=1)
    return -np.mean(ll - kl), (g * (x - 1 / (1 + np.exp(-logits))), -g * mu, -g * em1 / 2)


def numpy_adam(param, grad, m, v, step, tmp, b1=0.9, b2=0.999, eps=1e-8):
    """In-place NumPy Adam with one temporary buffer (lr = LR); also benchmarks/bench_adam.py's
    competitor."""
    m *= b1
    m += np.multiply(grad, 1 - b1, out=tmp)
    v *= b2
    np.multiply(grad, grad, out=tmp)
    tmp *= 1 - b2
    v += tmp
    np.multiply(v, 1 / (1 - b2 ** step), out=tmp)
    np.sqrt(tmp, out=tmp)
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= LR / (1 - b1 ** step)
    param -= tmp


def _np_logsumexp(a):
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def _cuda(fn, *arrays):
    """fn(*arrays on the GPU) as a zero-arg callable (for the GPU column)."""
    import cupy
    dev = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]
    return lambda: fn(*dev)


def per_op_cases(gpu=False):
    """The per-op rows; each is checked against NumPy once before it is timed.

    dense fwd  128x784x400 relu: flops 2 N I O (bias and relu left out)
    dense bwd  same layer, dx, dW, db: flops 4 N I O
    ELBO       fused Bernoulli loss + gradients, N=128, D=784, L=20:
               bytes 4 (3 N D + 4 N L) (reads x, logits, mu, logvar; writes dlogits, dmu, dlogvar)
    Adam       P = 652,824 (the 784-400-20 VAE), in place: bytes 4 * 7 P (reads p, g, m, v;
               writes p, m, v)
    logsumexp  128 x 5000 rows: bytes 4 (N K + N)
    """
    rng = np.random.default_rng(7)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    n, i, o = 128, 784, 400
    x, W, b, dy = f32(n, i), (f32(i, o) / np.sqrt(i)).astype(np.float32), f32(o), f32(n, o)
    y, cache = ops.dense_forward(x, W, b, "relu")
    _close(y, _np_dense_fwd(x, W, b), "dense fwd")
    for got, want in zip(ops.dense_backward(dy, cache), _np_dense_bwd(dy, x, W, y)):
        _close(got, want, "dense bwd")
    cases = [Op("dense fwd relu", f"{n}x{i}x{o}", lambda: ops.dense_forward(x, W, b, "relu"),
                lambda: _np_dense_fwd(x, W, b), flops=2.0 * n * i * o),
             Op("dense bwd relu", f"{n}x{i}x{o}", lambda: ops.dense_backward(dy, cache),
                lambda: _np_dense_bwd(dy, x, W, y), flops=4.0 * n * i * o)]
    if gpu:
        import cupy
        gx, gW, gb, gdy = (cupy.asarray(a) for a in (x, W, b, dy))
        gcache = ops.dense_forward(gx, gW, gb, "relu")[1]
        cases[0].cuda = lambda: ops.dense_forward(gx, gW, gb, "relu")
        cases[1].cuda = lambda: ops.dense_backward(gdy, gcache)

    d, lat = 784, 20
    xe = (rng.random((n, d)) < 0.3).astype(np.float32)
    logits, mu, logvar = 3 * f32(n, d), f32(n, lat), f32(n, lat)
    loss, grads = ops.elbo_loss_and_grads(xe, logits, mu, logvar)
    want_loss, want_grads = _np_elbo(xe, logits, mu, logvar)
    _close(np.float32(loss), want_loss, "ELBO loss")
    for got, want in zip(grads, want_grads):
        _close(got, want, "ELBO grads")
    elbo = Op("fused ELBO + grads", f"{n}x{d}, L={lat}",
              lambda: ops.elbo_loss_and_grads(xe, logits, mu, logvar),
              lambda: _np_elbo(xe, logits, mu, logvar), nbytes=4.0 * (3 * n * d + 4 * n * lat))
    if gpu:
        elbo.cuda = _cuda(ops.elbo_loss_and_grads, xe, logits, mu, logvar)
    cases.append(elbo)

    p = CANONICAL.n_params   # 652,824
    param, grad, m = f32(p), f32(p), f32(p)
    v = (rng.random(p) * 0.01).astype(np.float32)
    got, want = [a.copy() for a in (param, m, v)], [a.copy() for a in (param, m, v)]
    ops.adam_update(got[0], grad, got[1], got[2], step=7, lr=LR)
    numpy_adam(want[0], grad, want[1], want[2], 7, np.empty_like(param))
    for g_, w_ in zip(got, want):
        _close(g_, w_, "Adam")
    tmp = np.empty_like(param)
    adam = Op("Adam update", f"P={p:,}", lambda: ops.adam_update(param, grad, m, v, step=7, lr=LR),
              lambda: numpy_adam(param, grad, m, v, 7, tmp), nbytes=4.0 * 7 * p)
    if gpu:
        adam.cuda = _cuda(lambda *a: ops.adam_update(*a, step=7, lr=LR), param, grad, m, v)
    cases.append(adam)

    nk, k = 128, 5000
    a = (3 * rng.standard_normal((nk, k)) - 100).astype(np.float32)
    _close(ops.logsumexp_forward(a)[0], _np_logsumexp(a), "logsumexp")
    lse = Op("logsumexp fwd", f"{nk}x{k}", lambda: ops.logsumexp_forward(a),
             lambda: _np_logsumexp(a), nbytes=4.0 * (nk * k + nk))
    if gpu:
        lse.cuda = _cuda(ops.logsumexp_forward, a)
    cases.append(lse)
    for case in cases:
        case.fastvae = _on_model_threads(case.fastvae)
    return cases
