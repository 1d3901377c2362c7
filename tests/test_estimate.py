"""fastvae.log_likelihood over any encoder and decoder (fastvae/callables.py), and what the
evaluation reports (fastvae/eval.py::Estimate): the same numbers as a fastvae.VAE on the same
noise, the effective sample size against the K weights computed all at once, the active units
against the variance of the encoder means, out= files that keep what an interrupted run did.
"""
import math

import numpy as np
import pytest

import fastvae
from fastvae import ops
from fastvae import random as frandom
from fastvae.eval import ACTIVE_UNIT_THRESHOLD, LatentSpread

RNG = np.random.default_rng(20261203)


def _model(likelihood="bernoulli", dtype="float64", seed=4):
    """784 would be slow; awkward small sizes, parameters moved off their init."""
    model = fastvae.VAE(input_dim=37, encoder_dims=(23, 11), decoder_dims=(13,), latent_dim=5,
                        likelihood=likelihood, activation=["tanh", "relu", "softplus"],
                        dtype=dtype, seed=seed)
    model.params.flat[...] += 0.3 * RNG.standard_normal(model.n_params).astype(dtype)
    return model


def _rows(n, likelihood="bernoulli", d=37):
    if likelihood == "bernoulli":
        return (RNG.random((n, d)) < 0.35).astype(np.float64)
    return RNG.normal(0.0, 1.5, (n, d))


def _numpy_callables(model):
    """The model's own kernels as plain NumPy functions (decoder output: logits / means)."""
    return model.encoder_forward, model.decoder_forward


# ---------------------------------------------------------------------------------------------
# the numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("K,max_pairs", [(1, 4096), (7, 20), (300, 128)])
def test_numpy_callables_give_the_vae_numbers_bit_for_bit(likelihood, K, max_pairs):
    model = _model(likelihood)
    x = _rows(29, likelihood)
    encode, decode = _numpy_callables(model)
    got = fastvae.log_likelihood(encode, decode, x, K=K, likelihood=likelihood,
                                 dec_logvar=model.decoder_logvar, seed=model.seed + 2,
                                 max_pairs=max_pairs, dtype="float64", progress=False)
    want = model.log_likelihood(x, K=K, max_pairs=max_pairs, progress=False)
    np.testing.assert_array_equal(got, want)


def test_the_default_seed_is_that_of_an_imported_model():
    model = _model(seed=0)
    x = _rows(5)
    got = fastvae.log_likelihood(*_numpy_callables(model), x, K=11, dtype="float64",
                                 progress=False)
    np.testing.assert_array_equal(got, model.log_likelihood(x, K=11, progress=False))


def _torch_model(torch, dtype):
    """A pytorch/examples-style VAE (one chunk(2) head) and an asymmetric one."""
    nn = torch.nn
    torch.manual_seed(7)
    enc = nn.Sequential(nn.Linear(37, 19), nn.ReLU(), nn.Linear(19, 2 * 6))
    dec = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 21), nn.Softplus(),
                        nn.Linear(21, 37), nn.Sigmoid())
    return enc.to(dtype), dec.to(dtype)


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-10), ("float32", 2e-4)])
def test_torch_callables_give_the_imported_models_estimate(dtype, tolerance):
    torch = pytest.importorskip("torch")
    enc, dec = _torch_model(torch, getattr(torch, dtype))
    imported = fastvae.VAE.from_torch(enc, None, None, dec, dtype=dtype)
    logits = dec[:-1]                     # the estimator takes logits: drop the final Sigmoid
    x = _rows(41)
    got = fastvae.log_likelihood(lambda x: enc(x).chunk(2, dim=1), logits, x, K=257,
                                 inputs="torch", dtype=dtype, max_pairs=500, progress=False)
    want = imported.log_likelihood(x, K=257, max_pairs=500, progress=False)
    assert np.all(np.isfinite(want)) and want.std() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * np.abs(want).max())


def test_jax_callables_of_flax_style_params_give_the_imported_models_estimate():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    params = {"enc": [(RNG.normal(0, 0.4, (37, 15)), RNG.normal(0, 0.1, 15))],
              "mu": (RNG.normal(0, 0.4, (15, 4)), RNG.normal(0, 0.1, 4)),
              "logvar": (RNG.normal(0, 0.2, (15, 4)), RNG.normal(0, 0.1, 4)),
              "dec": [(RNG.normal(0, 0.4, (4, 15)), RNG.normal(0, 0.1, 15)),
                      (RNG.normal(0, 0.4, (15, 37)), RNG.normal(0, 0.1, 37))]}
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    imported = fastvae.VAE.from_arrays(params["enc"], params["dec"], mu=params["mu"],
                                       logvar=params["logvar"], activation="tanh")

    def encode(x):
        h = jnp.tanh(x @ params["enc"][0][0] + params["enc"][0][1])
        return tuple(h @ w + b for w, b in (params["mu"], params["logvar"]))

    def decode(z):
        (w1, b1), (w2, b2) = params["dec"]
        return jnp.tanh(z @ w1 + b1) @ w2 + b2

    x = _rows(17)
    got = fastvae.log_likelihood(encode, jax.jit(decode), x, K=100, inputs="jax",
                                 progress=False)
    want = imported.log_likelihood(x, K=100, progress=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())


def test_a_memmap_larger_than_one_chunk_is_streamed(tmp_path):
    model = _model("bernoulli", "float32")
    x = _rows(23).astype(np.float32)
    path = tmp_path / "x.dat"
    mapped = np.memmap(path, np.float32, "w+", shape=x.shape)
    mapped[...] = x
    mapped.flush()
    rows = np.memmap(path, np.float32, "r", shape=x.shape)
    got = fastvae.log_likelihood(*_numpy_callables(model), rows, K=50, max_pairs=150,
                                 seed=9, progress=False)
    np.testing.assert_array_equal(got, model.log_likelihood(x, K=50, max_pairs=150, seed=9,
                                                            progress=False))


# ---------------------------------------------------------------------------------------------
# what the evaluation reports
# ---------------------------------------------------------------------------------------------
def _all_log_weights(model, x, K, seed):
    """log w (N, K) with every sample at once, through the public ops (the same noise)."""
    n = len(x)
    eps = frandom.normal((n, K, model.latent_dim), seed, 0, model.dtype)
    mu, logvar = model.encoder_forward(x.astype(model.dtype))
    out = model.samples_forward(mu, logvar, eps).reshape(n, K, -1)
    logw, _ = ops.log_weight_forward(x.astype(model.dtype), out, mu, logvar, eps,
                                     likelihood=model.likelihood,
                                     dec_logvar=model.decoder_logvar)
    return np.asarray(logw, dtype=np.float64), mu


@pytest.mark.parametrize("K,max_pairs", [(1, 4096), (64, 4096), (333, 50)])
def test_ess_and_latent_variance_match_a_direct_computation(K, max_pairs):
    model = _model()
    x = _rows(19)
    estimate = model.log_likelihood(x, K=K, seed=5, max_pairs=max_pairs, stats=True,
                                    progress=False)
    logw, mu = _all_log_weights(model, x, K, 5)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    ess = w.sum(axis=1) ** 2 / (w ** 2).sum(axis=1)
    np.testing.assert_allclose(estimate.ess, ess, rtol=1e-9)
    assert np.all((estimate.ess >= 1 - 1e-9) & (estimate.ess <= K + 1e-9))
    if K == 1:
        np.testing.assert_allclose(estimate.ess, 1.0, rtol=1e-12)
    np.testing.assert_allclose(estimate.latent_variance, np.var(mu, axis=0), rtol=1e-9)
    lse = np.log(np.exp(logw - logw.max(1, keepdims=True)).sum(1)) + logw.max(1) - math.log(K)
    np.testing.assert_allclose(estimate.log_likelihood, lse, rtol=1e-12)
    summary = estimate.summary()
    assert summary["log_likelihood"] == pytest.approx(lse.mean(), rel=1e-12)
    assert summary["sem"] == pytest.approx(lse.std(ddof=1) / math.sqrt(len(x)), rel=1e-9)
    assert summary["ess_median"] == pytest.approx(np.median(ess), rel=1e-9)


def test_ess_of_a_degenerate_and_of_an_exact_proposal():
    """q(z|x) the prior and a decoder that ignores z: every weight is p(x | z) = c, ESS = K;
    a decoder so sharp in z that one sample dominates: ESS -> 1."""
    x = _rows(6, d=8)
    prior = fastvae.log_likelihood(lambda x: (np.zeros((len(x), 3)),) * 2,
                                   lambda z: np.full((len(z), 8), 0.3), x, K=40,
                                   dtype="float64", stats=True, progress=False)
    np.testing.assert_allclose(prior.ess, 40.0, rtol=1e-12)
    assert prior.active_units == 0
    sharp = fastvae.log_likelihood(lambda x: (np.zeros((len(x), 3)),) * 2,
                                   lambda z: 300.0 * z[:, :1].repeat(8, axis=1), x, K=40,
                                   dtype="float64", stats=True, progress=False)
    assert np.all(sharp.ess < 2.0)


def test_active_units_follow_burdas_threshold():
    """Units 0-2 move with x (variance ~1 over the data), 3 barely (1e-3), 4 not at all."""
    scale = np.array([1.0, 2.0, 0.7, math.sqrt(1e-3), 0.0])
    direction = RNG.normal(0, 1, (37, 5))

    def encode(x):
        proj = (x - 0.35) @ direction / math.sqrt(37 * 0.35 * 0.65)
        return proj * scale, np.full((len(x), 5), -1.0)

    x = _rows(400)
    estimate = fastvae.log_likelihood(encode, lambda z: z @ direction.T, x, K=3,
                                      dtype="float64", stats=True, progress=False)
    mu = encode(x)[0]
    np.testing.assert_allclose(estimate.latent_variance, mu.var(axis=0), rtol=1e-9, atol=1e-15)
    assert estimate.active_units == np.count_nonzero(mu.var(axis=0) > ACTIVE_UNIT_THRESHOLD)
    assert estimate.active_units == 3


def test_latent_spread_merges_blocks_like_one_pass():
    mu = RNG.normal(3.0, 2.0, (101, 4)) * np.array([1e-3, 1.0, 10.0, 1e3])
    spread = LatentSpread()
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 101)]:
        spread = spread.merged(LatentSpread.of(mu[a:b]))
    assert spread.count == 101
    np.testing.assert_allclose(spread.variance(), mu.var(axis=0), rtol=1e-12)


def test_sem_of_one_example_is_nan():
    model = _model()
    estimate = model.log_likelihood(_rows(1), K=5, stats=True, progress=False)
    assert math.isnan(estimate.sem) and np.isfinite(estimate.mean)


# ---------------------------------------------------------------------------------------------
# out=: the per-example values on disk
# ---------------------------------------------------------------------------------------------
def test_out_writes_the_values_it_returns(tmp_path):
    model = _model()
    x = _rows(13)
    path = tmp_path / "ll.npy"
    got = model.log_likelihood(x, K=20, out=path, progress=False)
    assert isinstance(got, np.memmap) and not got.flags.writeable
    np.testing.assert_array_equal(np.load(path), model.log_likelihood(x, K=20, progress=False))
    estimate = fastvae.log_likelihood(*_numpy_callables(model), x, K=20, seed=model.seed + 2,
                                      dtype="float64", out=tmp_path / "c.npy", stats=True,
                                      progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.load(path))
    np.testing.assert_array_equal(estimate.log_likelihood, np.load(path))


def test_an_interrupted_run_keeps_the_rows_it_finished(tmp_path):
    model = _model()
    x = _rows(10)
    calls = []

    def decode(z):
        calls.append(len(z))
        if len(calls) == 4:
            raise RuntimeError("the decoder's GPU fell off the bus")
        return model.decoder_forward(z)

    path = tmp_path / "ll.npy"
    with pytest.raises(RuntimeError, match="fell off"):
        fastvae.log_likelihood(model.encoder_forward, decode, x, K=30, max_pairs=60,
                               dtype="float64", seed=model.seed + 2, out=path, progress=False)
    kept = np.load(path)
    want = model.log_likelihood(x, K=30, max_pairs=60, progress=False)
    np.testing.assert_array_equal(kept[:6], want[:6])    # 3 blocks of 2 rows finished
    assert np.all(np.isnan(kept[6:]))


def test_out_must_be_a_path(tmp_path):
    model = _model()
    with pytest.raises(TypeError, match="out must be None or a path"):
        model.log_likelihood(_rows(3), K=2, out=np.zeros(3), progress=False)


# ---------------------------------------------------------------------------------------------
# what is refused, naming it
# ---------------------------------------------------------------------------------------------
def _encode_ok(x):
    return np.full((len(x), 3), 0.1), np.full((len(x), 3), -0.2)


def _decode_ok(z):
    return np.full((len(z), 8), 0.4)


@pytest.mark.parametrize("encode,decode,kwargs,error,match", [
    ("not callable", _decode_ok, {}, TypeError, "encode must be a function, got str"),
    (_encode_ok, 3, {}, TypeError, "decode must be a function, got int"),
    (lambda x: np.zeros((len(x), 3)), _decode_ok, {}, TypeError,
     r"encode must return \(mu, logvar\), got numpy.ndarray"),
    (lambda x: (np.zeros((len(x), 3)), np.zeros((len(x), 2))), _decode_ok, {}, ValueError,
     r"got logvar of shape \(4, 2\)"),
    (lambda x: (np.zeros((len(x) + 1, 3)),) * 2, _decode_ok, {}, ValueError,
     r"mu and logvar of shape \(n, L\) = \(4, 3\) for x of 4 rows, got mu of shape \(5, 3\)"),
    (_encode_ok, lambda z: np.zeros((len(z), 7)), {}, ValueError,
     r"decode\(z\) must return shape \(8, 8\) for z of shape \(8, 3\), got \(8, 7\)"),
    (_encode_ok, lambda z: "logits", {}, TypeError,
     r"decode\(z\) must be an array \(NumPy, torch or JAX\), got str"),
    (lambda x: (np.zeros((len(x), 3), int),) * 2, _decode_ok, {}, TypeError,
     r"encode\(x\)\[0\]"),
    (_encode_ok, _decode_ok, {"likelihood": "gaussian"}, ValueError, "needs dec_logvar"),
    (_encode_ok, _decode_ok, {"dec_logvar": np.zeros(8)}, ValueError,
     "dec_logvar is only used with likelihood='gaussian'"),
    (_encode_ok, _decode_ok, {"likelihood": "gaussian", "dec_logvar": np.zeros(5)}, ValueError,
     r"dec_logvar must have shape \(D,\) = \(8,\), got \(5,\)"),
    (_encode_ok, _decode_ok, {"inputs": "tensorflow"}, ValueError, "inputs must be one of"),
    (_encode_ok, _decode_ok, {"K": 0}, ValueError, "K"),
])
def test_bad_callables_and_arguments_are_refused_naming_them(encode, decode, kwargs, error,
                                                             match):
    x = _rows(4, d=8)
    with pytest.raises(error, match=match):
        fastvae.log_likelihood(encode, decode, x, **{"K": 2, "progress": False, **kwargs})


def test_bad_rows_are_refused_naming_row_and_column():
    x = _rows(9, d=8)
    x[6, 5] = 1.5
    with pytest.raises(ValueError, match=r"x .*row 6, column 5"):
        fastvae.log_likelihood(_encode_ok, _decode_ok, x, K=2, progress=False)
