"""fastvae's fused ELBO and reparameterization as differentiable JAX functions.

``jax.custom_vjp`` functions whose forward and backward run fastvae's kernels on the host through
``jax.pure_callback``, so they work eagerly and under ``jax.jit``, ``jax.grad`` and ``jax.vmap``
(sequentially, one callback per batch element). The kernels run on the CPU whatever JAX's device:
arrays on a GPU are copied to the host and back by the callback.

    import jax, jax.numpy as jnp
    import fastvae.jax as fvj

    def loss_fn(params, x, step):                           # x (N, 784) in [0, 1]
        mu, logvar = jnp.split(x @ params["enc"], 2, axis=1)      # (N, 20) each
        z = fvj.reparameterize(mu, logvar, seed=0, offset=step * mu.size)
        return fvj.elbo_loss(x, z @ params["dec"], mu, logvar)   # -mean_n ELBO_n, 0-d

    grads = jax.jit(jax.grad(loss_fn))(params, x, 0)        # step may be traced

- ``elbo_loss``: the forward runs ``fastvae.ops.elbo_loss_and_grads`` (one fused pass computes
  the loss and all gradients, kept as residuals); the backward scales them by the cotangent.
  Evaluated without differentiation it runs the forward kernel alone. ``likelihood`` is static;
  ``beta`` may be traced (a KL warm-up schedule compiles once). Gradients are given for every
  input: ``x`` (``-dec_out / N`` for Bernoulli, ``-ddec_out`` for Gaussian) and ``beta`` (the mean
  KL) too; ``jit`` drops those that are unused.
- ``reparameterize`` draws the noise in the kernel from fastvae's Philox stream
  (``eps = fastvae.random.normal((N, L), seed, offset)``); the backward regenerates it, so the
  noise is never stored. ``seed`` and ``offset`` may be traced integers: advance ``offset`` by
  ``mu.size`` per step (or change the seed) for fresh noise.
- dtypes: float64 if any input is float64 (needs ``jax_enable_x64``), else float32 (float16 and
  bfloat16 are widened to float32).
"""
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from . import ops
from ._interop import to_native

__all__ = ["elbo_loss", "reparameterize"]


def _compute_dtype(*arrays):
    """float64 if any input is float64, else float32 (fastvae.ops's rule)."""
    widest = max(jnp.dtype(a.dtype).itemsize for a in arrays)
    return jnp.dtype(jnp.float64 if widest >= 8 else jnp.float32)


def _as_float(dtype, *arrays):
    for name, a in arrays:
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating array (float32 or float64), got dtype "
                            f"{a.dtype}")
    return [a.astype(dtype) for _, a in arrays]


def _callback(host_fn, shapes, *args):
    """``host_fn(*numpy_arrays)`` as a JAX op. The callback is handed CPU JAX arrays; they reach
    the kernels as zero-copy NumPy views."""
    def on_host(*arrays):
        return host_fn(*(to_native(a)[0] for a in arrays))
    return jax.pure_callback(on_host, shapes, *args, vmap_method="sequential")


# ---------------------------------------------------------------------------------------------
# elbo_loss
# ---------------------------------------------------------------------------------------------
def elbo_loss(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """``loss = -mean_n ELBO_n``, ``ELBO_n = log p(x_n | dec_out_n) - beta KL(q(z | x_n) ||
    N(0, I))``, a 0-d array of the computing dtype.

    x, dec_out (N, D) (dec_out: logits for "bernoulli", means for "gaussian"); mu, logvar (N, L);
    dec_logvar (D,) for "gaussian" only; beta >= 0, a number or a 0-d array (it may be traced,
    e.g. a KL warm-up schedule under jit; it is differentiable too).
    """
    check.choice("likelihood", likelihood, ops.LIKELIHOODS)
    named = [("x", x), ("dec_out", dec_out), ("mu", mu), ("logvar", logvar)]
    if likelihood == "gaussian":
        if dec_logvar is None:
            raise ValueError("likelihood='gaussian' needs dec_logvar, the decoder's per-dimension "
                             "log-variance of shape (D,)")
        named.append(("dec_logvar", dec_logvar))
    elif dec_logvar is not None:
        raise ValueError("dec_logvar is only used with likelihood='gaussian'; pass None")
    named = [(name, jnp.asarray(a)) for name, a in named]
    _check_shapes(named)
    dtype = _compute_dtype(*(a for _, a in named))
    return _elbo_loss_fn(likelihood)(_beta(beta, dtype), *_as_float(dtype, *named))


def _beta(beta, dtype):
    if isinstance(beta, numbers.Real):
        return jnp.asarray(check.real_scalar("beta", beta, low=0.0), dtype)
    beta = jnp.asarray(beta)           # a traced value is checked on the host by fastvae.ops
    if beta.ndim != 0 or not jnp.issubdtype(beta.dtype, jnp.floating):
        raise TypeError(f"beta must be a real number or a 0-d float array, got {beta.dtype} "
                        f"of shape {beta.shape}")
    return beta.astype(dtype)


def _check_shapes(named):
    """The shape checks of fastvae.ops, at trace time (so errors name the argument)."""
    dims = {"x": ("N", "D"), "dec_out": ("N", "D"), "mu": ("N", "L"), "logvar": ("N", "L"),
            "dec_logvar": ("D",)}
    for name, a in named:
        if a.ndim != len(dims[name]) or 0 in a.shape:
            raise ValueError(f"{name} must be a non-empty {len(dims[name])}-D array of shape "
                             f"({', '.join(dims[name])}), got shape {a.shape}")
    check.match_dims(**{name: (a, dims[name]) for name, a in named})


@functools.lru_cache(maxsize=None)
def _elbo_loss_fn(likelihood):
    """The custom_vjp loss for one likelihood: (beta 0-d, x, dec_out, mu, logvar[, dec_logvar]),
    all of one float dtype -> 0-d loss."""
    def host_loss(beta, *arrays):      # forward kernel only: the loss without gradients
        elbo, _ = ops.elbo_forward(*arrays[:4], likelihood=likelihood,
                                   dec_logvar=(arrays[4:] or [None])[0], beta=float(beta))
        return np.asarray(-np.mean(elbo, dtype=np.float64), dtype=elbo.dtype)

    def host_loss_and_grads(beta, *arrays):
        loss, grads = ops.elbo_loss_and_grads(*arrays[:4], likelihood=likelihood,
                                              dec_logvar=(arrays[4:] or [None])[0],
                                              beta=float(beta))
        return (np.asarray(loss, dtype=grads[0].dtype), *grads)

    @jax.custom_vjp
    def loss_fn(beta, *arrays):
        return _callback(host_loss, _shape_of((), beta.dtype), beta, *arrays)

    def forward(beta, *arrays):
        shapes = (_shape_of((), beta.dtype), *(_shape_of(a.shape, a.dtype) for a in arrays[1:]))
        loss, *grads = _callback(host_loss_and_grads, shapes, beta, *arrays)
        return loss, (grads, arrays[1:4])  # residuals: the loss's gradients; dec_out, mu, logvar

    def backward(residuals, dloss):
        grads, (dec_out, mu, logvar) = residuals
        dx = -grads[0] if likelihood == "gaussian" else -dec_out / dec_out.shape[0]
        dbeta = _mean_kl(mu, logvar)       # dloss/dbeta; jit drops these two when unused
        return (dbeta * dloss, dx * dloss, *(g * dloss for g in grads))

    loss_fn.defvjp(forward, backward)
    return loss_fn


def _mean_kl(mu, logvar):
    """mean_n KL(N(mu_n, exp(logvar_n)) || N(0, I)), as fastvae/_reference.py::kl_forward."""
    return 0.5 * jnp.mean(jnp.sum(mu * mu + jnp.expm1(logvar) - logvar, axis=1))


def _shape_of(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


# ---------------------------------------------------------------------------------------------
# reparameterize
# ---------------------------------------------------------------------------------------------
def reparameterize(mu, logvar, seed, offset=0):
    """``z = mu + exp(logvar / 2) * eps`` with ``eps = fastvae.random.normal((N, L), seed,
    offset)`` generated in the kernel.

    mu, logvar (N, L) -> z (N, L), differentiable in mu and logvar. seed in [0, 2^64) and
    offset in [0, 2^62): Python ints, or integer 0-d arrays that may be traced (e.g. ``offset =
    step * mu.size`` inside a jitted training step; a negative traced offset is refused on the
    host, a negative traced seed is taken modulo 2^64).
    """
    named = [("mu", jnp.asarray(mu)), ("logvar", jnp.asarray(logvar))]
    _check_shapes(named)
    mu, logvar = _as_float(_compute_dtype(*(a for _, a in named)), *named)
    return _reparameterize(mu, logvar, _words("seed", seed, 2 ** 64 - 1),
                           _words("offset", offset, 2 ** 62 - 1))


def _words(name, value, high):
    """A Python int or an integer 0-d array (traced or not) -> (lo, hi) uint32 words of its
    64-bit two's complement (JAX holds no 64-bit ints without jax_enable_x64)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = check.integer(name, value, 0, high)
        return jnp.asarray([value & 0xFFFFFFFF, value >> 32], dtype=jnp.uint32)
    a = jnp.asarray(value)
    if a.ndim != 0 or not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"{name} must be an int or an integer 0-d array, got {a.dtype} of shape "
                        f"{a.shape}")
    if a.dtype.itemsize == 8:
        return jnp.stack([a & 0xFFFFFFFF, a >> 32]).astype(jnp.uint32)
    hi = jnp.uint32(0)
    if jnp.issubdtype(a.dtype, jnp.signedinteger):   # sign extension
        hi = jnp.where(a < 0, jnp.uint32(0xFFFFFFFF), hi)
    return jnp.stack([a.astype(jnp.uint32), hi])


def _from_words(words):
    lo, hi = (int(w) for w in np.asarray(words))
    return lo | hi << 32


def _host_reparam_forward(mu, logvar, seed, offset):
    return ops.reparam_forward(mu, logvar, seed=_from_words(seed), offset=_from_words(offset))


def _host_z(mu, logvar, seed, offset):
    return _host_reparam_forward(mu, logvar, seed, offset)[0]


def _host_dlogvar(dz, mu, logvar, seed, offset):
    # The forward kernel runs again for its cache (logvar and (seed, offset): no noise array),
    # then the backward kernel regenerates the noise. The discarded z costs one elementwise pass
    # over (N, L), small next to the callback itself.
    _, cache = _host_reparam_forward(mu, logvar, seed, offset)
    return ops.reparam_backward(dz, cache)[1]


@jax.custom_vjp
def _reparameterize(mu, logvar, seed, offset):
    return _callback(_host_z, _shape_of(mu.shape, mu.dtype), mu, logvar, seed, offset)


def _reparameterize_forward(mu, logvar, seed, offset):
    return _reparameterize(mu, logvar, seed, offset), (mu, logvar, seed, offset)


def _reparameterize_backward(residuals, dz):
    mu, logvar, seed, offset = residuals
    dlogvar = _callback(_host_dlogvar, _shape_of(logvar.shape, logvar.dtype),
                        dz, mu, logvar, seed, offset)
    return dz, dlogvar, None, None         # dmu = dz; seed and offset are not differentiable


_reparameterize.defvjp(_reparameterize_forward, _reparameterize_backward)
