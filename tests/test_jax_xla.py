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
    seen = []
    _xla.set_error_hook(seen.append)           # what fastvae/jax.py's eager path re-raises
    try:
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"ValueError: beta must be in"):
            jax.block_until_ready(fn(jnp.float32(-2.0), *arrays))
    finally:
        _xla.set_error_hook(None)
    assert len(seen) == 1 and "beta must be in" in str(seen[0])
    _same_bits(fn(jnp.float32(1.0), *arrays)[0], np.float32(ops.elbo_loss_and_grads(*arrays)[0]),
               "loss after an error")


def _kernel_checks_x():
    x = np.full((2, 3), 0.5, np.float32)
    x[1, 2] = 1.5
    try:
        ops.elbo_loss_and_grads(x, x, x[:, :1], x[:, :1])
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("op", ["elbo_loss_and_grads", "elbo_forward", "elbo_loss"])
@pytest.mark.parametrize("route_name", FFI_ROUTES)
def test_a_kernel_error_reaches_the_caller_with_its_message(route_name, op):
    if _kernel_checks_x() is None:
        pytest.skip("this checkout's Bernoulli kernel does not check x")
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
