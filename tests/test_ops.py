"""The public API: validation errors, dtype and layout handling, backend dispatch.

Numerical correctness of each kernel is in tests/test_<op>.py; here every op is called through
fastvae.ops once with good input and compared with the reference, then with each kind of bad input.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae import ops

from .helpers import assert_close3

RNG = np.random.default_rng(20261124)
N, D, L, K, I, O = 5, 7, 3, 4, 6, 9


def _r(*shape, dtype=np.float32, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(dtype)


def _unit(*shape):
    return RNG.uniform(0.05, 0.95, shape).astype(np.float32)


# Each entry: name -> (ops call, reference call) on the same inputs.
def _good_calls():
    x, W, b = _r(N, I), _r(I, O), _r(O)
    mu, lv, eps = _r(N, L), _r(N, L), _r(N, L)
    xd, logits, dlv = _unit(N, D), _r(N, D, scale=3), _r(D)
    dec3, eps3, logw = _r(N, K, D, scale=3), _r(N, K, L), _r(N, K, scale=10)
    xk = _unit(N, D)
    return {
        "dense": (lambda: ops.dense_forward(x, W, b, "tanh")[0],
                  lambda f: ref.dense_forward(*f(x, W, b), "tanh")[0]),
        "reparam": (lambda: ops.reparam_forward(mu, lv, eps)[0],
                    lambda f: ref.reparam_forward(*f(mu, lv, eps))[0]),
        "kl": (lambda: ops.kl_forward(mu, lv)[0], lambda f: ref.kl_forward(*f(mu, lv))[0]),
        "bernoulli": (lambda: ops.bernoulli_loglik_forward(xd, logits)[0],
                      lambda f: ref.bernoulli_loglik_forward(*f(xd, logits))[0]),
        "gaussian": (lambda: ops.gaussian_loglik_forward(xd, logits, dlv)[0],
                     lambda f: ref.gaussian_loglik_forward(*f(xd, logits, dlv))[0]),
        "elbo": (lambda: ops.elbo_forward(xd, logits, mu, lv, beta=0.5)[0],
                 lambda f: ref.elbo_forward(*f(xd, logits, mu, lv), beta=0.5)[0]),
        "logsumexp": (lambda: ops.logsumexp_forward(logw)[0],
                      lambda f: ref.logsumexp_forward(*f(logw))[0]),
        "iwae": (lambda: ops.iwae_forward(logw)[0], lambda f: ref.iwae_forward(*f(logw))[0]),
        "log_weight": (lambda: ops.log_weight_forward(xk, dec3, mu, lv, eps3)[0],
                       lambda f: ref.log_weight_forward(*f(xk, dec3, mu, lv, eps3))[0]),
    }


@pytest.mark.parametrize("name", sorted(_good_calls()))
def test_each_op_through_the_public_api_matches_the_reference(name):
    call, reference = _good_calls()[name]
    out = call()
    assert out.dtype == np.float32
    to = lambda dtype: (lambda *arrays: [np.asarray(a, dtype) for a in arrays])  # noqa: E731
    assert_close3(out, reference(to(np.float32)), reference(to(np.float64)), atol=1e-5,
                  name=name)


def test_non_contiguous_inputs_give_the_same_result():
    x, W, b = _r(2 * N, I), _r(O, I).T, _r(2 * O)[::2]
    assert not (x[::2].flags.c_contiguous or W.flags.c_contiguous or b.flags.c_contiguous)
    y, _ = ops.dense_forward(x[::2], W, b, "relu")
    y_ref, _ = ops.dense_forward(x[::2].copy(), W.copy(), b.copy(), "relu")
    np.testing.assert_array_equal(y, y_ref)


def test_mixed_float32_and_float64_compute_in_float64():
    mu, lv = _r(N, L), _r(N, L, dtype=np.float64)
    kl, _ = ops.kl_forward(mu, lv)
    assert kl.dtype == np.float64
    np.testing.assert_allclose(kl, ref.kl_forward(mu.astype(np.float64), lv)[0], rtol=1e-12)


def test_float16_is_widened_to_float32_and_lists_are_accepted():
    kl, _ = ops.kl_forward(_r(N, L).astype(np.float16), _r(N, L).astype(np.float16))
    assert kl.dtype == np.float32
    kl, _ = ops.kl_forward(_r(N, L).tolist(), _r(N, L).tolist())   # Python floats: float64
    assert kl.dtype == np.float64


@pytest.mark.parametrize("bad, kind", [(np.ones((N, L), np.int64), "integer"),
                                       (np.ones((N, L), np.complex64), "complex"),
                                       (np.ones((N, L), bool), "boolean")])
def test_non_float_dtypes_are_refused_naming_the_argument(bad, kind):
    with pytest.raises(TypeError, match=f"logvar must be a floating array.*{kind}"):
        ops.kl_forward(_r(N, L), bad)


def test_wrong_rank_is_refused_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"x must be 2-D with shape \(N, I\), got shape \(6,\)"):
        ops.dense_forward(_r(I), _r(I, O), _r(O))


@pytest.mark.parametrize("call, message", [
    (lambda: ops.dense_forward(_r(N, I), _r(I + 1, O), _r(O)), "mismatch on I"),
    (lambda: ops.dense_forward(_r(N, I), _r(I, O), _r(O + 2)), "mismatch on O"),
    (lambda: ops.kl_forward(_r(N, L), _r(N + 1, L)), "mismatch on N"),
    (lambda: ops.log_weight_forward(_unit(N, D), _r(N, K, D), _r(N, L), _r(N, L),
                                    _r(N, K + 1, L)), "mismatch on K"),
    (lambda: ops.gaussian_loglik_forward(_unit(N, D), _r(N, D), _r(D + 1)), "mismatch on D"),
])
def test_mismatched_shapes_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: ops.kl_forward(np.ones((0, L), np.float32), np.ones((0, L), np.float32)), "mu"),
    (lambda: ops.logsumexp_forward(np.ones((N, 0), np.float32)), "a"),
    (lambda: ops.iwae_forward(np.ones((N, 0), np.float32)), "logw"),
])
def test_empty_rows_and_k_below_one_are_refused(call, name):
    with pytest.raises(ValueError, match=f"{name} must not be empty.*>= 1"):
        call()


def test_scalar_and_choice_arguments_are_checked():
    x, W, b = _r(N, I), _r(I, O), _r(O)
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.dense_forward(x, W, b, "gelu")
    xd, logits, mu, lv = _unit(N, D), _r(N, D), _r(N, L), _r(N, L)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        ops.elbo_forward(xd, logits, mu, lv, likelihood="poisson")
    with pytest.raises(ValueError, match="needs dec_logvar"):
        ops.elbo_forward(xd, logits, mu, lv, likelihood="gaussian")
    with pytest.raises(ValueError, match="only used with likelihood='gaussian'"):
        ops.elbo_forward(xd, logits, mu, lv, dec_logvar=_r(D))
    with pytest.raises(ValueError, match="beta must be in"):
        ops.elbo_forward(xd, logits, mu, lv, beta=-1.0)
    with pytest.raises(ValueError, match="exactly one of eps"):
        ops.reparam_forward(mu, lv)
    with pytest.raises(ValueError, match="seed must be in"):
        ops.reparam_forward(mu, lv, seed=-1)


def test_backward_checks_its_cache_and_upstream_gradient():
    mu, lv = _r(N, L), _r(N, L)
    _, cache = ops.kl_forward(mu, lv)
    with pytest.raises(ValueError, match=r"dkl must have the forward output's shape \(5,\)"):
        ops.kl_backward(_r(N + 1), cache)
    with pytest.raises(TypeError, match="cache must be the second result of kl_forward"):
        ops.kl_backward(_r(N), ("not", "a", "cache"))
    _, other = ops.logsumexp_forward(_r(N, K))
    with pytest.raises(TypeError, match="from logsumexp_forward"):
        ops.kl_backward(_r(N), other)


def test_adam_updates_in_place_and_refuses_what_it_cannot_update():
    param, m, v = _r(50), np.zeros(50, np.float32), np.zeros(50, np.float32)
    m[:] = _r(50) * 0.1
    v[:] = np.abs(_r(50)) * 0.1
    grad = _r(50)
    expected = ref.adam_update(param.astype(np.float64), grad.astype(np.float64),
                               m.astype(np.float64), v.astype(np.float64), step=3, lr=1e-2)
    before = param.ctypes.data
    ops.adam_update(param, grad, m, v, step=3, lr=1e-2)
    assert param.ctypes.data == before
    for got, want in zip((param, m, v), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    with pytest.raises(ValueError, match="param must be a writable C-contiguous"):
        ops.adam_update(_r(100)[::2], grad, m, v, step=1)
    with pytest.raises(ValueError, match="step must be in"):
        ops.adam_update(param, grad, m, v, step=0)
    with pytest.raises(ValueError, match="m must match param"):
        ops.adam_update(param, grad, m.astype(np.float64), v, step=1)


class _FakeCupyArray(np.ndarray):
    """Stands in for a CuPy array: the backend is chosen from the type's module."""
    __module__ = "cupy._core.core"


def test_mixing_cupy_and_numpy_is_refused():
    fake = np.ones((N, L), np.float32).view(_FakeCupyArray)
    with pytest.raises(TypeError, match="cannot mix CuPy and NumPy"):
        ops.kl_forward(fake, _r(N, L))


def test_nan_input_gives_nan_rows_not_wrong_numbers():
    mu, lv = _r(N, L), _r(N, L)
    mu[2, 1] = np.nan
    lv[3, 0] = np.inf
    kl, _ = ops.kl_forward(mu, lv)
    # logvar = +inf: exp(lv) - lv is inf - inf in the reference too, so NaN is the answer
    assert np.isnan(kl[2]) and np.isnan(kl[3]) and np.isfinite(np.delete(kl, [2, 3])).all()
