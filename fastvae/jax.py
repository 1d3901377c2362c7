"""fastvae's fused ELBO, IWAE bound and reparameterization as differentiable JAX functions.

``jax.custom_vjp`` functions whose forward and backward run fastvae's kernels on the host, so they
work eagerly and under ``jax.jit``, ``jax.grad`` and ``jax.vmap`` (sequentially, one kernel call
per batch element). The kernels of the ELBO (mean and sum), the IWAE loss and the sampler are
called by XLA itself through its FFI (fastvae/_xla.py: a C++ handler compiled at first use,
calling the Numba tile loops without Python); the per-row ELBO backward of reduction="none", and
everything where that route cannot be built, through ``jax.pure_callback``. The kernels run on
the CPU whatever JAX's device: arrays on a GPU are copied to the host and back.

    import jax, jax.numpy as jnp
    import fastvae.jax as fvj

    def loss_fn(params, x, key):                            # x (N, 784) in [0, 1]
        mu, logvar = jnp.split(x @ params["enc"], 2, axis=1)      # (N, 20) each
        z = fvj.reparameterize(mu, logvar, key=key)               # (N, 20), noise from key
        return fvj.elbo_loss(x, z @ params["dec"], mu, logvar)   # dec_out: logits; 0-d

    step = jax.jit(jax.value_and_grad(loss_fn))
    key = jax.random.key(0)
    for x in batches:
        key, subkey = jax.random.split(key)                 # a new subkey every step
        loss, grads = step(params, x, subkey)
        params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

- ``elbo_loss``: ``-ELBO`` reduced by ``reduction`` ("mean", "sum" or "none": per row). For
  "mean" and "sum" the forward runs ``fastvae.ops.elbo_loss_and_grads`` (one fused pass computes
  the loss and all gradients, kept as residuals) and the backward scales them by the cotangent;
  "none" runs ``ops.elbo_forward`` and, in the backward, ``elbo_forward`` again plus
  ``elbo_backward`` with the per-row cotangent. Evaluated without differentiation only the
  forward kernel runs. ``likelihood`` and ``reduction`` are static; ``beta`` may be traced (a KL
  warm-up schedule compiles once). Gradients are given for every input, ``x`` and ``beta`` too;
  ``jit`` drops those that are unused.
- ``iwae_loss``: ``-(logsumexp_k log w_nk - log K)``, the negative importance-weighted bound, from
  the decoder outputs of K samples ``z_nk = mu_n + exp(logvar_n / 2) eps_nk`` (the caller draws
  eps and runs the decoder, so the gradient through z flows through ``dec_out`` in JAX).
- ``reparameterize`` draws the noise in the kernel from fastvae's Philox stream; the backward
  regenerates it, so the noise is never stored. Pass a ``key`` (split it every step, the JAX
  way) or an explicit ``seed`` and ``offset``.
- dtypes: the kernels compute in float64 if any input is float64 (needs ``jax_enable_x64``), else
  in float32 (float16 and bfloat16 inputs are widened); the loss comes back in the inputs'
  promoted dtype (``jnp.result_type``) and each gradient in its input's dtype.
- Errors: shapes, dtypes and static arguments are checked when the function is called (or
  traced). Checks of values the host sees only at run time (a traced ``beta`` < 0, a negative
  traced offset, Bernoulli data outside [0, 1]) raise in the kernel: called eagerly, that
  exception reaches you as it is; inside ``jax.jit`` JAX reports it as
  ``jax.errors.JaxRuntimeError`` whose message ends with the original error.
"""
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from . import _xla, ops
from ._interop import to_native

__all__ = ["elbo_loss", "iwae_loss", "reparameterize", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")
_LOGITS = ("dec_out must be the decoder's logits (any real number, not probabilities) for "
           "likelihood='bernoulli', its means for 'gaussian'")


# ---------------------------------------------------------------------------------------------
# The host indirection: every kernel call goes through _callback
# ---------------------------------------------------------------------------------------------
def _callback(host_fn, shapes, *args):
    """``host_fn(*numpy_arrays) -> tuple of NumPy arrays`` as a JAX op with outputs ``shapes``
    (a tuple of ShapeDtypeStruct). ``host_fn`` is a module-level ``_host_*`` function, or a
    ``functools.partial`` of one binding its static keyword arguments (strings).

    The ELBO's host functions (but the per-row backward of reduction="none"), the IWAE's and
    reparameterize's run from XLA through its FFI where fastvae/_xla.py can build that route (a
    C++ handler calling fastvae's Numba tile loop, no Python, no GIL); the rest, and everything
    when no compiler is there, through ``jax.pure_callback``. Jitted value_and_grad,
    float32, 2 threads (benchmarks/dev/jax_ffi.py): elbo_loss at (128, 784, 20) 75 us FFI, 647 us
    pure_callback, 464 us the jnp formula (medians of 21); iwae_loss at (N, K, D, L) =
    (32, 64, 784, 20) 2.69 ms FFI, 8.24 ms pure_callback, 4.31 ms jnp, and at (128, 256, 784, 20)
    70 ms, 194 ms, 103 ms (medians of 21, cores shared, load 2.5); reparameterize (key) at
    (128, 20) 73 us, 652 us, 191 us (medians of 15)."""
    return _xla.callback(host_fn, shapes, *args, fallback=_pure_callback)


def _pure_callback(host_fn, shapes, *args):
    """``_callback`` through ``jax.pure_callback``: handed CPU JAX arrays, which reach the
    kernels as zero-copy NumPy views."""
    def on_host(*arrays):
        try:
            return host_fn(*(to_native(a)[0] for a in arrays))
        except Exception as e:
            _last_host_error[0] = e        # for _surface_host_errors (eager calls)
            raise
    return jax.pure_callback(on_host, shapes, *args, vmap_method="sequential")


_last_host_error = [None]
_xla.set_error_hook(lambda e: _last_host_error.__setitem__(0, e))


def _surface_host_errors(fn):
    """Eagerly, a host exception reaches the caller as itself, not wrapped in the
    JaxRuntimeError (a 20-frame traceback) that pure_callback turns it into."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _last_host_error[0] = None
        try:
            return fn(*args, **kwargs)
        except jax.errors.JaxRuntimeError as e:
            host, _last_host_error[0] = _last_host_error[0], None
            if host is None or str(host) not in str(e):
                raise
            raise host.with_traceback(None) from None
    return wrapper


def _shape_of(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _like(*arrays):
    return tuple(_shape_of(a.shape, a.dtype) for a in arrays)


# ---------------------------------------------------------------------------------------------
# Argument checks (at call or trace time, naming the argument and what was passed)
# ---------------------------------------------------------------------------------------------
def _describe(value):
    """'jax.Array of dtype int32 and shape (3,)', 'list', ... for error messages."""
    if isinstance(value, jax.core.Tracer):
        kind = "traced jax value"
    elif isinstance(value, jax.Array):
        kind = "jax.Array"
    elif isinstance(value, (np.ndarray, np.generic)):
        kind = f"numpy.{type(value).__name__}"
    else:
        return type(value).__name__
    return f"{kind} of dtype {value.dtype} and shape {tuple(value.shape)}"


def _as_arrays(named, dims):
    """[(name, value)] -> [(name, jax array)]: floating, of the documented rank, non-empty, with
    matching dimensions (dims: {name: ("N", "D")})."""
    out = []
    for name, value in named:
        try:
            a = jnp.asarray(value)
        except (TypeError, ValueError):
            a = None
        if a is None or not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating array (float16, bfloat16, float32 or "
                            f"float64), got {_describe(value)}")
        shape = dims[name]
        if a.ndim != len(shape) or 0 in a.shape:
            raise ValueError(f"{name} must be a non-empty {len(shape)}-D array of shape "
                             f"({', '.join(shape)}), got shape {a.shape}")
        out.append((name, a))
    check.match_dims(**{name: (a, dims[name]) for name, a in out})
    return out


def _dec_logvar_named(likelihood, dec_logvar):
    if likelihood == "gaussian":
        if dec_logvar is None:
            raise ValueError("likelihood='gaussian' needs dec_logvar, the decoder's per-dimension "
                             "log-variance of shape (D,)")
        return [("dec_logvar", dec_logvar)]
    if dec_logvar is not None:
        raise ValueError(f"dec_logvar is only used with likelihood='gaussian'; pass None (got "
                         f"{_describe(dec_logvar)})")
    return []


def _compute_dtype(arrays):
    """float64 if any input is float64, else float32 (fastvae.ops's rule)."""
    widest = max(jnp.dtype(a.dtype).itemsize for a in arrays)
    return jnp.dtype(jnp.float64 if widest >= 8 else jnp.float32)


def _prepare(named, dims):
    """-> (arrays cast to the computing dtype, the inputs' promoted dtype for the loss)."""
    try:
        arrays = [a for _, a in _as_arrays(named, dims)]
    except (TypeError, ValueError) as e:
        if "dec_out" not in str(e):
            raise
        raise type(e)(f"{e} ({_LOGITS})") from None
    dtype = _compute_dtype(arrays)
    return [a.astype(dtype) for a in arrays], jnp.result_type(*arrays)


def _concrete(value):
    """A NumPy scalar/array or a JAX array that is not traced (its value is known now)."""
    return (isinstance(value, (np.ndarray, np.generic))
            or (isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)))


def _beta(beta, dtype):
    """A real number or a 0-d real array (traced or not) -> a 0-d array of ``dtype``."""
    real = hasattr(beta, "dtype") and any(jnp.issubdtype(beta.dtype, kind)
                                          for kind in (jnp.floating, jnp.integer))
    if real and np.ndim(beta) == 0 and _concrete(beta):
        beta = float(beta)                 # a known value: checked now, as a number
    if isinstance(beta, numbers.Real) and not isinstance(beta, (bool, np.bool_)):
        return jnp.asarray(check.real_scalar("beta", beta, low=0.0), dtype)
    if not (real and isinstance(beta, jax.core.Tracer) and beta.ndim == 0):
        raise TypeError(f"beta must be a real number or a 0-d real array, got "
                        f"{_describe(beta)}")
    return beta.astype(dtype)             # traced: checked on the host by fastvae.ops


def _reduction(reduction):
    return check.choice("reduction", reduction, REDUCTIONS)


def _likelihood(likelihood):
    return check.choice("likelihood", likelihood, ops.LIKELIHOODS)


def _row_cotangent(g, n, reduction):
    """d loss / d loss_n (N,) from the loss's cotangent ``g`` (0-d, or (N,) for "none")."""
    if reduction == "none":
        return g
    return jnp.broadcast_to(g / n if reduction == "mean" else g, (n,))


def _optional(rest):
    """The optional trailing dec_logvar of a host function's arrays."""
    return rest[0] if rest else None


# ---------------------------------------------------------------------------------------------
# elbo_loss
# ---------------------------------------------------------------------------------------------
_ELBO_DIMS = {"x": ("N", "D"), "dec_out": ("N", "D"), "mu": ("N", "L"), "logvar": ("N", "L"),
              "dec_logvar": ("D",)}


@_surface_host_errors
def elbo_loss(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0,
              reduction="mean"):
    """``-ELBO_n = -(log p(x_n | dec_out_n) - beta KL(q(z | x_n) || N(0, I)))``, reduced.

    x (N, D): the data (in [0, 1] for "bernoulli"); dec_out (N, D): the decoder's output for the
    sampled z: its logits for "bernoulli" (any real number; not probabilities: sigmoid(dec_out)
    is the mean), its means for "gaussian"; mu, logvar (N, L) the encoder's posterior;
    dec_logvar (D,) for "gaussian" only; beta >= 0, a number or a 0-d array (it may be traced,
    e.g. a KL warm-up schedule under jit; it is differentiable too).
    reduction: "mean" (default) -> 0-d ``-mean_n ELBO_n``; "sum" -> 0-d; "none" -> (N,).

    With x in [0, 1] the Bernoulli -ELBO is >= 0. Probabilities passed as dec_out give a wrong
    loss silently (they are valid logits); x outside [0, 1] (e.g. x and dec_out swapped) is
    refused by the kernel.
    """
    likelihood, reduction = _likelihood(likelihood), _reduction(reduction)
    named = [("x", x), ("dec_out", dec_out), ("mu", mu), ("logvar", logvar)]
    named += _dec_logvar_named(likelihood, dec_logvar)
    arrays, out_dtype = _prepare(named, _ELBO_DIMS)
    loss = _elbo_fn(likelihood, reduction)(_beta(beta, arrays[0].dtype), *arrays)
    return loss.astype(out_dtype)


def _host_elbo_forward(beta, x, dec_out, mu, logvar, *rest, likelihood):
    """-> (elbo (N,),): the forward kernel alone."""
    elbo, _ = ops.elbo_forward(x, dec_out, mu, logvar, likelihood=likelihood,
                               dec_logvar=_optional(rest), beta=float(beta))
    return (elbo,)


def _host_elbo_loss(beta, x, dec_out, mu, logvar, *rest, likelihood):
    """-> (loss 0-d,): ``-mean_n elbo_n`` (summed in float64) from the forward kernel alone."""
    (elbo,) = _host_elbo_forward(beta, x, dec_out, mu, logvar, *rest, likelihood=likelihood)
    return (np.asarray(-np.mean(elbo, dtype=np.float64), elbo.dtype),)


def _host_elbo_loss_and_grads(beta, x, dec_out, mu, logvar, *rest, likelihood):
    """-> (loss 0-d, ddec_out, dmu, dlogvar[, ddec_logvar]) of ``-mean_n elbo_n``, fused."""
    loss, grads = ops.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood=likelihood,
                                          dec_logvar=_optional(rest), beta=float(beta))
    return (np.asarray(loss, grads[0].dtype), *grads)


def _host_elbo_backward(delbo, beta, x, dec_out, mu, logvar, *rest, likelihood):
    """delbo (N,) -> (ddec_out, dmu, dlogvar[, ddec_logvar]): the forward kernel again (for its
    cache), then the backward kernel."""
    _, cache = ops.elbo_forward(x, dec_out, mu, logvar, likelihood=likelihood,
                                dec_logvar=_optional(rest), beta=float(beta))
    return tuple(ops.elbo_backward(delbo, cache))


@functools.lru_cache(maxsize=None)
def _elbo_fn(likelihood, reduction):
    """The custom_vjp loss: (beta 0-d, x, dec_out, mu, logvar[, dec_logvar]), all of one float
    dtype -> loss, 0-d or (N,). The host computes the mean's loss and gradients ("sum" scales
    them by N here) or the per-row ELBO ("none")."""
    def host(fn):
        return functools.partial(fn, likelihood=likelihood)

    def scale(x):                      # "sum" = N * "mean"
        return x.shape[0] if reduction == "sum" else 1

    @jax.custom_vjp
    def loss_fn(beta, *arrays):
        x = arrays[0]
        if reduction == "none":
            rows = _shape_of(x.shape[:1], x.dtype)
            return -_callback(host(_host_elbo_forward), (rows,), beta, *arrays)[0]
        loss = _callback(host(_host_elbo_loss), (_shape_of((), x.dtype),), beta, *arrays)[0]
        return loss * scale(x)

    def forward(beta, *arrays):
        if reduction == "none":
            return loss_fn(beta, *arrays), (None, beta, arrays)
        shapes = (_shape_of((), beta.dtype), *_like(*arrays[1:]))
        loss, *grads = _callback(host(_host_elbo_loss_and_grads), shapes, beta, *arrays)
        n = scale(arrays[0])
        return loss * n, ([g * n for g in grads], beta, arrays)   # residuals: the gradients

    def backward(residuals, dloss):
        grads, beta, arrays = residuals
        x, dec_out, mu, logvar = arrays[:4]
        drow = _row_cotangent(dloss, x.shape[0], reduction)                  # (N,)
        if grads is None:
            grads = _callback(host(_host_elbo_backward), _like(*arrays[1:]), -drow, beta,
                              *arrays)
        else:
            grads = [g * dloss for g in grads]
        if likelihood == "gaussian":       # d/dx log N(x; m, v) = -d/dm
            dx = -grads[0]
        else:                              # d/dx (x l - softplus(l)) = l
            dx = -dec_out * drow[:, None]
        dbeta = jnp.sum(drow * _kl_rows(mu, logvar))  # jit drops dx and dbeta when unused
        return (dbeta, dx, *grads)

    loss_fn.defvjp(forward, backward)
    return loss_fn


def _kl_rows(mu, logvar):
    """KL(N(mu_n, exp(logvar_n)) || N(0, I)) (N,), as fastvae/_reference.py::kl_forward."""
    return 0.5 * jnp.sum(mu * mu + jnp.expm1(logvar) - logvar, axis=1)


# ---------------------------------------------------------------------------------------------
# iwae_loss
# ---------------------------------------------------------------------------------------------
_IWAE_DIMS = {"x": ("N", "D"), "dec_out": ("N", "K", "D"), "mu": ("N", "L"),
              "logvar": ("N", "L"), "eps": ("N", "K", "L"), "dec_logvar": ("D",)}


@_surface_host_errors
def iwae_loss(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None,
              reduction="mean"):
    """The negative importance-weighted bound ``-(logsumexp_k log w_nk - log K)``, reduced.

    ``log w_nk = log p(x_n | dec_out_nk) + log p(z_nk) - log q(z_nk | x_n)`` with
    ``z_nk = mu_n + exp(logvar_n / 2) eps_nk``. x (N, D) the data; dec_out (N, K, D) the decoder's
    output for each z_nk (logits for "bernoulli", not probabilities; means for "gaussian");
    mu, logvar (N, L); eps (N, K, L) the noise (e.g. ``jax.random.normal(key, (N, K, L))``);
    dec_logvar (D,) for "gaussian" only. reduction: "mean" (default) or "sum" -> 0-d, "none" ->
    (N,). K = 1 is the ELBO with the sampled KL.

    Gradients: dec_out, mu, logvar and dec_logvar through the kernels (eps held fixed, softmax
    importance weights), x and eps in JAX. Compute z from mu, logvar and eps in JAX and feed
    the decoder: the path through z then flows through dec_out.
    """
    likelihood, reduction = _likelihood(likelihood), _reduction(reduction)
    named = [("x", x), ("dec_out", dec_out), ("mu", mu), ("logvar", logvar), ("eps", eps)]
    named += _dec_logvar_named(likelihood, dec_logvar)
    arrays, out_dtype = _prepare(named, _IWAE_DIMS)
    return _iwae_fn(likelihood, reduction)(*arrays).astype(out_dtype)


def _host_iwae_loss(x, dec_out, mu, logvar, eps, *rest, likelihood):
    """-> (loss (N,),): the forward kernels alone."""
    logw, _ = ops.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood=likelihood,
                                     dec_logvar=_optional(rest))
    return (-ops.iwae_forward(logw)[0],)


def _host_iwae_loss_and_grads(dloss, x, dec_out, mu, logvar, eps, *rest, likelihood):
    """Per-row cotangent dloss (N,) -> (loss (N,), dlogw (N, K), ddec_out (N, K, D), dmu,
    dlogvar (N, L)[, ddec_logvar (D,)])."""
    logw, weight_cache = ops.log_weight_forward(x, dec_out, mu, logvar, eps,
                                                likelihood=likelihood, dec_logvar=_optional(rest))
    estimate, iwae_cache = ops.iwae_forward(logw)
    dlogw = ops.iwae_backward(-dloss, iwae_cache)          # -dloss * softmax_k(logw)
    return (-estimate, dlogw, *ops.log_weight_backward(dlogw, weight_cache))


@functools.lru_cache(maxsize=None)
def _iwae_fn(likelihood, reduction):
    """The custom_vjp loss: (x, dec_out, mu, logvar, eps[, dec_logvar]) -> 0-d or (N,)."""
    host_loss = functools.partial(_host_iwae_loss, likelihood=likelihood)
    host_grads = functools.partial(_host_iwae_loss_and_grads, likelihood=likelihood)

    def reduce(rows):
        return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda r: r}[reduction](rows)

    def run(dloss, arrays):            # -> loss (N,), dlogw (N, K), kernel gradients
        (n, k, _), dtype = arrays[1].shape, arrays[1].dtype
        shapes = (_shape_of((n,), dtype), _shape_of((n, k), dtype), *_like(*arrays[1:4]),
                  *_like(*arrays[5:]))
        rows, dlogw, *grads = _callback(host_grads, shapes, dloss, *arrays)
        return rows, dlogw, grads

    @jax.custom_vjp
    def loss_fn(*arrays):
        rows_shape = _shape_of(arrays[0].shape[:1], arrays[0].dtype)
        return reduce(_callback(host_loss, (rows_shape,), *arrays)[0])

    def forward(*arrays):
        if reduction == "none":
            return loss_fn(*arrays), (None, arrays)
        n = arrays[0].shape[0]          # "mean" / "sum": gradients now, for a unit cotangent
        rows, dlogw, grads = run(_row_cotangent(jnp.ones((), arrays[0].dtype), n, reduction),
                                 arrays)
        return reduce(rows), ((dlogw, grads), arrays)

    def backward(residuals, dloss):
        done, arrays = residuals
        if done is None:
            _, dlogw, grads = run(dloss, arrays)
        else:
            dlogw, grads = jax.tree.map(lambda g: g * dloss, done)
        x, dec_out, mu, logvar, eps = arrays[:5]
        if likelihood == "gaussian":   # d/dx log N(x; m, v) = -d/dm, summed over k
            dx = -jnp.sum(grads[0], axis=1)
        else:
            dx = jnp.einsum("nk,nkd->nd", dlogw, dec_out)
        sigma = jnp.exp(logvar / 2)[:, None, :]
        z = mu[:, None, :] + sigma * eps
        deps = dlogw[:, :, None] * (eps - z * sigma)  # d/deps (log p(z) - log q(z | x))
        return (dx, grads[0], grads[1], grads[2], deps, *grads[3:])

    loss_fn.defvjp(forward, backward)
    return loss_fn


# ---------------------------------------------------------------------------------------------
# reparameterize
# ---------------------------------------------------------------------------------------------
_OFFSET_HI_MASK = 0x1FFFFFFF           # offsets from a key stay below 2^61


@_surface_host_errors
def reparameterize(mu, logvar, seed=None, offset=0, *, key=None):
    """``z = mu + exp(logvar / 2) * eps`` with ``eps = fastvae.random.normal((N, L), seed,
    offset)`` generated in the kernel (never stored: the backward regenerates it).

    mu, logvar (N, L) -> z (N, L) in their promoted dtype, differentiable in mu and logvar.
    Give one of:

    - ``key``: a JAX PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``), e.g. a fresh
      ``jax.random.split`` subkey every step; never reuse a key for two batches. The stream
      position is ``b = jax.random.bits(key, (4,), jnp.uint32)``: ``seed = b0 + 2^32 b1``,
      ``offset = b2 + 2^32 (b3 & 0x1FFFFFFF)``. Traced keys (under jit, vmap) are fine.
    - ``seed`` in [0, 2^64) and ``offset`` in [0, 2^62): Python ints or integer 0-d arrays that
      may be traced (e.g. ``offset = step * mu.size`` inside a jitted step; advance offset by
      ``mu.size`` per step for fresh noise). A negative traced offset is refused on the host, a
      negative traced seed is taken modulo 2^64.
    """
    arrays, out_dtype = _prepare([("mu", mu), ("logvar", logvar)], _ELBO_DIMS)
    if key is not None:
        if seed is not None or not _is_zero(offset):
            raise ValueError("give either key or seed (and offset), not both: a key sets both "
                             "the seed and the offset")
        seed_words, offset_words = _key_words(key)
    elif seed is None:
        raise ValueError("reparameterize needs key= (a jax.random key) or seed= (and offset=)")
    else:
        seed_words = _words("seed", seed, 2 ** 64 - 1)
        offset_words = _words("offset", offset, 2 ** 62 - 1)
    return _reparameterize(*arrays, seed_words, offset_words).astype(out_dtype)


def _is_zero(value):
    return isinstance(value, numbers.Integral) and value == 0


def _key_words(key):
    """A PRNG key -> (seed, offset) as (lo, hi) uint32 words (see reparameterize)."""
    k = key
    typed = hasattr(k, "dtype") and jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
    legacy = (hasattr(k, "dtype") and not typed and np.dtype(k.dtype) == np.uint32
              and tuple(k.shape) == (2,))
    if not (typed and k.ndim == 0 or legacy):
        raise TypeError(f"key must be one JAX PRNG key (jax.random.key(0) or "
                        f"jax.random.PRNGKey(0); map a batch of keys with jax.vmap), got "
                        f"{_describe(key)}")
    bits = jax.random.bits(jnp.asarray(key), (4,), jnp.uint32)
    return bits[:2], jnp.stack([bits[2], bits[3] & jnp.uint32(_OFFSET_HI_MASK)])


def _words(name, value, high):
    """A Python int or an integer 0-d array (traced or not) -> (lo, hi) uint32 words of its
    64-bit two's complement (JAX holds no 64-bit ints without jax_enable_x64)."""
    if _concrete(value) and np.ndim(value) == 0 and jnp.issubdtype(value.dtype, jnp.integer):
        value = int(value)                 # a known value: checked now, all 64 bits kept
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = check.integer(name, value, 0, high)
        return jnp.asarray([value & 0xFFFFFFFF, value >> 32], dtype=jnp.uint32)
    if (not isinstance(value, jax.core.Tracer) or value.ndim != 0
            or not jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{name} must be an int or an integer 0-d array, got "
                        f"{_describe(value)}")
    a = value
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
    """-> (z (N, L),)."""
    return (_host_reparam_forward(mu, logvar, seed, offset)[0],)


def _host_dlogvar(dz, mu, logvar, seed, offset):
    """-> (dlogvar (N, L),). The forward kernel runs again for its cache (logvar and (seed,
    offset): no noise array), then the backward kernel regenerates the noise. The discarded z
    costs one elementwise pass over (N, L), small next to the callback itself."""
    _, cache = _host_reparam_forward(mu, logvar, seed, offset)
    return (ops.reparam_backward(dz, cache)[1],)


@jax.custom_vjp
def _reparameterize(mu, logvar, seed, offset):
    return _callback(_host_z, _like(mu), mu, logvar, seed, offset)[0]


def _reparameterize_forward(mu, logvar, seed, offset):
    return _reparameterize(mu, logvar, seed, offset), (mu, logvar, seed, offset)


def _reparameterize_backward(residuals, dz):
    mu, logvar, seed, offset = residuals
    (dlogvar,) = _callback(_host_dlogvar, _like(logvar), dz, mu, logvar, seed, offset)
    return dz, dlogvar, None, None         # dmu = dz; seed and offset are not differentiable


_reparameterize.defvjp(_reparameterize_forward, _reparameterize_backward)
