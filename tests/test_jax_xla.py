"""fastvae/_xla.py: fastvae's ELBO kernels as XLA custom calls (jax.ffi). Each route gives
fastvae.ops's numbers bit for bit, under jit and vmap, float32 and float64; errors the kernel
raises come back as errors; without a compiler the pure_callback route is taken."""
import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is an optional extra: pip install 'fastvae[jax]'")
import jax.numpy as jnp  # noqa: E402

from fastvae import _xla, ops  # noqa: E402

RNG = np.random.default_rng(20261203)
ROUTES = _xla.available_routes()
FFI_ROUTES = [r for r in ROUTES if r != "pure_callback"]
SIZES = [(37, 131, 7), (1, 1, 1), (70, 5, 3)]   # 70 rows: 3 Bernoulli tiles, 5 Gaussian blocks


def _inputs(n, d, l, likelihood, dtype):
    x = RNG.uniform(0.02, 0.98, (n, d)) if likelihood == "bernoulli" else RNG.normal(0, 2, (n, d))
    arrays = [x, RNG.normal(0, 2, (n, d)), RNG.normal(0, 1, (n, l)), RNG.normal(0, 1, (n, l))]
    arrays += [RNG.normal(0, 0.5, d)] if likelihood == "gaussian" else []
    return [a.astype(dtype) for a in arrays]


def _kwargs(likelihood, arrays, beta):
    return dict(likelihood=likelihood, beta=beta,
                dec_logvar=arrays[4] if likelihood == "gaussian" else None)


def _same_bits(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
    assert np.array_equal(got, want), (name, np.max(np.abs(got.astype(float) - want)))


def test_route_is_reported():
    assert _xla.route() in _xla.ROUTES
    if _xla._compiler() is not None:
        assert _xla.route() == "ffi-numba", _xla.why()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood,beta", [("bernoulli", 1.0), ("bernoulli", 0.37),
                                             ("gaussian", 2.5)])
@pytest.mark.parametrize("n,d,l", SIZES)
@pytest.mark.parametrize("route_name", ROUTES)
def test_ops_equal_fastvae_ops_bit_for_bit(route_name, n, d, l, likelihood, beta, dtype):
    arrays = _inputs(n, d, l, likelihood, dtype)
    beta = float(dtype(beta))
    with jax.enable_x64(dtype == np.float64):
        b = jnp.asarray(beta, dtype)
        fused = jax.jit(functools.partial(_xla.elbo_loss_and_grads, likelihood=likelihood,
                                          route_name=route_name))(b, *arrays)
        rows = jax.jit(functools.partial(_xla.elbo_forward, likelihood=likelihood,
                                         route_name=route_name))(b, *arrays)
        loss = jax.jit(functools.partial(_xla.elbo_loss, likelihood=likelihood,
                                         route_name=route_name))(b, *arrays)
        jax.block_until_ready((fused, rows, loss))
    want_loss, want_grads = ops.elbo_loss_and_grads(*arrays[:4], **_kwargs(likelihood, arrays,
                                                                           beta))
    _same_bits(fused[0], np.asarray(want_loss, dtype), "loss")
    for name, got, want in zip(["ddec_out", "dmu", "dlogvar", "ddec_logvar"], fused[1:],
                               want_grads):
        _same_bits(got, want, name)
    want_rows, _ = ops.elbo_forward(*arrays[:4], **_kwargs(likelihood, arrays, beta))
    _same_bits(rows, want_rows, "elbo rows")
    _same_bits(loss, np.asarray(-np.mean(want_rows, dtype=np.float64), dtype), "mean loss")


@pytest.mark.parametrize("route_name", FFI_ROUTES)
def test_mean_of_many_rows_keeps_numpy_summation(route_name):
    """> 8192 float32 rows: NumPy sums a float64 mean of float32 in 8192-element chunks."""
    arrays = _inputs(9000, 2, 1, "bernoulli", np.float32)
    loss = jax.jit(functools.partial(_xla.elbo_loss, route_name=route_name))(
        jnp.float32(1.0), *arrays)
    fused = jax.jit(functools.partial(_xla.elbo_loss_and_grads, route_name=route_name))(
        jnp.float32(1.0), *arrays)
    rows, _ = ops.elbo_forward(*arrays)
    _same_bits(loss, np.asarray(-np.mean(rows, dtype=np.float64), np.float32), "mean loss")
    _same_bits(fused[0], np.float32(ops.elbo_loss_and_grads(*arrays)[0]), "fused loss")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("route_name", ROUTES)
def test_under_vmap_equals_a_loop(route_name, likelihood):
    batches = [_inputs(6, 11, 2, likelihood, np.float32) for _ in range(3)]
    stacked = [np.stack(parts) for parts in zip(*batches)]
    if likelihood == "gaussian":
        stacked[4] = batches[0][4]          # one dec_logvar shared by the batches
        for b in batches:
            b[4] = batches[0][4]
    betas = jnp.asarray([0.5, 1.0, 2.0], jnp.float32)
    in_axes = (0, 0, 0, 0, 0) + ((None,) if likelihood == "gaussian" else ())
    fn = functools.partial(_xla.elbo_loss_and_grads, likelihood=likelihood,
                           route_name=route_name)
    out = jax.jit(jax.vmap(fn, in_axes=in_axes))(betas, *stacked)
    for i, arrays in enumerate(batches):
        loss, grads = ops.elbo_loss_and_grads(*arrays[:4],
                                              **_kwargs(likelihood, arrays, float(betas[i])))
        _same_bits(out[0][i], np.float32(loss), "loss")
        for name, got, want in zip(["ddec_out", "dmu", "dlogvar", "ddec_logvar"], out[1:],
                                   grads):
            _same_bits(got[i], want, name)


@pytest.mark.parametrize("route_name", FFI_ROUTES)
def test_a_bad_beta_is_an_error_and_the_op_works_after(route_name):
    arrays = _inputs(5, 4, 2, "bernoulli", np.float32)
    fn = jax.jit(functools.partial(_xla.elbo_loss_and_grads, route_name=route_name))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"beta must be in \[0"):
        jax.block_until_ready(fn(jnp.float32(-1.0), *arrays))
    with pytest.raises(jax.errors.JaxRuntimeError, match="beta must be finite"):
        jax.block_until_ready(fn(jnp.float32(np.inf), *arrays))
    assert isinstance(_xla.last_error[0], ValueError)
    seen, hook = [], _xla._error_hook[0]   # fastvae/jax.py's, if it was imported: put back
    _xla.set_error_hook(seen.append)           # what fastvae/jax.py's eager path re-raises
    try:
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"ValueError: beta must be in"):
            jax.block_until_ready(fn(jnp.float32(-2.0), *arrays))
    finally:
        _xla.set_error_hook(hook)
    assert len(seen) == 1 and "beta must be in" in str(seen[0])
    _same_bits(fn(jnp.float32(1.0), *arrays)[0], np.float32(ops.elbo_loss_and_grads(*arrays)[0]),
               "loss after an error")


@pytest.mark.parametrize("op", ["elbo_loss_and_grads", "elbo_forward", "elbo_loss"])
@pytest.mark.parametrize("route_name", FFI_ROUTES)
def test_a_kernel_error_reaches_the_caller_with_its_message(route_name, op):
    arrays = _inputs(40, 9, 2, "bernoulli", np.float32)
    arrays[0][33, 4] = 1.5                  # a row in the second tile
    fn = jax.jit(functools.partial(getattr(_xla, op), route_name=route_name))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"row 33, column 4, outside \[0, 1\]"):
        jax.block_until_ready(fn(jnp.float32(1.0), *arrays))
    arrays[0][33, 4] = np.nan
    with pytest.raises(jax.errors.JaxRuntimeError, match="not a number"):
        jax.block_until_ready(fn(jnp.float32(1.0), *arrays))


def test_callback_dispatches_fastvae_jax_host_functions():
    """_xla.callback on fastvae/jax.py's host functions gives what they give, bit for bit."""
    fvj = pytest.importorskip("fastvae.jax")
    hosts = [getattr(fvj, name) for name in ("_host_elbo_loss_and_grads", "_host_elbo_loss",
                                             "_host_elbo_forward") if hasattr(fvj, name)]
    if not hosts or not FFI_ROUTES:
        pytest.skip("fastvae.jax has no _host_elbo_* functions here, or no FFI route")

    def fallback(*a):
        raise AssertionError("took the fallback")
    for likelihood in ["bernoulli", "gaussian"]:
        arrays = [jnp.asarray(a) for a in _inputs(37, 13, 3, likelihood, np.float32)]
        args = (jnp.float32(0.8), *arrays)
        for host in hosts:
            host_fn = functools.partial(host, likelihood=likelihood)
            got = jax.jit(lambda *a, f=host_fn: _xla.callback(f, None, *a,
                                                              fallback=fallback))(*args)
            want = host_fn(*(np.asarray(a) for a in args))
            assert len(got) == len(want)
            for g, w in zip(got, want):
                _same_bits(g, w, f"{host.__name__} {likelihood}")


# ---------------------------------------------------------------------------------------------
# IWAE (fvj.iwae_loss's host functions) on route ffi-numba
# ---------------------------------------------------------------------------------------------
IWAE_SIZES = [(3, 5, 131, 7), (70, 3, 9, 2), (1, 1, 1, 1), (9, 2, 1100, 3)]  # 70: 18 blocks;
# D = 1100: two SUM_BLOCK blocks of the float32 sums


def _iwae_inputs(n, k, d, l, likelihood, dtype):
    """Never zero: x in (0.02, 0.98) or normal, the rest normal (no exact zeros)."""
    x = RNG.uniform(0.02, 0.98, (n, d)) if likelihood == "bernoulli" else RNG.normal(0, 2, (n, d))
    arrays = [x, RNG.normal(0, 2, (n, k, d)), RNG.normal(0, 1, (n, l)), RNG.normal(0, 1, (n, l)),
              RNG.normal(0, 1, (n, k, l))]
    arrays += [RNG.normal(0, 0.5, d)] if likelihood == "gaussian" else []
    return [a.astype(dtype) for a in arrays]


def _iwae_hosts(likelihood):
    fvj = pytest.importorskip("fastvae.jax")
    return (functools.partial(fvj._host_iwae_loss, likelihood=likelihood),
            functools.partial(fvj._host_iwae_loss_and_grads, likelihood=likelihood), fvj)


def _iwae_shapes(op, arrays):
    return tuple(_xla._iwae_out_types(op, arrays))


def _no_fallback(*a):
    raise AssertionError("took the fallback")


needs_ffi_numba = pytest.mark.skipif("ffi-numba" not in ROUTES, reason="no FFI route here")


@needs_ffi_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n,k,d,l", IWAE_SIZES)
def test_iwae_ffi_equals_pure_callback_bit_for_bit(n, k, d, l, likelihood, dtype):
    host_loss, host_grads, fvj = _iwae_hosts(likelihood)
    arrays = _iwae_inputs(n, k, d, l, likelihood, dtype)
    dloss = RNG.normal(0, 1, n).astype(dtype)
    with jax.enable_x64(dtype == np.float64):
        jarrays = [jnp.asarray(a) for a in arrays]
        jd = jnp.asarray(dloss)
        for host, op, args in [(host_loss, "iwae_loss", jarrays),
                               (host_grads, "iwae_grads", [jd] + jarrays)]:
            shapes = _iwae_shapes(op, jarrays)
            got = jax.jit(lambda *a: _xla.callback(host, shapes, *a, fallback=_no_fallback))(
                *args)
            want = jax.jit(lambda *a: fvj._pure_callback(host, shapes, *a))(*args)
            assert len(got) == len(want) == len(shapes)
            for i, (g, w) in enumerate(zip(got, want)):
                _same_bits(g, w, f"{op} output {i}")


@needs_ffi_numba
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_iwae_ops_under_vmap_equal_a_loop_and_the_pure_callback_route(likelihood):
    batches = [_iwae_inputs(3, 5, 131, 7, likelihood, np.float32) for _ in range(3)]
    if likelihood == "gaussian":
        for b in batches:
            b[5] = batches[0][5]             # one dec_logvar shared by the batches
    stacked = [np.stack(parts) for parts in zip(*batches)]
    if likelihood == "gaussian":
        stacked[5] = batches[0][5]
    dloss = RNG.normal(0, 1, (3, 3)).astype(np.float32)
    in_axes = (0,) * 5 + ((None,) if likelihood == "gaussian" else ())
    out = {}
    for route_name in ["ffi-numba", "pure_callback"]:
        rows = functools.partial(_xla.iwae_loss_rows, likelihood=likelihood,
                                 route_name=route_name)
        grads = functools.partial(_xla.iwae_loss_and_grads, likelihood=likelihood,
                                  route_name=route_name)
        out[route_name] = (jax.jit(jax.vmap(rows, in_axes=in_axes))(*stacked),
                           jax.jit(jax.vmap(grads, in_axes=(0,) + in_axes))(dloss, *stacked))
        for i, arrays in enumerate(batches):      # the vmapped call is a loop of calls
            _same_bits(out[route_name][0][i], jax.jit(rows)(*arrays), f"{route_name} rows")
            for j, (g, w) in enumerate(zip(out[route_name][1], jax.jit(grads)(dloss[i],
                                                                              *arrays))):
                _same_bits(g[i], w, f"{route_name} output {j}")
    for g, w in zip(jax.tree.leaves(out["ffi-numba"]), jax.tree.leaves(out["pure_callback"])):
        _same_bits(g, w, "vmapped ffi-numba vs pure_callback")


@needs_ffi_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fvj_iwae_loss_value_and_grad_equal_the_pure_callback_route(reduction, likelihood, dtype,
                                                                     monkeypatch):
    """fvj.iwae_loss, jitted value_and_grad (and vmapped), FFI route vs pure_callback route."""
    fvj = pytest.importorskip("fastvae.jax")
    arrays = _iwae_inputs(3, 5, 131, 7, likelihood, dtype)
    dec_logvar = arrays[5] if likelihood == "gaussian" else None

    def loss(x, dec_out, mu, logvar, eps, dec_logvar):
        out = fvj.iwae_loss(x, dec_out, mu, logvar, eps, likelihood=likelihood,
                            dec_logvar=dec_logvar, reduction=reduction)
        return jnp.sum(out * jnp.arange(1, out.size + 1, dtype=out.dtype))   # any cotangent

    def run():
        with jax.enable_x64(dtype == np.float64):
            argnums = (0, 1, 2, 3, 4) + ((5,) if dec_logvar is not None else ())
            fn = jax.jit(jax.value_and_grad(loss, argnums=argnums))
            out = fn(*arrays[:5], dec_logvar)
            vm = jax.jit(jax.vmap(loss, in_axes=(0, 0, 0, 0, 0, None)))(
                *(np.stack([a, a * dtype(0.5)]) for a in arrays[:5]), dec_logvar)
            return jax.tree.map(np.asarray, (out, vm))
    fvj._iwae_fn.cache_clear()
    got = run()
    fvj._iwae_fn.cache_clear()
    monkeypatch.setattr(fvj, "_callback", fvj._pure_callback)
    want = run()
    fvj._iwae_fn.cache_clear()
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        _same_bits(g, w, f"leaf {i}")


@needs_ffi_numba
@pytest.mark.parametrize("op", ["iwae_loss_rows", "iwae_loss_and_grads"])
def test_iwae_bad_bernoulli_x_is_an_error_and_the_op_works_after(op):
    arrays = _iwae_inputs(40, 3, 9, 2, "bernoulli", np.float32)
    dloss = [RNG.normal(0, 1, 40).astype(np.float32)] if op == "iwae_loss_and_grads" else []
    fn = jax.jit(functools.partial(getattr(_xla, op), route_name="ffi-numba"))
    arrays[0][33, 4] = 1.5                  # a row in block 8
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"row 33, column 4, outside \[0, 1\]"):
        jax.block_until_ready(fn(*dloss, *arrays))
    assert isinstance(_xla.last_error[0], ValueError)
    arrays[0][33, 4] = np.nan
    with pytest.raises(jax.errors.JaxRuntimeError, match="not a number"):
        jax.block_until_ready(fn(*dloss, *arrays))
    arrays[0][33, 4] = 0.5
    got = fn(*dloss, *arrays)
    want = jax.jit(functools.partial(getattr(_xla, op), route_name="pure_callback"))(*dloss,
                                                                                    *arrays)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _same_bits(g, w, "after an error")


@needs_ffi_numba
def test_fvj_iwae_loss_bad_x_reaches_the_user():
    fvj = pytest.importorskip("fastvae.jax")
    arrays = _iwae_inputs(6, 3, 5, 2, "bernoulli", np.float32)
    arrays[0][4, 1] = -0.25
    with pytest.raises(ValueError, match=r"row 4, column 1, outside \[0, 1\]"):   # eagerly
        fvj.iwae_loss(*arrays)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"row 4, column 1, outside \[0, 1\]"):
        jax.block_until_ready(jax.jit(jax.grad(fvj.iwae_loss, argnums=1))(*arrays))


# ---------------------------------------------------------------------------------------------
# reparameterize (fvj.reparameterize's host functions) on route ffi-numba
# ---------------------------------------------------------------------------------------------
REPARAM_SIZES = [(3, 7), (1, 1), (1200, 7)]   # 8400 elements: 3 pieces of PARALLEL_PIECE


def _words(v):
    return jnp.asarray([v & 0xFFFFFFFF, v >> 32], jnp.uint32)


@needs_ffi_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,l", REPARAM_SIZES)
def test_reparam_ffi_equals_pure_callback_bit_for_bit(n, l, dtype):
    fvj = pytest.importorskip("fastvae.jax")
    with jax.enable_x64(dtype == np.float64):
        mu, lv, dz = (jnp.asarray(RNG.normal(0, 1, (n, l)).astype(dtype)) for _ in range(3))
        for seed, offset in [(123456789 + (987 << 32), 4097 + (3 << 32)), (5, 0)]:
            words = (_words(seed), _words(offset))
            for host, args in [(fvj._host_z, (mu, lv)), (fvj._host_dlogvar, (dz, mu, lv))]:
                shapes = fvj._like(mu)
                got = jax.jit(lambda *a: _xla.callback(host, shapes, *a,
                                                       fallback=_no_fallback))(*args, *words)
                want = jax.jit(lambda *a: fvj._pure_callback(host, shapes, *a))(*args, *words)
                _same_bits(got[0], want[0], host.__name__)


@needs_ffi_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fvj_reparameterize_value_and_grad_equal_the_pure_callback_route(dtype, monkeypatch):
    """fvj.reparameterize under jit (key and traced seed/offset), grad and vmap over keys."""
    fvj = pytest.importorskip("fastvae.jax")
    mu, lv = (RNG.normal(0, 1, (5, 7)).astype(dtype) for _ in range(2))
    weights = RNG.normal(0, 1, (5, 7)).astype(dtype)

    def loss(mu, lv, key):
        return jnp.sum(fvj.reparameterize(mu, lv, key=key) ** 2 * weights)

    def loss_seed(mu, lv, seed, offset):
        return jnp.sum(fvj.reparameterize(mu, lv, seed=seed, offset=offset) * weights)

    def run():
        with jax.enable_x64(dtype == np.float64):
            keys = jax.random.split(jax.random.key(3), 4)
            a = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(mu, lv, keys[0])
            b = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, None, 0)))(
                mu, lv, keys)
            c = jax.jit(jax.value_and_grad(loss_seed, argnums=(0, 1)))(mu, lv, jnp.int32(7),
                                                                        jnp.int32(35))
            return jax.tree.map(np.asarray, (a, b, c))
    got = run()
    monkeypatch.setattr(fvj, "_callback", fvj._pure_callback)
    want = run()
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        _same_bits(g, w, f"leaf {i}")


@needs_ffi_numba
def test_reparam_bad_offset_is_an_error_and_the_op_works_after():
    fvj = pytest.importorskip("fastvae.jax")
    mu, lv = (RNG.normal(0, 1, (4, 3)).astype(np.float32) for _ in range(2))
    fn = jax.jit(lambda mu, lv, offset: fvj.reparameterize(mu, lv, seed=1, offset=offset))
    with pytest.raises(jax.errors.JaxRuntimeError, match="offset"):        # negative, traced
        jax.block_until_ready(fn(mu, lv, jnp.int32(-1)))
    assert isinstance(_xla.last_error[0], ValueError)
    shapes = fvj._like(jnp.asarray(mu))
    near = _words((1 << 62) - 5)                  # offset + size past the stream's indices
    with pytest.raises(jax.errors.JaxRuntimeError):
        jax.block_until_ready(jax.jit(lambda *a: _xla.callback(
            fvj._host_z, shapes, *a, fallback=_no_fallback))(mu, lv, _words(1), near))
    got = fn(mu, lv, jnp.int32(12))
    monkeypatch_free = jax.jit(lambda mu, lv, o: fvj._pure_callback(
        fvj._host_z, shapes, mu, lv, _words(1), o))(mu, lv, _words(12))
    _same_bits(got, monkeypatch_free[0], "z after an error")


def _denormal_inputs():
    """ELBO: a denormal x against a tiny sigmoid (ddec_out denormal); IWAE: denormal mu and eps
    in row 2 (z and dmu denormal in float32)."""
    n, k, d, l = 3, 2, 6, 2
    x = RNG.normal(0, 1, (n, d)).astype(np.float32)
    dec = np.repeat(RNG.normal(0, 1, (n, 1, d)), k, axis=1).astype(np.float32)
    eps = np.repeat(RNG.normal(0, 1, (n, 1, l)), k, axis=1).astype(np.float32)
    mu, lv = (RNG.normal(0, 1, (n, l)).astype(np.float32) for _ in range(2))
    dec_lv = np.zeros(d, np.float32)
    mu[2, 0], eps[2, :, 0] = 1e-39, 1e-40
    xb = RNG.uniform(0.1, 0.9, (n, d)).astype(np.float32)
    xb[1, 2] = 1e-39                                   # denormal
    logits = RNG.normal(0, 1, (n, d)).astype(np.float32)
    logits[1, 2] = -200.0
    return (xb, logits, mu, lv), (x, dec, mu, lv, eps, dec_lv)


@pytest.mark.parametrize("route_name", FFI_ROUTES)
def test_denormals_as_the_pure_callback_route(route_name):
    """XLA's threads flush denormals (FTZ/DAZ), for the pure_callback route's host calls too; the
    FFI routes run in the same environment and agree with it bit for bit (fastvae.ops on a
    NumPy thread keeps denormals: these inputs give some)."""
    elbo_in, iwae_in = _denormal_inputs()
    _, ops_grads = ops.elbo_loss_and_grads(*elbo_in)
    assert 0 < abs(ops_grads[0][1, 2]) < np.finfo(np.float32).tiny
    got, want = (jax.jit(functools.partial(_xla.elbo_loss_and_grads, route_name=r))(
        jnp.float32(1.0), *elbo_in) for r in (route_name, "pure_callback"))
    for g, w in zip(got, want):
        _same_bits(g, w, "elbo")
    if route_name != "ffi-numba":
        return
    dloss = np.full(3, 0.75, np.float32)
    ops_out = _xla._iwae_host("iwae_grads", "gaussian")(dloss, *iwae_in)
    assert 0 < abs(ops_out[3][2, 0]) < np.finfo(np.float32).tiny      # dmu
    got, want = (jax.jit(functools.partial(_xla.iwae_loss_and_grads, likelihood="gaussian",
                                           route_name=r))(dloss, *iwae_in)
                 for r in (route_name, "pure_callback"))
    for i, (g, w) in enumerate(zip(got, want)):
        _same_bits(g, w, f"iwae output {i}")


def _run(code, **env):
    env = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


FALLBACK_CHECK = """
    import numpy as np, jax.numpy as jnp
    from fastvae import _xla, ops
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, (7, 5)).astype(np.float32)
    d, m, v = (rng.normal(0, 1, s).astype(np.float32) for s in [(7, 5), (7, 2), (7, 2)])
    out = _xla.elbo_loss_and_grads(jnp.float32(1.0), x, d, m, v)
    loss, grads = ops.elbo_loss_and_grads(x, d, m, v)
    assert np.asarray(out[0]) == np.float32(loss)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(out[1:], grads))
    print(_xla.route(), "|", _xla.why())
"""


def test_fallback_without_a_compiler(tmp_path):
    out = _run(FALLBACK_CHECK, PATH=str(tmp_path), CXX="", FASTVAE_CACHE_DIR=str(tmp_path))
    route_name, why = out.strip().split(" | ")
    assert route_name == "pure_callback" and "compiler" in why


def test_fallback_when_forced():
    out = _run(FALLBACK_CHECK, FASTVAE_XLA_ROUTE="pure_callback")
    assert out.startswith("pure_callback")
