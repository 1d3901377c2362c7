"""fastvae.jax: the ELBO and IWAE losses and the reparameterization as custom_vjp functions,
against jax.grad of the same formulas in jax.numpy, eagerly and under jax.jit, jax.grad and
jax.vmap, for every reduction, in float32/float64 and in bfloat16/float16.

float64 runs inside ``jax.enable_x64(True)`` (a context manager: other tests keep JAX's float32
default). float32 checks use DESIGN.md's three-way tolerance: fastvae in float32 against the JAX
formula in float64, allowed twice the error of the JAX formula in float32.
"""
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is an optional extra: pip install 'fastvae[jax]'")
import jax.numpy as jnp  # noqa: E402

import fastvae.jax as fvj  # noqa: E402
from fastvae import ops  # noqa: E402
from fastvae import random as frandom  # noqa: E402

from .helpers import assert_close3  # noqa: E402

RNG = np.random.default_rng(20261209)
LOG_2PI = math.log(2 * math.pi)
REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------
# The formulas in jax.numpy (differentiated by jax.grad)
# ---------------------------------------------------------------------------------------------
def _reduce(rows, reduction):
    return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda r: r}[reduction](rows)


def _loglik(x, dec_out, dec_logvar):
    """Per-row log p(x | dec_out), summed over the last axis; Gaussian iff dec_logvar."""
    if dec_logvar is None:
        return jnp.sum(x * dec_out - jnp.logaddexp(0.0, dec_out), axis=-1)
    return -0.5 * jnp.sum(LOG_2PI + dec_logvar + (x - dec_out) ** 2 * jnp.exp(-dec_logvar),
                          axis=-1)


def jax_elbo_loss(x, dec_out, mu, logvar, dec_logvar=None, beta=1.0, reduction="mean"):
    """-ELBO_n reduced: x, dec_out (N, D); mu, logvar (N, L); dec_logvar (D,) or None."""
    kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1 - logvar, axis=1)
    return _reduce(-(_loglik(x, dec_out, dec_logvar) - beta * kl), reduction)


def jax_log_weights(x, dec_out, mu, logvar, eps, dec_logvar=None):
    """log w_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n) (N, K): x (N, D);
    dec_out (N, K, D); mu, logvar (N, L); eps (N, K, L)."""
    z = mu[:, None] + jnp.exp(logvar / 2)[:, None] * eps                    # (N, K, L)
    log_pz = -0.5 * jnp.sum(z * z + LOG_2PI, axis=2)
    log_qz = -0.5 * jnp.sum(LOG_2PI + logvar[:, None] + eps * eps, axis=2)
    return _loglik(x[:, None], dec_out, dec_logvar) + log_pz - log_qz


def jax_iwae_loss(x, dec_out, mu, logvar, eps, dec_logvar=None, reduction="mean"):
    """-(logsumexp_k log w_nk - log K) reduced (shapes as jax_log_weights)."""
    logw = jax_log_weights(x, dec_out, mu, logvar, eps, dec_logvar)           # (N, K)
    k = logw.shape[1]
    return _reduce(-(jax.scipy.special.logsumexp(logw, axis=1) - math.log(k)), reduction)


def fastvae_elbo_loss(x, dec_out, mu, logvar, dec_logvar=None, beta=1.0, reduction="mean"):
    likelihood = "bernoulli" if dec_logvar is None else "gaussian"
    return fvj.elbo_loss(x, dec_out, mu, logvar, likelihood=likelihood, dec_logvar=dec_logvar,
                         beta=beta, reduction=reduction)


def fastvae_iwae_loss(x, dec_out, mu, logvar, eps, dec_logvar=None, reduction="mean"):
    likelihood = "bernoulli" if dec_logvar is None else "gaussian"
    return fvj.iwae_loss(x, dec_out, mu, logvar, eps, likelihood=likelihood,
                         dec_logvar=dec_logvar, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# Inputs and the value-and-VJP harness
# ---------------------------------------------------------------------------------------------
def _data(likelihood, shape):
    return (RNG.uniform(0.02, 0.98, shape) if likelihood == "bernoulli"
            else RNG.normal(0, 2, shape))


def _inputs(n, d, l, likelihood):
    """[x, dec_out (N, D), mu, logvar (N, L)] (+ [dec_logvar (D,)] for Gaussian), float64."""
    arrays = [_data(likelihood, (n, d)), RNG.normal(0, 2, (n, d)), RNG.normal(0, 1, (n, l)),
              RNG.normal(0, 1, (n, l))]
    return arrays + ([RNG.normal(0, 0.5, d)] if likelihood == "gaussian" else [])


def _iwae_inputs(n, k, d, l, likelihood, scale=1.0):
    """[x (N, D), dec_out (N, K, D), mu, logvar (N, L), eps (N, K, L)] (+ [dec_logvar (D,)]);
    scale > 1 widens them to extreme-ish values (|logits| ~ 30, logvar in [-6, 3], |log w| up
    to ~1e4)."""
    x = (RNG.uniform(0.001, 0.999, (n, d)) if likelihood == "bernoulli"
         else RNG.normal(0, 2 * scale, (n, d)))
    arrays = [x, RNG.normal(0, 2 * scale, (n, k, d)), RNG.normal(0, scale, (n, l)),
              np.clip(RNG.normal(0, scale, (n, l)), -6, 3), RNG.normal(0, 1, (n, k, l))]
    return arrays + ([RNG.uniform(-1.5, 1, d)] if likelihood == "gaussian" else [])


def _cotangent(reduction, n):
    """The upstream gradient: 1.7 for a 0-d loss, random signs and sizes per row for "none"."""
    if reduction != "none":
        return np.float64(1.7)
    return RNG.uniform(0.5, 2.0, n) * RNG.choice([-1.0, 1.0], n)


def _value_and_vjp(loss_fn, args, dtype, cotangent, jit=True):
    """(loss, gradients of every arg), each as float64 NumPy; the gradients for the upstream
    ``cotangent`` (0-d, or (N,) for a per-row loss).

    Jitted by default: eager JAX compiles every primitive for every new shape (3 s a shape for the
    reference formula here), one jit compiles the whole function once (0.3 s)."""
    def weighted(*args):
        loss = loss_fn(*args)
        return jnp.sum(jnp.asarray(cotangent, loss.dtype) * loss), loss
    f = jax.value_and_grad(weighted, argnums=tuple(range(len(args))), has_aux=True)
    f = jax.jit(f) if jit else f
    with jax.enable_x64(dtype == np.float64):
        (_, value), grads = f(*(jnp.asarray(a, dtype) for a in args))
        assert value.dtype == dtype and all(g.dtype == dtype for g in grads)
        return [np.asarray(value, np.float64)] + [np.asarray(g, np.float64) for g in grads]


def _check_three_way(fast, reference, args, names, cotangent, rtol32=1e-6, rtol64=1e-12):
    """fast vs reference: float32 three-way, float64 to rtol64; atol scales with |ref64|."""
    ref64 = _value_and_vjp(reference, args, np.float64, cotangent)
    ref32 = _value_and_vjp(reference, args, np.float32, cotangent)
    out64 = _value_and_vjp(fast, args, np.float64, cotangent)
    out32 = _value_and_vjp(fast, args, np.float32, cotangent)
    assert len(out32) == len(names)
    for name, o32, r32, o64, r64 in zip(names, out32, ref32, out64, ref64):
        scale = max(1.0, float(np.abs(r64).max()))
        assert_close3(o32, r32, r64, atol=rtol32 * scale, name=f"{name} float32")
        assert_close3(o64, r64, r64, atol=rtol64 * scale, name=f"{name} float64")


def _with(fn, **kwargs):
    """fn with keyword arguments bound, taking beta first (the harness differentiates it)."""
    return lambda beta, *arrays: fn(*arrays, beta=beta, **kwargs)


ELBO_NAMES = ["loss", "dbeta", "dx", "ddec_out", "dmu", "dlogvar", "ddec_logvar"]
IWAE_NAMES = ["loss", "dx", "ddec_out", "dmu", "dlogvar", "deps", "ddec_logvar"]


# ---------------------------------------------------------------------------------------------
# elbo_loss
# ---------------------------------------------------------------------------------------------
ELBO_CASES = [(n, d, l, reduction) for n, d, l in [(37, 131, 7), (1, 1, 1)]
              for reduction in REDUCTIONS] + [(5, 4099, 3, "mean"), (5, 4099, 3, "none")]


@pytest.mark.parametrize("n,d,l,reduction", ELBO_CASES)
@pytest.mark.parametrize("likelihood,beta", [("bernoulli", 1.0), ("bernoulli", 0.37),
                                             ("gaussian", 2.5)])
def test_elbo_loss_matches_jax_grad(likelihood, beta, n, d, l, reduction):
    args = [beta] + _inputs(n, d, l, likelihood)
    _check_three_way(_with(fastvae_elbo_loss, reduction=reduction),
                     _with(jax_elbo_loss, reduction=reduction), args,
                     ELBO_NAMES[:len(args) + 1], _cotangent(reduction, n))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_loss_eager_equals_jit(likelihood, reduction):
    args = [0.37] + _inputs(37, 131, 7, likelihood)
    cotangent = _cotangent(reduction, 37)
    loss_fn = _with(fastvae_elbo_loss, reduction=reduction)
    for dtype in (np.float32, np.float64):
        eager = _value_and_vjp(loss_fn, args, dtype, cotangent, jit=False)
        jitted = _value_and_vjp(loss_fn, args, dtype, cotangent, jit=True)
        for e, j in zip(eager, jitted):
            np.testing.assert_allclose(e, j, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_elbo_loss_reductions_agree():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    rows = fvj.elbo_loss(x, dec_out, mu, logvar, reduction="none")                 # (9,)
    assert rows.shape == (9,) and bool(jnp.all(rows > 0))   # x in [0, 1]: -ELBO_n >= 0
    np.testing.assert_allclose(fvj.elbo_loss(x, dec_out, mu, logvar), jnp.mean(rows), rtol=1e-6)
    np.testing.assert_allclose(fvj.elbo_loss(x, dec_out, mu, logvar, reduction="sum"),
                               jnp.sum(rows), rtol=1e-6)


def test_elbo_loss_with_a_traced_beta_compiles_once():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    traces = []

    @jax.jit
    def loss(beta):
        traces.append(1)
        return fvj.elbo_loss(x, dec_out, mu, logvar, beta=beta)

    for beta in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(loss(beta), jax_elbo_loss(x, dec_out, mu, logvar, beta=beta),
                                   rtol=1e-6)
    assert len(traces) == 1


@pytest.mark.parametrize("beta", [np.float32(0.5), np.array(0.5), jnp.asarray(0.5),
                                  jnp.asarray(0.5, jnp.bfloat16), 1, np.int64(1),
                                  jnp.asarray(1, jnp.int32)])
def test_elbo_loss_takes_beta_as_a_number_or_a_0d_array(beta):
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    want = jax_elbo_loss(x, dec_out, mu, logvar, beta=float(beta))
    np.testing.assert_allclose(fvj.elbo_loss(x, dec_out, mu, logvar, beta=beta), want, rtol=1e-6)
    jitted = jax.jit(lambda b: fvj.elbo_loss(x, dec_out, mu, logvar, beta=b))
    np.testing.assert_allclose(jitted(beta), want, rtol=1e-6)


def test_elbo_loss_errors_name_the_argument_and_what_was_passed():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(9, 13, 3, "bernoulli"))
    with pytest.raises(ValueError, match="shape mismatch on N: mu"):
        fvj.elbo_loss(x, dec_out, mu[:4], logvar)
    with pytest.raises(ValueError, match="needs dec_logvar"):
        fvj.elbo_loss(x, dec_out, mu, logvar, likelihood="gaussian")
    with pytest.raises(ValueError, match=r"beta must be in \[0.0"):
        fvj.elbo_loss(x, dec_out, mu, logvar, beta=-1.0)
    with pytest.raises(ValueError, match=r"beta must be in \[0.0"):
        fvj.elbo_loss(x, dec_out, mu, logvar, beta=jnp.asarray(-1.0))
    with pytest.raises(TypeError, match="mu must be a floating array .* got jax.Array of dtype "
                                        "int32 and shape"):
        fvj.elbo_loss(x, dec_out, jnp.ones((9, 3), jnp.int32), logvar)
    with pytest.raises(TypeError, match="x must be a floating array .* got str"):
        fvj.elbo_loss("x", dec_out, mu, logvar)
    with pytest.raises(TypeError, match="dec_out must be .* got list.*logits"):
        fvj.elbo_loss(x, [[1, 2]], mu, logvar)
    with pytest.raises(ValueError, match="dec_out must be a non-empty 2-D.*the decoder's logits"):
        fvj.elbo_loss(x, dec_out[0], mu, logvar)
    with pytest.raises(TypeError, match="beta must be a real number or a 0-d real array, got "
                                        "str"):
        fvj.elbo_loss(x, dec_out, mu, logvar, beta="0.5")
    with pytest.raises(TypeError, match="got jax.Array of dtype float32 and shape \\(2,\\)"):
        fvj.elbo_loss(x, dec_out, mu, logvar, beta=jnp.ones(2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fvj.elbo_loss(x, dec_out, mu, logvar, reduction="average")
    with pytest.raises(ValueError, match="dec_logvar is only used .*got jax.Array"):
        fvj.elbo_loss(x, dec_out, mu, logvar, dec_logvar=jnp.ones(13))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elbo_loss_under_vmap_matches_a_loop(reduction):
    batches = [[jnp.asarray(a, jnp.float32) for a in _inputs(6, 11, 2, "gaussian")]
               for _ in range(3)]
    stacked = [jnp.stack(parts) for parts in zip(*batches)]

    def grads(*arrays):                   # d(sum of the loss)/d(dec_out, logvar, dec_logvar)
        def loss(*a):
            return jnp.sum(fastvae_elbo_loss(*a, beta=0.7, reduction=reduction))
        return jax.grad(loss, argnums=(1, 3, 4))(*arrays)

    vmapped = jax.vmap(grads)(*stacked)
    for i, arrays in enumerate(batches):
        for v, w in zip(vmapped, grads(*arrays)):
            np.testing.assert_array_equal(v[i], w)


# ---------------------------------------------------------------------------------------------
# dtypes: bfloat16 / float16 in, float32 inside, the input dtypes out
# ---------------------------------------------------------------------------------------------
def _rounded_grads(loss_fn, arrays, argnums):
    """(loss, grads of its float32 sum) of loss_fn on ``arrays`` and, for reference, on the same
    values in float32."""
    def f(*a):
        loss = loss_fn(*a)
        grads = jax.grad(lambda *b: jnp.sum(loss_fn(*b).astype(jnp.float32)), argnums)(*a)
        return loss, grads
    f = jax.jit(f)
    return f(*arrays), f(*(a.astype(jnp.float32) for a in arrays))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elbo_loss_in_half_precision_returns_the_input_dtypes(dtype, reduction):
    arrays = [jnp.asarray(a, dtype) for a in _inputs(6, 11, 3, "gaussian")]

    def loss_fn(*a):
        return fastvae_elbo_loss(*a, beta=0.5, reduction=reduction)

    (loss, grads), (loss32, grads32) = _rounded_grads(loss_fn, arrays, (0, 1, 2, 3, 4))
    rtol = 4 * float(jnp.finfo(dtype).eps)
    assert loss.dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_allclose(loss.astype(np.float32), loss32, rtol=rtol)
    for g, g32 in zip(grads, grads32):
        np.testing.assert_allclose(g.astype(np.float32), g32, rtol=rtol,
                                   atol=rtol * float(jnp.abs(g32).max()))


def test_mixed_dtypes_promote_the_loss_and_keep_each_gradients_dtype():
    x, dec_out, mu, logvar = _inputs(6, 11, 3, "bernoulli")
    args = [jnp.asarray(x, jnp.float32)] + [jnp.asarray(a, jnp.bfloat16)
                                            for a in (dec_out, mu, logvar)]
    loss, grads = jax.value_and_grad(fvj.elbo_loss, argnums=(0, 1, 2, 3))(*args)
    assert loss.dtype == jnp.float32                     # jnp.result_type(float32, bfloat16)
    assert [g.dtype for g in grads] == [jnp.float32] + [jnp.bfloat16] * 3


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_iwae_loss_and_reparameterize_in_half_precision(dtype):
    arrays = [jnp.asarray(a, dtype) for a in _iwae_inputs(3, 5, 13, 7, "bernoulli")]
    (loss, grads), (loss32, grads32) = _rounded_grads(fastvae_iwae_loss, arrays, (1, 2, 3))
    rtol = 4 * float(jnp.finfo(dtype).eps)
    assert loss.dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_allclose(loss.astype(np.float32), loss32, rtol=rtol)
    for g, g32 in zip(grads, grads32):
        np.testing.assert_allclose(g.astype(np.float32), g32, rtol=rtol,
                                   atol=rtol * float(jnp.abs(g32).max()))
    mu, logvar = arrays[2:4]
    z = fvj.reparameterize(mu, logvar, key=jax.random.key(4))
    z32 = fvj.reparameterize(mu.astype(jnp.float32), logvar.astype(jnp.float32),
                             key=jax.random.key(4))
    assert z.dtype == dtype
    np.testing.assert_array_equal(z, z32.astype(dtype))   # computed in float32, rounded once


# ---------------------------------------------------------------------------------------------
# iwae_loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_loss_matches_jax_grad(likelihood, scale, reduction):
    n, k, d, l = 3, 5, 131, 7
    args = _iwae_inputs(n, k, d, l, likelihood, scale)

    def fast(*a):
        return fastvae_iwae_loss(*a, reduction=reduction)

    def reference(*a):
        return jax_iwae_loss(*a, reduction=reduction)

    _check_three_way(fast, reference, args, IWAE_NAMES[:len(args) + 1],
                     _cotangent(reduction, n), rtol32=_iwae_rtol32(args),
                     rtol64=1e-11)


def _iwae_rtol32(args):
    """iwae_backward's softmax is now exp(logw - lse64) with the forward's float64 lse
    (fastvae/cpu/logsumexp.py), as precise as the jnp formula's exp(logw - max) / sum; it was
    exp(logw - lse) with the float32 lse, off by up to ulp(|lse|) relative (4-37x the plain
    three-way tolerance, worst of 12 input draws per case). Left, presumably the float32 log
    weights themselves (fastvae's fused Bernoulli sum over D against jnp's, ~ulp(|logw|) apart):
    the Bernoulli gradients still reach 1.7x the plain tolerance in those draws (Gaussian: 0.27x);
    allowed: 1/2 ulp of |lse| (was 2 ulp), err/tol <= 0.54 over 20 draws per case."""
    with jax.enable_x64(True):
        logw = jax_log_weights(*(jnp.asarray(a, np.float64) for a in args))          # (N, K)
        lse = np.asarray(jax.scipy.special.logsumexp(logw, axis=1))
    return max(1e-6, 0.5 * 2.0 ** -23 * float(np.abs(lse).max()))


def test_iwae_loss_eager_equals_jit_and_takes_one_sample():
    args = _iwae_inputs(3, 5, 131, 7, "gaussian")
    cotangent = _cotangent("none", 3)
    loss_fn = lambda *a: fastvae_iwae_loss(*a, reduction="none")       # noqa: E731
    eager = _value_and_vjp(loss_fn, args, np.float32, cotangent, jit=False)
    jitted = _value_and_vjp(loss_fn, args, np.float32, cotangent, jit=True)
    for e, j in zip(eager, jitted):   # jit may reorder the float32 ops done in JAX (deps, dx)
        e = np.asarray(e)
        np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-6 * float(np.abs(e).max()))
    x, dec_out, mu, logvar, eps, dec_logvar = (jnp.asarray(a, jnp.float32) for a in args)
    one = fvj.iwae_loss(x, dec_out[:, :1], mu, logvar, eps[:, :1], likelihood="gaussian",
                        dec_logvar=dec_logvar, reduction="none")
    np.testing.assert_allclose(one, jax_iwae_loss(x, dec_out[:, :1], mu, logvar, eps[:, :1],
                                                  dec_logvar, reduction="none"), rtol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_iwae_loss_under_vmap_matches_a_loop(reduction):
    batches = [[jnp.asarray(a, jnp.float32) for a in _iwae_inputs(3, 4, 9, 2, "bernoulli")]
               for _ in range(3)]
    stacked = [jnp.stack(parts) for parts in zip(*batches)]

    def grads(*arrays):
        loss = lambda *a: jnp.sum(fastvae_iwae_loss(*a, reduction=reduction))  # noqa: E731
        return jax.grad(loss, argnums=(1, 2, 3))(*arrays)

    vmapped = jax.jit(jax.vmap(grads))(*stacked)
    for i, arrays in enumerate(batches):
        for v, w in zip(vmapped, grads(*arrays)):
            np.testing.assert_allclose(v[i], w, rtol=1e-6, atol=1e-7)


def test_iwae_loss_errors_name_the_argument():
    x, dec_out, mu, logvar, eps = (jnp.asarray(a, jnp.float32)
                                   for a in _iwae_inputs(3, 5, 13, 7, "bernoulli"))
    with pytest.raises(ValueError, match="shape mismatch on K: eps"):
        fvj.iwae_loss(x, dec_out, mu, logvar, eps[:, :2])
    with pytest.raises(ValueError, match=r"dec_out must be a non-empty 3-D array of shape "
                                         r"\(N, K, D\).*logits"):
        fvj.iwae_loss(x, dec_out[:, 0], mu, logvar, eps)
    with pytest.raises(TypeError, match="eps must be a floating array .* got NoneType"):
        fvj.iwae_loss(x, dec_out, mu, logvar, None)
    with pytest.raises(ValueError, match="needs dec_logvar"):
        fvj.iwae_loss(x, dec_out, mu, logvar, eps, likelihood="gaussian")
    with pytest.raises(ValueError, match="reduction must be one of"):
        fvj.iwae_loss(x, dec_out, mu, logvar, eps, reduction=None)


# ---------------------------------------------------------------------------------------------
# Errors raised on the host (the kernels' own checks of values known only at run time)
# ---------------------------------------------------------------------------------------------
def _swapped_bernoulli_args():
    """(x, dec_out, mu, logvar) with x and dec_out swapped: logits where the data belong."""
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(4, 5, 2, "bernoulli"))
    return dec_out, x, mu, logvar


def _needs_the_kernel_x_check():
    x, dec_out, mu, logvar = (np.asarray(a) for a in _swapped_bernoulli_args())
    try:
        ops.elbo_forward(x, dec_out, mu, logvar)
    except ValueError:
        return
    pytest.skip("the ELBO kernel does not check Bernoulli x against [0, 1] in this checkout")


def test_host_errors_reach_eager_callers_as_themselves():
    _needs_the_kernel_x_check()
    args = _swapped_bernoulli_args()
    for f in (fvj.elbo_loss, lambda *a: jax.grad(fvj.elbo_loss, argnums=1)(*a)):
        with pytest.raises(ValueError, match=r"x has .* outside \[0, 1\].*swap"):
            f(*args)
    logits, data, mu, logvar = args
    with pytest.raises(ValueError, match=r"x has .* outside \[0, 1\]"):    # swapped too
        fvj.iwae_loss(logits, data[:, None], mu, logvar, jnp.ones((4, 1, 2)), reduction="none")


def test_host_errors_under_jit_carry_the_kernels_message():
    _needs_the_kernel_x_check()
    args = _swapped_bernoulli_args()
    for f in (jax.jit(fvj.elbo_loss), jax.jit(jax.grad(fvj.elbo_loss, argnums=1))):
        with pytest.raises(jax.errors.JaxRuntimeError,
                           match=r"ValueError: .*x has .* outside \[0, 1\].*swap"):
            jax.block_until_ready(f(*args))


def test_a_traced_negative_beta_is_refused_on_the_host():
    x, dec_out, mu, logvar = (jnp.asarray(a, jnp.float32) for a in _inputs(4, 5, 2, "bernoulli"))
    loss = lambda b: fvj.elbo_loss(x, dec_out, mu, logvar, beta=b)         # noqa: E731
    with pytest.raises(ValueError, match=r"beta must be in \[0.0"):
        jax.grad(loss)(-0.5)                      # eager: beta is traced by grad alone
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"ValueError: beta must be in \[0.0"):
        jax.block_until_ready(jax.jit(loss)(-0.5))


# ---------------------------------------------------------------------------------------------
# reparameterize: seed and offset
# ---------------------------------------------------------------------------------------------
def _jax_sample(seed, offset, dtype):
    def sample(mu, logvar):
        eps = jnp.asarray(frandom.normal(mu.shape, seed, offset, dtype=dtype))
        return mu + jnp.exp(logvar / 2) * eps
    return sample


def _sample_and_grads(sample, mu, logvar, dz, dtype):
    with jax.enable_x64(dtype == np.float64):
        mu, logvar, dz = (jnp.asarray(a, dtype) for a in (mu, logvar, dz))
        z, vjp = jax.vjp(sample, mu, logvar)
        return [np.asarray(a, np.float64) for a in (z, *vjp(dz))]


@pytest.mark.parametrize("n,l", [(37, 7), (1, 1), (301, 19)])
def test_reparameterize_matches_jax_grad(n, l):
    seed, offset = 2026, 11
    mu, logvar, dz = (RNG.normal(0, 1, (n, l)) for _ in range(3))
    ref = {dt: _sample_and_grads(_jax_sample(seed, offset, dt), mu, logvar, dz, dt)
           for dt in (np.float32, np.float64)}
    for dt, atol in ((np.float32, 1e-6), (np.float64, 1e-13)):
        out = _sample_and_grads(lambda m, lv: fvj.reparameterize(m, lv, seed, offset),
                                mu, logvar, dz, dt)
        r32 = ref[np.float32] if dt == np.float32 else ref[np.float64]
        for name, o, a, b in zip(["z", "dmu", "dlogvar"], out, r32, ref[np.float64]):
            assert_close3(o, a, b, atol=atol, name=f"{name} {np.dtype(dt).name}")


def test_reparameterize_under_jit_with_a_traced_offset():
    n, l, seed = 37, 7, 5
    mu, logvar = (jnp.asarray(RNG.normal(0, 1, (n, l)), jnp.float32) for _ in range(2))

    @jax.jit
    def grads(mu, logvar, step):
        return jax.grad(lambda m, lv: jnp.sum(fvj.reparameterize(m, lv, seed, step * n * l) ** 2),
                        argnums=(0, 1))(mu, logvar)

    for step in (0, 3):
        want = jax.grad(lambda m, lv: jnp.sum(_jax_sample(seed, step * n * l, np.float32)(m, lv)
                                              ** 2), argnums=(0, 1))(mu, logvar)
        for g, w in zip(grads(mu, logvar, step), want):
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)
    assert not np.allclose(grads(mu, logvar, 0)[1], grads(mu, logvar, 1)[1])   # fresh noise


@pytest.mark.parametrize("seed", [2 ** 40 + 3, np.int64(2 ** 40 + 3), np.array(2 ** 40 + 3),
                                  np.uint64(2 ** 40 + 3)])
def test_reparameterize_keeps_all_64_bits_of_a_concrete_seed(seed):
    mu, logvar = (jnp.asarray(RNG.normal(0, 1, (5, 3)), jnp.float32) for _ in range(2))
    want = _jax_sample(2 ** 40 + 3, 6, np.float32)(mu, logvar)
    np.testing.assert_allclose(fvj.reparameterize(mu, logvar, seed, np.array(6)), want,
                               rtol=1e-6, atol=1e-6)


def test_reparameterize_errors():
    mu = jnp.ones((3, 2), jnp.float32)
    with pytest.raises(ValueError, match="seed must be in"):
        fvj.reparameterize(mu, mu, -1)
    with pytest.raises(ValueError, match="seed must be in"):
        fvj.reparameterize(mu, mu, jnp.asarray(-1))
    with pytest.raises(TypeError, match="offset must be an int or an integer 0-d array, got "
                                        "jax.Array of dtype int32 and shape \\(2,\\)"):
        fvj.reparameterize(mu, mu, 1, offset=jnp.ones(2, jnp.int32))
    with pytest.raises(TypeError, match="seed must be an int or an integer 0-d array, got "
                                        "float"):
        fvj.reparameterize(mu, mu, 1.5)
    with pytest.raises(ValueError, match="shape mismatch on L: logvar"):
        fvj.reparameterize(mu, jnp.ones((3, 4), jnp.float32), 1)
    with pytest.raises(ValueError, match="needs key= .* or seed="):
        fvj.reparameterize(mu, mu)
    with pytest.raises(ValueError, match="either key or seed"):
        fvj.reparameterize(mu, mu, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="key must be one JAX PRNG key .* got int"):
        fvj.reparameterize(mu, mu, key=0)
    with pytest.raises(TypeError, match="key must be one JAX PRNG key .* shape \\(3,\\)"):
        fvj.reparameterize(mu, mu, key=jax.random.split(jax.random.key(0), 3))


# ---------------------------------------------------------------------------------------------
# reparameterize: key
# ---------------------------------------------------------------------------------------------
def _stream_of(key):
    """(seed, offset) that fvj.reparameterize derives from ``key`` (its docstring's rule)."""
    b = [int(w) for w in np.asarray(jax.random.bits(key, (4,), jnp.uint32))]
    return b[0] | b[1] << 32, b[2] | (b[3] & 0x1FFFFFFF) << 32


def _noise(key, n=6, l=5):
    """eps (N, L) of fvj.reparameterize(mu=0, logvar=0, key=key)."""
    zeros = jnp.zeros((n, l), jnp.float32)
    return np.asarray(fvj.reparameterize(zeros, zeros, key=key))


def test_a_key_gives_the_noise_of_its_derived_seed_and_offset():
    for key in (jax.random.key(7), jax.random.PRNGKey(7), jax.random.split(jax.random.key(1))[1]):
        seed, offset = _stream_of(key)
        assert offset < 2 ** 61
        np.testing.assert_allclose(_noise(key), frandom.normal((6, 5), seed, offset,
                                                               dtype=np.float32), atol=1e-6)
    np.testing.assert_array_equal(_noise(jax.random.key(7)), _noise(jax.random.PRNGKey(7)))


def test_same_key_same_noise_different_keys_different_noise():
    key = jax.random.key(0)
    np.testing.assert_array_equal(_noise(key), _noise(key))
    noises = [_noise(k) for k in jax.random.split(key, 4)] + [_noise(key)]
    for i in range(len(noises)):
        for j in range(i):
            assert not np.any(np.isclose(noises[i], noises[j])), (i, j)


def test_the_training_loop_pattern_draws_fresh_noise_every_step():
    mu, logvar = (jnp.asarray(RNG.normal(0, 1, (6, 5)), jnp.float32) for _ in range(2))
    step = jax.jit(lambda key: fvj.reparameterize(mu, logvar, key=key))
    key, draws = jax.random.key(3), []
    for _ in range(3):
        key, subkey = jax.random.split(key)
        draws.append(np.asarray(step(subkey)))
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])


def test_reparameterize_with_a_key_under_jit_grad_and_vmap():
    keys = jax.random.split(jax.random.key(11), 3)
    mu, logvar, dz = (jnp.asarray(RNG.normal(0, 1, (3, 6, 5)), jnp.float32) for _ in range(3))

    def vjp(mu, logvar, dz, key):        # (z, dmu, dlogvar) for one batch element
        z, pullback = jax.vjp(lambda m, lv: fvj.reparameterize(m, lv, key=key), mu, logvar)
        return (z, *pullback(dz))

    batched = jax.jit(jax.vmap(vjp))(mu, logvar, dz, keys)
    for i, key in enumerate(keys):
        seed, offset = _stream_of(key)
        want = jax.vjp(_jax_sample(seed, offset, np.float32), mu[i], logvar[i])
        want = (want[0], *want[1](dz[i]))
        for b, w in zip(batched, want):
            np.testing.assert_allclose(b[i], w, rtol=2e-6, atol=1e-6)
