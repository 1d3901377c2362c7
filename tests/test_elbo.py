"""fastvae.cpu.elbo against fastvae/_reference.py: per-row ELBO forward/backward, the fused
loss-and-gradients pass, extremes, NaN propagation, and finite differences of the reference."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import elbo, loglik
from tests.helpers import check3, check_backward

SIZES = [(1, 1, 1), (31, 257, 5), (257, 31, 20), (4099, 7, 3), (128, 784, 20)]   # (N, D, L)
LIKELIHOODS = ("bernoulli", "gaussian")


def elbo_inputs(rng, n, d, l, likelihood):
    """(x, dec_out, mu, logvar, dec_logvar or None) and a random upstream delbo (N,)."""
    if likelihood == "bernoulli":
        x, dec_out, dec_logvar = rng.random((n, d)), 3 * rng.standard_normal((n, d)), None
    else:
        x = rng.standard_normal((n, d))
        dec_out, dec_logvar = x + 0.5 * rng.standard_normal((n, d)), rng.standard_normal(d)
    mu, logvar = rng.standard_normal((n, l)), rng.standard_normal((n, l))
    return (x, dec_out, mu, logvar, dec_logvar), rng.standard_normal(n)


def fast_elbo(x, dec_out, mu, logvar, likelihood, dec_logvar, beta, delbo):
    out, cache = elbo.elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    return (out,) + elbo.elbo_backward(delbo, cache)


def ref_elbo(x, dec_out, mu, logvar, likelihood, dec_logvar, beta, delbo):
    out, cache = ref.elbo_forward(x, dec_out, mu, logvar, likelihood, dec_logvar, beta)
    return (out,) + ref.elbo_backward(delbo, cache)


def fast_fused(*args):
    loss, grads = elbo.elbo_loss_and_grads(*args)
    assert isinstance(loss, float)
    return (np.array([loss], dtype=grads[0].dtype),) + grads   # dtype: for check3's dtype check


def ref_fused(*args):
    loss, grads = ref.elbo_loss_and_grads(*args)
    return (np.array([loss]),) + grads


def _args(arrays, likelihood, beta):
    x, dec_out, mu, logvar, dec_logvar = arrays
    return (x, dec_out, mu, logvar, likelihood, dec_logvar, beta)


@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", SIZES)
def test_elbo_forward_backward_match_reference(shape, likelihood, beta):
    arrays, delbo = elbo_inputs(np.random.default_rng(1), *shape, likelihood)
    check3(fast_elbo, ref_elbo, _args(arrays, likelihood, beta) + (delbo,), name="elbo")


@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", SIZES)
def test_loss_and_grads_match_reference(shape, likelihood, beta):
    arrays, _ = elbo_inputs(np.random.default_rng(2), *shape, likelihood)
    check3(fast_fused, ref_fused, _args(arrays, likelihood, beta), name="fused")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_loss_and_grads_equal_forward_then_backward(likelihood, dtype):
    """The fused pass equals elbo_forward + elbo_backward(-1/N) up to rounding (the fused pass
    keeps -1/N and beta * (-1/N) in float64; the separate path rounds them to dtype)."""
    arrays, _ = elbo_inputs(np.random.default_rng(3), 200, 300, 20, likelihood)
    args = tuple(a.astype(dtype) if a is not None else None for a in arrays)
    args = _args(args, likelihood, 0.25)
    loss, grads = elbo.elbo_loss_and_grads(*args)
    out, cache = elbo.elbo_forward(*args)
    separate = elbo.elbo_backward(np.full(200, -1.0 / 200, dtype=dtype), cache)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, -np.mean(out.astype(np.float64)), rtol=rtol)
    assert len(grads) == len(separate)
    for a, b in zip(grads, separate):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_extremes(likelihood):
    """logits +-1e4, decoder logvar +-30, posterior logvar +-30, mu +-1e3."""
    rng = np.random.default_rng(4)
    (x, dec_out, mu, logvar, dec_logvar), delbo = elbo_inputs(rng, 64, 129, 20, likelihood)
    if likelihood == "bernoulli":
        dec_out[rng.random(dec_out.shape) < 0.3] = 1e4
        dec_out[rng.random(dec_out.shape) < 0.3] = -1e4
    else:
        dec_logvar[::3], dec_logvar[1::3] = 30.0, -30.0
    logvar[rng.random(logvar.shape) < 0.2] = 30.0
    logvar[rng.random(logvar.shape) < 0.2] = -30.0
    mu[rng.random(mu.shape) < 0.2] = -1e3
    mu[rng.random(mu.shape) < 0.1] = 1e3
    args = _args((x, dec_out, mu, logvar, dec_logvar), likelihood, 0.25)
    check3(fast_elbo, ref_elbo, args + (delbo,), name="elbo extreme")
    check3(fast_fused, ref_fused, args, name="fused extreme")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_nonfinite_inputs(likelihood):
    """A NaN in one row of dec_out or logvar makes that row's ELBO (and the loss) NaN; the
    gradients' NaN placement is the reference's."""
    rng = np.random.default_rng(5)
    (x, dec_out, mu, logvar, dec_logvar), delbo = elbo_inputs(rng, 9, 33, 4, likelihood)
    dec_out[2, 7] = np.nan
    logvar[5, 1] = np.nan
    mu[6, 2] = np.inf
    args = _args((x, dec_out, mu, logvar, dec_logvar), likelihood, 1.0)
    check3(fast_elbo, ref_elbo, args + (delbo,), name="elbo nonfinite")
    check3(fast_fused, ref_fused, args, name="fused nonfinite")
    out = elbo.elbo_forward(*args)[0]
    assert np.isnan(out[[2, 5]]).all() and out[6] == -np.inf
    assert np.isfinite(np.delete(out, [2, 5, 6])).all()
    assert np.isnan(elbo.elbo_loss_and_grads(*args)[0])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_fused_serial_kernel_and_pool_tiles_agree(likelihood):
    """Bit-identical: rows are independent and the ddec_logvar row blocks depend on N only."""
    from fastvae import _threads
    rng = np.random.default_rng(6)
    (x, dec_out, mu, logvar, dec_logvar), _ = elbo_inputs(rng, 67, 129, 20, likelihood)
    x, dec_out, mu, logvar = (a.astype(np.float32) for a in (x, dec_out, mu, logvar))
    outs = []
    pool = _threads.Pool(3)
    try:
        for on_pool in (False, True):
            out = [np.empty(67), np.empty_like(dec_out), np.empty_like(mu), np.empty_like(logvar)]
            if likelihood == "bernoulli":
                out.insert(1, np.empty(67, dtype=np.bool_))   # bad-x flags, compared too
                args = (*out, x, dec_out, mu, logvar, -1.0 / 67, 0.5)
                kernel, tiles = (elbo.elbo_bernoulli_loss_grads_kernel,
                                 elbo.elbo_bernoulli_loss_grads_tiles)
                n_tiles, extra = -(-67 // 7), (7,)   # 7-row tiles: 10 tiles for 3 threads
            else:
                dec_logvar = dec_logvar.astype(np.float32)
                out.insert(2, np.zeros((loglik.row_blocks(67), 129)))
                args = (*out, x, dec_out, mu, logvar, dec_logvar,
                        loglik.gaussian_inv_var(dec_logvar), -1.0 / 67, 0.5)
                kernel, tiles = (elbo.elbo_gaussian_loss_grads_kernel,
                                 elbo.elbo_gaussian_loss_grads_tiles)
                n_tiles, extra = out[2].shape[0], ()
            if on_pool:
                pool.run(_threads.Phase(n_tiles, lambda c, n: tiles(c, n, *args, *extra)))
            else:
                kernel(*args)
            outs.append(out)
    finally:
        pool.close()
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_reference_elbo_backward_finite_differences(likelihood):
    rng = np.random.default_rng(7)
    (x, dec_out, mu, logvar, dec_logvar), _ = elbo_inputs(rng, 6, 11, 4, likelihood)
    wrt = (1, 2, 3) if likelihood == "bernoulli" else (1, 2, 3, 5)
    check_backward(ref.elbo_forward, ref.elbo_backward,
                   [x, dec_out, mu, logvar, likelihood, dec_logvar, 0.25], wrt=wrt, rng=rng)


def test_the_launcher_asserts_rows_for_the_mean_loss():
    # the launcher contract (fastvae/cuda/__init__.py): fastvae.ops refuses empty arrays, and a
    # launcher asserts what it relies on; here the mean over no rows (was 1/0)
    z = np.ones((0, 3), np.float32)
    with pytest.raises(AssertionError, match="no rows"):
        elbo.elbo_loss_and_grads(z, z, z, z)
