"""The public functional API over fastvae's kernels.

Every op comes as ``<op>_forward(...) -> (out, cache)`` and ``<op>_backward(dout, cache)``, which
returns new gradient arrays (it overwrites nothing) in the order of the forward's differentiable
inputs. The backend follows the array type: NumPy arrays (or anything ``np.asarray`` accepts)
run the Numba CPU kernels; CuPy arrays go to the CUDA backend. PyTorch tensors and JAX arrays
(CPU or CUDA) are taken and returned through DLPack without copies (``takes_foreign_arrays``,
rules in fastvae/_interop.py): torch in, torch out; JAX in, JAX out.

Inputs: floating arrays only (float32 or float64; float16 is widened to float32). Mixed float32 and
float64 inputs compute in float64. Non-contiguous inputs are copied once. Every dimension must be
>= 1. Errors name the argument: ``TypeError`` for a wrong dtype or type, ``ValueError`` for a wrong
rank, mismatched shapes, empty arrays or out-of-range scalars. NaN or Inf in the inputs propagate
to NaN in the affected rows (or to the mathematically exact infinity, e.g. an all -inf row of
log-weights gives -inf), and never to a wrong finite number. One exception: with the Bernoulli
likelihood, ``elbo_forward``, ``elbo_loss_and_grads`` and ``log_weight_forward`` refuse an x
outside [0, 1] or NaN (``ValueError`` naming x, the first such row and column, and the value;
checked inside the fused kernel's pass over x, so nothing is returned): x is the data and
dec_out the logits, and swapping them (F.binary_cross_entropy's order is (recon, x)) would
otherwise give a wrong finite number. NaN in dec_out, mu, logvar still propagates.

Shapes: N rows (examples), I/O layer widths, D data dimensions, L latent dimensions, K importance
samples per example.
"""
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validate as check
from ._interop import takes_foreign_arrays
from ._reference import ACTIVATIONS, INDEX_LIMIT, LIKELIHOODS

__all__ = [
    "dense_forward", "dense_backward", "reparam_forward", "reparam_backward",
    "kl_forward", "kl_backward", "bernoulli_loglik_forward", "bernoulli_loglik_backward",
    "gaussian_loglik_forward", "gaussian_loglik_backward", "elbo_forward", "elbo_backward",
    "elbo_loss_and_grads", "logsumexp_forward", "logsumexp_backward", "logsumexp_partial",
    "logsumexp_merge", "logsumexp_finalize", "iwae_forward", "iwae_backward",
    "log_weight_forward", "log_weight_backward", "adam_update",
]


@dataclass(frozen=True)
class Cache:
    """What a forward hands to its backward: the backend module, the op, the output's shape
    and dtype (to check ``dout``), and the backend's own saved tensors."""
    module: Any
    op: str
    out_shape: tuple
    dtype: Any
    saved: Any


def _inputs(stem, spec):
    """Check and convert the named arrays of ``spec`` ({name: (value, dims)}, dims such as
    ("N", "D"); equal letters must agree) -> (the backend module of ``stem`` for their device,
    the arrays in spec order)."""
    arrays = check.float_arrays(spec)
    check.match_dims(**{name: (a, spec[name][1]) for name, a in zip(spec, arrays)})
    return check.backend_module(stem, arrays), arrays


def _cached(module, op, out, saved):
    return out, Cache(module, op, tuple(out.shape), out.dtype, saved)


def _upstream(name, dout, cache, op):
    """Validate the upstream gradient against the forward that made ``cache``."""
    if not isinstance(cache, Cache) or cache.op != op:
        raise TypeError(f"cache must be the second result of {op}_forward, got "
                        f"{type(cache).__name__}" + (f" from {cache.op}_forward"
                                                     if isinstance(cache, Cache) else ""))
    dims = tuple(f"n{i}" for i in range(len(cache.out_shape)))
    (dout,) = check.float_arrays({name: (dout, dims)}, dtype=cache.dtype)
    on_gpu = cache.module.__name__.startswith("fastvae.cuda.")
    check.same_device(name, dout, f"{op}_forward", on_gpu)
    if tuple(dout.shape) != cache.out_shape:
        raise ValueError(f"{name} must have the forward output's shape {cache.out_shape}, got "
                         f"{tuple(dout.shape)}")
    return dout


# ---------------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays
def dense_forward(x, W, b, activation="identity"):
    """Fused dense layer ``y = act(x @ W + b)``.

    x (N, I), W (I, O), b (O,) -> y (N, O); activation in
    {"identity", "relu", "tanh", "softplus", "sigmoid"}.
    """
    check.choice("activation", activation, ACTIVATIONS)
    module, (x, W, b) = _inputs("dense", {"x": (x, ("N", "I")), "W": (W, ("I", "O")),
                                          "b": (b, ("O",))})
    y, saved = module.dense_forward(x, W, b, activation)
    return _cached(module, "dense", y, saved)


@takes_foreign_arrays
def dense_backward(dy, cache, need_dx=True):
    """-> (dx (N, I), dW (I, O), db (O,)); dx is None when ``need_dx`` is False."""
    dy = _upstream("dy", dy, cache, "dense")
    return cache.module.dense_backward(dy, cache.saved, need_dx=bool(need_dx))


# ---------------------------------------------------------------------------------------------
# reparam
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays
def reparam_forward(mu, logvar, eps=None, *, seed=None, offset=0):
    """Reparameterized sample ``z = mu + exp(logvar / 2) * eps``.

    mu, logvar (N, L) -> z (N, L). Give the noise ``eps`` (N, L), or a ``seed`` in [0, 2^64) and
    ``offset`` >= 0: the kernel then draws ``eps = fastvae.random.normal((N, L), seed, offset)``
    itself and the backward regenerates it instead of storing it.
    """
    if (eps is None) == (seed is None):
        raise ValueError("give exactly one of eps (the noise) or seed (to generate it)")
    spec = {"mu": (mu, ("N", "L")), "logvar": (logvar, ("N", "L"))}
    if eps is not None:
        spec["eps"] = (eps, ("N", "L"))
    module, arrays = _inputs("reparam", spec)
    if seed is not None:
        seed = check.integer("seed", seed, 0, 2 ** 64 - 1)
        offset = check.integer("offset", offset, 0, INDEX_LIMIT - 1)   # int64 indices in kernels
    mu, logvar, eps = (arrays + [None])[:3]
    z, saved = module.reparam_forward(mu, logvar, eps, seed=seed, offset=offset)
    return _cached(module, "reparam", z, saved)


@takes_foreign_arrays
def reparam_backward(dz, cache):
    """-> (dmu, dlogvar), each (N, L)."""
    dz = _upstream("dz", dz, cache, "reparam")
    return cache.module.reparam_backward(dz, cache.saved)


# ---------------------------------------------------------------------------------------------
# kl, loglik
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays
def kl_forward(mu, logvar):
    """Per-row ``KL(N(mu, exp(logvar)) || N(0, I))``. mu, logvar (N, L) -> (N,)."""
    module, (mu, logvar) = _inputs("kl", {"mu": (mu, ("N", "L")), "logvar": (logvar, ("N", "L"))})
    return _cached(module, "kl", *module.kl_forward(mu, logvar))


@takes_foreign_arrays
def kl_backward(dkl, cache):
    """dkl (N,) -> (dmu, dlogvar), each (N, L)."""
    dkl = _upstream("dkl", dkl, cache, "kl")
    return cache.module.kl_backward(dkl, cache.saved)


@takes_foreign_arrays
def bernoulli_loglik_forward(x, logits):
    """Per-row Bernoulli log-likelihood from logits, ``sum_d x l - softplus(l)``.

    x (N, D) in [0, 1] (not checked here; the model checks its data), logits (N, D) -> (N,).
    """
    module, (x, logits) = _inputs("loglik", {"x": (x, ("N", "D")),
                                             "logits": (logits, ("N", "D"))})
    return _cached(module, "bernoulli_loglik", *module.bernoulli_loglik_forward(x, logits))


@takes_foreign_arrays
def bernoulli_loglik_backward(dll, cache):
    """dll (N,) -> dlogits (N, D)."""
    dll = _upstream("dll", dll, cache, "bernoulli_loglik")
    return cache.module.bernoulli_loglik_backward(dll, cache.saved)


@takes_foreign_arrays
def gaussian_loglik_forward(x, mean, logvar):
    """Per-row diagonal Gaussian log-likelihood with one log-variance per dimension.

    x, mean (N, D); logvar (D,) -> (N,).
    """
    module, (x, mean, logvar) = _inputs("loglik", {
        "x": (x, ("N", "D")), "mean": (mean, ("N", "D")), "logvar": (logvar, ("D",))})
    return _cached(module, "gaussian_loglik", *module.gaussian_loglik_forward(x, mean, logvar))


@takes_foreign_arrays
def gaussian_loglik_backward(dll, cache):
    """dll (N,) -> (dmean (N, D), dlogvar (D,))."""
    dll = _upstream("dll", dll, cache, "gaussian_loglik")
    return cache.module.gaussian_loglik_backward(dll, cache.saved)


# ---------------------------------------------------------------------------------------------
# elbo
# ---------------------------------------------------------------------------------------------
def _elbo_inputs(x, dec_out, mu, logvar, likelihood, dec_logvar, beta):
    check.choice("likelihood", likelihood, LIKELIHOODS)
    spec = {"x": (x, ("N", "D")), "dec_out": (dec_out, ("N", "D")),
            "mu": (mu, ("N", "L")), "logvar": (logvar, ("N", "L"))}
    _add_dec_logvar(spec, likelihood, dec_logvar)
    module, arrays = _inputs("elbo", spec)
    beta = check.real_scalar("beta", beta, low=0.0)
    return module, (arrays + [None])[:5], beta


def _add_dec_logvar(spec, likelihood, dec_logvar):
    if likelihood == "gaussian":
        if dec_logvar is None:
            raise ValueError("likelihood='gaussian' needs dec_logvar, the decoder's per-dimension "
                             "log-variance of shape (D,)")
        spec["dec_logvar"] = (dec_logvar, ("D",))
    elif dec_logvar is not None:
        raise ValueError("dec_logvar is only used with likelihood='gaussian'; pass None")


@takes_foreign_arrays
def elbo_forward(x, dec_out, mu, logvar, *, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """Per-row ELBO ``log p(x | z) - beta * KL(q(z | x) || N(0, I))``.

    x, dec_out (N, D) (dec_out: logits for "bernoulli", means for "gaussian"); mu, logvar (N, L);
    dec_logvar (D,) for "gaussian" only; beta >= 0 -> (N,). For "bernoulli", x must lie in [0, 1]
    (ValueError naming the first bad row and column otherwise, NaN included).
    """
    module, arrays, beta = _elbo_inputs(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    elbo, saved = module.elbo_forward(*arrays[:4], likelihood, arrays[4], beta)
    return _cached(module, "elbo", elbo, saved)


@takes_foreign_arrays
def elbo_backward(delbo, cache):
    """delbo (N,) -> (ddec_out (N, D), dmu (N, L), dlogvar (N, L)), plus ddec_logvar (D,) for
    the Gaussian likelihood."""
    delbo = _upstream("delbo", delbo, cache, "elbo")
    return cache.module.elbo_backward(delbo, cache.saved)


@takes_foreign_arrays
def elbo_loss_and_grads(x, dec_out, mu, logvar, *, likelihood="bernoulli", dec_logvar=None,
                        beta=1.0):
    """``loss = -mean_n elbo_n`` and its gradients in one fused pass over the rows.

    -> (loss: float, (ddec_out, dmu, dlogvar[, ddec_logvar])), shapes as ``elbo_backward``.
    For "bernoulli", x must lie in [0, 1], as for ``elbo_forward``.
    """
    module, arrays, beta = _elbo_inputs(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    return module.elbo_loss_and_grads(*arrays[:4], likelihood, arrays[4], beta)


# ---------------------------------------------------------------------------------------------
# logsumexp (one-shot and streaming)
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays
def logsumexp_forward(a):
    """``log sum_k exp(a_nk)`` over the last axis. a (N, K), K >= 1 -> (N,).

    An all -inf row gives -inf; a row holding +inf gives +inf; NaN gives NaN.
    """
    module, (a,) = _inputs("logsumexp", {"a": (a, ("N", "K"))})
    return _cached(module, "logsumexp", *module.logsumexp_forward(a))


@takes_foreign_arrays
def logsumexp_backward(dlse, cache):
    """dlse (N,) -> da (N, K) = dlse * softmax(a); 0 on an all -inf row."""
    dlse = _upstream("dlse", dlse, cache, "logsumexp")
    return cache.module.logsumexp_backward(dlse, cache.saved)


@takes_foreign_arrays
def logsumexp_partial(a):
    """Streaming state of one chunk of the K axis: a (N, K) -> (m (N,), s (N,)) with
    ``m = max_k a_nk``, ``s = sum_k exp(a_nk - m)``. Merge states with ``logsumexp_merge`` and
    finish with ``logsumexp_finalize``; the result equals ``logsumexp_forward`` on the whole axis.
    """
    module, (a,) = _inputs("logsumexp", {"a": (a, ("N", "K"))})
    return module.logsumexp_partial(a)


@takes_foreign_arrays
def logsumexp_merge(m1, s1, m2, s2):
    """Merge two streaming states (each (N,)) -> (m, s)."""
    spec = {name: (a, ("N",)) for name, a in zip(("m1", "s1", "m2", "s2"), (m1, s1, m2, s2))}
    module, arrays = _inputs("logsumexp", spec)
    return module.logsumexp_merge(*arrays)


@takes_foreign_arrays
def logsumexp_finalize(m, s):
    """A streaming state (m, s), each (N,) -> lse (N,) = m + log s."""
    module, (m, s) = _inputs("logsumexp", {"m": (m, ("N",)), "s": (s, ("N",))})
    return module.logsumexp_finalize(m, s)


# ---------------------------------------------------------------------------------------------
# iwae
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays
def iwae_forward(logw):
    """Importance-weighted estimate ``log p(x_n) ~ logsumexp_k(logw_nk) - log K``.

    logw (N, K), K >= 1 -> (N,).
    """
    module, (logw,) = _inputs("iwae", {"logw": (logw, ("N", "K"))})
    return _cached(module, "iwae", *module.iwae_forward(logw))


@takes_foreign_arrays
def iwae_backward(dest, cache):
    """dest (N,) -> dlogw (N, K) = dest * normalized importance weights."""
    dest = _upstream("dest", dest, cache, "iwae")
    return cache.module.iwae_backward(dest, cache.saved)


@takes_foreign_arrays
def log_weight_forward(x, dec_out, mu, logvar, eps, *, likelihood="bernoulli",
                       dec_logvar=None):
    """Log importance weights ``log p(x | z) + log p(z) - log q(z | x)``, fused.

    x (N, D); dec_out (N, K, D) = decoder(z); mu, logvar (N, L); eps (N, K, L) the noise with
    ``z = mu + exp(logvar / 2) * eps``; dec_logvar (D,) for "gaussian" -> logw (N, K).
    For "bernoulli", x must lie in [0, 1], as for ``elbo_forward``.
    """
    check.choice("likelihood", likelihood, LIKELIHOODS)
    spec = {"x": (x, ("N", "D")), "dec_out": (dec_out, ("N", "K", "D")),
            "mu": (mu, ("N", "L")), "logvar": (logvar, ("N", "L")),
            "eps": (eps, ("N", "K", "L"))}
    _add_dec_logvar(spec, likelihood, dec_logvar)
    module, arrays = _inputs("iwae", spec)
    x, dec_out, mu, logvar, eps, dec_logvar = (arrays + [None])[:6]
    logw, saved = module.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood, dec_logvar)
    return _cached(module, "log_weight", logw, saved)


@takes_foreign_arrays
def log_weight_backward(dlogw, cache):
    """dlogw (N, K) -> (ddec_out (N, K, D), dmu (N, L), dlogvar (N, L)) [+ ddec_logvar (D,)],
    with eps held fixed; the path through the decoder's input z is the caller's to add."""
    dlogw = _upstream("dlogw", dlogw, cache, "log_weight")
    return cache.module.log_weight_backward(dlogw, cache.saved)


# ---------------------------------------------------------------------------------------------
# adam
# ---------------------------------------------------------------------------------------------
@takes_foreign_arrays(in_place=("param", "m", "v"))
def adam_update(param, grad, m, v, *, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """One bias-corrected Adam step, in place on ``param``, ``m`` and ``v`` (same shape).

    param, m, v must be writable C-contiguous float arrays of one dtype (a model keeps all its
    parameters in one flat buffer, so one call updates everything); grad is converted if needed.
    step >= 1 is the 1-based step count used for the bias correction. torch tensors are updated
    in place (for a parameter pass ``p.detach()``: the same memory); JAX arrays are refused.
    """
    _check_in_place(param=param, m=m, v=v)
    (grad,) = check.float_arrays({"grad": (grad, tuple(f"n{i}" for i in range(param.ndim)))},
                             dtype=param.dtype)
    if grad.shape != param.shape:
        raise ValueError(f"grad must have param's shape {param.shape}, got {grad.shape}")
    step = check.integer("step", step, 1)
    lr = check.real_scalar("lr", lr, low=0.0, low_inclusive=False)
    beta1 = check.real_scalar("beta1", beta1, low=0.0, high=1.0 - 1e-12)
    beta2 = check.real_scalar("beta2", beta2, low=0.0, high=1.0 - 1e-12)
    eps = check.real_scalar("eps", eps, low=0.0, low_inclusive=False)
    module = check.backend_module("adam", (param, grad, m, v))
    module.adam_update(param, grad, m, v, step, lr, beta1, beta2, eps)


def _check_in_place(**arrays):
    first_name, first = next(iter(arrays.items()))
    for name, a in arrays.items():
        if not hasattr(a, "dtype") or getattr(a, "ndim", 0) < 1:
            raise TypeError(f"{name} must be an array updated in place, got {type(a).__name__}")
        check.check_float_dtype(name, a)
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writable C-contiguous array to be updated in "
                             f"place")
        if a.dtype != first.dtype or a.shape != first.shape:
            raise ValueError(f"{name} must match {first_name} ({first.shape}, {first.dtype}), "
                             f"got ({a.shape}, {a.dtype})")
        if a.size == 0:
            raise ValueError(f"{name} must not be empty")
