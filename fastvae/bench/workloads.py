"""What the suite times: the fastvae / NumPy side of every workload (the PyTorch and JAX
builders are in ``peers.py``, the GEMM-only bound and the machine probes in ``probes.py``).

Every builder returns a zero-argument callable that does one unit of work (one step, one epoch,
one log-likelihood call, one op call); ``timing.warm_up`` and ``timing.timed_blocks`` time them
side by side. The NumPy versions of the ops are also the competitors of benchmarks/bench_*.py.
"""
from dataclasses import dataclass

import numpy as np

import fastvae
from fastvae import _device, ops
from fastvae._threads import cpu_work
from fastvae.optim import Adam
from fastvae.train import train_step

from . import probes
from .arch import CANONICAL, LR, SEED


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
        return probes.GEMM_KEY if self.flops else probes.COPY_KEY


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


NUMPY_ACTIVATIONS = {"relu": lambda a: np.maximum(a, 0), "identity": lambda a: a,
                     "sigmoid": lambda a: 1 / (1 + np.exp(-a))}
_NUMPY_DERIVATIVES = {"relu": lambda y: y > 0, "sigmoid": lambda y: y * (1 - y)}


def numpy_dense_forward(x, W, b, activation="relu"):
    """activation(x @ W + b), the dense layer in plain NumPy."""
    return NUMPY_ACTIVATIONS[activation](x @ W + b)


def numpy_dense_backward(dy, x, W, y, activation="relu"):
    """(dx, dW, db) of numpy_dense_forward from its output y."""
    da = dy if activation == "identity" else dy * _NUMPY_DERIVATIVES[activation](y)
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


def numpy_logsumexp(a):
    """log(sum(exp(a), axis=1)), shifted by the row maximum."""
    m = a.max(axis=1)
    return m + np.log(np.exp(a - m[:, None]).sum(axis=1))


def _cuda(fn, *arrays):
    """fn(*arrays on the GPU) as a zero-arg callable (for the GPU column)."""
    import cupy
    dev = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays]
    return lambda: fn(*dev)


def _f32(rng):
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def _dense_cases(rng, gpu):
    """dense fwd and bwd, 128x784x400 relu, checked against NumPy."""
    f32, (n, i, o) = _f32(rng), probes.OP_GEMM
    x, W, b, dy = f32(n, i), (f32(i, o) / np.sqrt(i)).astype(np.float32), f32(o), f32(n, o)
    y, cache = ops.dense_forward(x, W, b, "relu")
    _close(y, numpy_dense_forward(x, W, b), "dense fwd")
    for got, want in zip(ops.dense_backward(dy, cache), numpy_dense_backward(dy, x, W, y)):
        _close(got, want, "dense bwd")
    cases = [Op("dense fwd relu", f"{n}x{i}x{o}", lambda: ops.dense_forward(x, W, b, "relu"),
                lambda: numpy_dense_forward(x, W, b), flops=2.0 * n * i * o),
             Op("dense bwd relu", f"{n}x{i}x{o}", lambda: ops.dense_backward(dy, cache),
                lambda: numpy_dense_backward(dy, x, W, y), flops=4.0 * n * i * o)]
    if gpu:
        import cupy
        gx, gW, gb, gdy = (cupy.asarray(a) for a in (x, W, b, dy))
        gcache = ops.dense_forward(gx, gW, gb, "relu")[1]
        cases[0].cuda = lambda: ops.dense_forward(gx, gW, gb, "relu")
        cases[1].cuda = lambda: ops.dense_backward(gdy, gcache)
    return cases


def _elbo_case(rng, gpu, n=128, d=784, lat=20):
    f32 = _f32(rng)
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
    return elbo


def _adam_case(rng, gpu):
    f32, p = _f32(rng), CANONICAL.n_params   # 652,824
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
    return adam


def _logsumexp_case(rng, gpu, nk=128, k=5000):
    a = (3 * rng.standard_normal((nk, k)) - 100).astype(np.float32)
    _close(ops.logsumexp_forward(a)[0], numpy_logsumexp(a), "logsumexp")
    lse = Op("logsumexp fwd", f"{nk}x{k}", lambda: ops.logsumexp_forward(a),
             lambda: numpy_logsumexp(a), nbytes=4.0 * (nk * k + nk))
    if gpu:
        lse.cuda = _cuda(ops.logsumexp_forward, a)
    return lse


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
    rng = np.random.default_rng(7)   # one stream, drawn in this order
    cases = _dense_cases(rng, gpu)
    cases += [_elbo_case(rng, gpu), _adam_case(rng, gpu), _logsumexp_case(rng, gpu)]
    for case in cases:
        case.fastvae = _on_model_threads(case.fastvae)
    return cases
