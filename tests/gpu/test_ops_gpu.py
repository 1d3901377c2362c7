"""fastvae.ops on device arrays: the backend follows the array type, every result stays on the
device, and forward and backward agree with the CPU backend on the same inputs."""
import numpy as np
import pytest

from fastvae import ops

from .helpers import assert_matches_cpu

DTYPES = [np.float32, np.float64]
N, I, O, D, L, K = 37, 29, 23, 45, 7, 13   # awkward sizes: no multiple of a warp or a tile


def _rng():
    return np.random.default_rng(2024)


def _normal(*shape, scale=1.0):
    return _rng().standard_normal(shape) * scale


def _dense_inputs():
    r = _rng()
    return (r.standard_normal((N, I)) * 2, r.standard_normal((I, O)) / np.sqrt(I),
            r.standard_normal(O), r.standard_normal((N, O)))


def _latent_inputs(rows=N):
    r = _rng()
    return r.standard_normal((rows, L)) * 3, r.uniform(-8, 6, (rows, L))   # mu, logvar


def _data_inputs():
    r = _rng()
    x = r.random((N, D))
    x[:, :5] = np.round(x[:, :5])   # exact 0s and 1s too
    return x, r.standard_normal((N, D)) * 12   # x in [0, 1], logits out to +-40


def _dense(act, need_dx):
    def run(x, W, b, dy):
        y, cache = ops.dense_forward(x, W, b, act)
        dx, dW, db = ops.dense_backward(dy, cache, need_dx=need_dx)
        return (y, dW, db) + ((dx,) if need_dx else ())
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["identity", "relu", "tanh", "softplus", "sigmoid"])
def test_dense_forward_and_backward(dev, act, dtype):
    assert_matches_cpu(dev, _dense(act, True), _dense_inputs(), dtype, name=f"dense {act}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_without_dx(dev, dtype):
    run = _dense("relu", False)
    assert_matches_cpu(dev, run, _dense_inputs(), dtype, name="dense need_dx=False")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_with_given_noise(dev, dtype):
    def run(mu, logvar, eps, dz):
        z, cache = ops.reparam_forward(mu, logvar, eps)
        return (z,) + tuple(ops.reparam_backward(dz, cache))
    mu, logvar = _latent_inputs()
    assert_matches_cpu(dev, run, (mu, logvar, _normal(N, L), _normal(N, L)), dtype,
                       name="reparam eps")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reparam_with_philox_noise_draws_the_cpu_samples(dev, dtype):
    """seed/offset: the kernel draws eps itself, the same Philox normals on both devices."""
    def run(mu, logvar, dz):
        z, cache = ops.reparam_forward(mu, logvar, seed=2 ** 40 + 3, offset=11)
        return (z,) + tuple(ops.reparam_backward(dz, cache))
    mu, logvar = _latent_inputs()
    assert_matches_cpu(dev, run, (mu, logvar, _normal(N, L)), dtype, rtol32=2e-6,
                       name="reparam seed")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl(dev, dtype):
    def run(mu, logvar, dkl):
        kl, cache = ops.kl_forward(mu, logvar)
        return (kl,) + tuple(ops.kl_backward(dkl, cache))
    assert_matches_cpu(dev, run, _latent_inputs() + (_normal(N),), dtype, name="kl")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_loglik(dev, dtype):
    def run(x, logits, dll):
        ll, cache = ops.bernoulli_loglik_forward(x, logits)
        return ll, ops.bernoulli_loglik_backward(dll, cache)
    assert_matches_cpu(dev, run, _data_inputs() + (_normal(N),), dtype, name="bernoulli")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_loglik(dev, dtype):
    def run(x, mean, logvar, dll):
        ll, cache = ops.gaussian_loglik_forward(x, mean, logvar)
        return (ll,) + tuple(ops.gaussian_loglik_backward(dll, cache))
    x = _normal(N, D, scale=3)
    inputs = (x, x + _normal(N, D), _rng().uniform(-6, 4, D), _normal(N))
    assert_matches_cpu(dev, run, inputs, dtype, name="gaussian")


def _elbo_inputs(likelihood):
    x, logits = _data_inputs()
    mu, logvar = _latent_inputs()
    dec_logvar = _rng().uniform(-3, 2, D) if likelihood == "gaussian" else None
    return x, logits, mu, logvar, dec_logvar, _normal(N)


def _elbo(likelihood, fused):
    """The ELBO's forward and backward (beta 0.7), or the fused loss and gradients (beta 1.3)."""
    def run(x, dec_out, mu, logvar, dec_logvar, delbo):
        if fused:
            loss, grads = ops.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood=likelihood,
                                                  dec_logvar=dec_logvar, beta=1.3)
            assert isinstance(loss, float), type(loss)
            return (loss,) + tuple(grads)
        elbo, cache = ops.elbo_forward(x, dec_out, mu, logvar, likelihood=likelihood,
                                       dec_logvar=dec_logvar, beta=0.7)
        return (elbo,) + tuple(ops.elbo_backward(delbo, cache))
    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", [False, True], ids=["forward-backward", "fused"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo(dev, likelihood, fused, dtype):
    assert_matches_cpu(dev, _elbo(likelihood, fused), _elbo_inputs(likelihood), dtype,
                       name=f"elbo {likelihood} fused={fused}")


def _log_weights():
    a = _normal(N, K, scale=30)
    a[3] = -np.inf        # an all -inf row: lse -inf, gradient 0
    a[5, ::2] = -np.inf   # a row with some -inf entries
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["logsumexp", "iwae"])
def test_row_reductions_forward_and_backward(dev, op, dtype):
    """logsumexp, and the IWAE estimate with its normalized weights, over rows of K."""
    forward, backward = getattr(ops, f"{op}_forward"), getattr(ops, f"{op}_backward")

    def run(a, dout):
        out, cache = forward(a)
        return out, backward(dout, cache)
    assert_matches_cpu(dev, run, (_log_weights(), _normal(N)), dtype, name=op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_logsumexp_over_two_chunks(dev, dtype):
    def run(a):
        m1, s1 = ops.logsumexp_partial(a[:, :6])
        m2, s2 = ops.logsumexp_partial(a[:, 6:])
        m, s = ops.logsumexp_merge(m1, s1, m2, s2)
        return m, s, ops.logsumexp_finalize(m, s)
    assert_matches_cpu(dev, run, (_log_weights(),), dtype, name="streaming logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_log_weight_forward_and_backward(dev, likelihood, dtype):
    def run(x, dec_out, mu, logvar, eps, dec_logvar, dlogw):
        logw, cache = ops.log_weight_forward(x, dec_out, mu, logvar, eps, likelihood=likelihood,
                                             dec_logvar=dec_logvar)
        return (logw,) + tuple(ops.log_weight_backward(dlogw, cache))
    x, logits = _data_inputs()
    dec_out = logits[:, None, :] + _normal(N, K, D)
    mu, logvar = _latent_inputs()
    dec_logvar = _rng().uniform(-3, 2, D) if likelihood == "gaussian" else None
    inputs = (x, dec_out, mu, logvar, _normal(N, K, L), dec_logvar, _normal(N, K))
    assert_matches_cpu(dev, run, inputs, dtype, name=f"log_weight {likelihood}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_in_place(dev, dtype):
    """Three steps in place on device buffers equal three steps on NumPy buffers."""
    def run(param, grad, m, v):
        param, m, v = param.copy(), m.copy(), v.copy()
        for step in (1, 2, 3):
            ops.adam_update(param, grad * step, m, v, step=step, lr=3e-3)
        return param, m, v
    r = _rng()
    inputs = (r.standard_normal(1031), r.standard_normal(1031) * 1e3,
              r.standard_normal(1031) * 1e-2, r.random(1031))
    assert_matches_cpu(dev, run, inputs, dtype, name="adam")


@pytest.mark.parametrize("op", ["kl_forward", "dense_forward"])
def test_mixing_device_and_host_arrays_is_refused(dev, op):
    mu, logvar = _latent_inputs()
    args = {"kl_forward": (dev.put(mu), logvar),
            "dense_forward": (dev.put(mu), np.ones((L, 3)), dev.put(np.ones(3)))}[op]
    with pytest.raises(TypeError, match="cannot mix CuPy and NumPy"):
        getattr(ops, op)(*args)


def test_a_cache_from_the_device_takes_a_host_gradient_only_after_a_copy(dev):
    """A backward on the device refuses a NumPy upstream gradient instead of reading it wrongly."""
    mu, logvar = _latent_inputs()
    _, cache = ops.kl_forward(*dev.put(mu, logvar))
    with pytest.raises(TypeError, match="dkl is a NumPy array, but kl_forward ran on a CUDA"):
        ops.kl_backward(np.ones(N), cache)
