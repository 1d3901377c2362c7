"""The VAE: explicit backward against finite differences and the reference ops, the closed-form
linear Gaussian model, determinism, resuming, divergence handling, checkpoints."""

import numpy as np
import pytest

import fastvae as fv
from fastvae import _reference as ref
from fastvae.model import VAE
from fastvae.train import TrainingDiverged


def _model(likelihood="bernoulli", hidden=(5,), activation="tanh", dtype="float64", seed=0,
           D=7, L=3):
    model = VAE(D, hidden, L, likelihood, activation, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for name in model.params:   # no zero biases: every parameter must matter
        model.params[name] = model.params[name] + 0.3 * rng.standard_normal(
            model.params.shapes[name])
    return model


def _data(n, d, rng):
    return rng.uniform(0.02, 0.98, (n, d))


@pytest.mark.parametrize("likelihood, objective, k, activation", [
    ("bernoulli", "elbo", 1, "tanh"), ("gaussian", "elbo", 1, "softplus"),
    ("bernoulli", "elbo", 2, "sigmoid"), ("bernoulli", "iwae", 3, "tanh"),
    ("gaussian", "iwae", 2, "tanh")])
def test_loss_and_grads_match_finite_differences(likelihood, objective, k, activation):
    rng = np.random.default_rng(1)
    model = _model(likelihood, hidden=(5, 4), activation=activation)
    x, eps = _data(6, 7, rng), rng.standard_normal((6, k, 3))
    loss, grads = model.loss_and_grads(x, eps, objective=objective, beta=1.0)
    base = model.params.flat.copy()
    for _ in range(3):
        direction = rng.standard_normal(base.shape)
        h = 1e-6
        model.params.flat[...] = base + h * direction
        plus = model.loss_and_grads(x, eps, objective=objective)[0]
        model.params.flat[...] = base - h * direction
        minus = model.loss_and_grads(x, eps, objective=objective)[0]
        model.params.flat[...] = base
        numeric = (plus - minus) / (2 * h)
        analytic = sum(np.sum(grads[n] * direction[_slice(model, n)].reshape(grads[n].shape))
                       for n in grads)
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)


GENERAL = [   # (encoder_dims, decoder_dims, activation per hidden layer)
    ((6, 5), (4,), ["tanh", "relu", "softplus"]),
    ((5,), (3, 6), ["sigmoid", "tanh", "relu"]),
    ((), (4,), ["tanh"]),                 # no hidden encoder layer: the heads read x
    ((4,), (), ["softplus"]),             # no hidden decoder layer: dec_out reads z
]


@pytest.mark.parametrize("encoder_dims, decoder_dims, activation", GENERAL)
@pytest.mark.parametrize("likelihood, objective, k", [("bernoulli", "elbo", 1),
                                                      ("gaussian", "iwae", 2)])
def test_an_asymmetric_model_matches_finite_differences(encoder_dims, decoder_dims, activation,
                                                        likelihood, objective, k):
    rng = np.random.default_rng(2)
    model = VAE(7, latent_dim=3, likelihood=likelihood, activation=activation, dtype="float64",
                encoder_dims=encoder_dims, decoder_dims=decoder_dims)
    for name in model.params:   # no zero biases: every parameter must matter
        model.params[name] = model.params[name] + 0.3 * rng.standard_normal(
            model.params.shapes[name])
    assert [layer.activation for layer in model.encoder + model.decoder[:-1]] == activation
    x, eps = _data(6, 7, rng), rng.standard_normal((6, k, 3))
    loss, grads = model.loss_and_grads(x, eps, objective=objective)
    base = model.params.flat.copy()
    for _ in range(3):
        direction = rng.standard_normal(base.shape)
        model.params.flat[...] = base + 1e-6 * direction
        plus = model.loss_and_grads(x, eps, objective=objective)[0]
        model.params.flat[...] = base - 1e-6 * direction
        minus = model.loss_and_grads(x, eps, objective=objective)[0]
        model.params.flat[...] = base
        analytic = sum(np.sum(grads[n] * direction[_slice(model, n)].reshape(grads[n].shape))
                       for n in grads)
        assert (plus - minus) / 2e-6 == pytest.approx(analytic, rel=1e-5, abs=1e-8)


def test_an_asymmetric_model_round_trips_through_a_checkpoint(tmp_path):
    x = np.random.default_rng(3).random((40, 7)).astype(np.float32)
    model = VAE(7, latent_dim=2, activation=["tanh", "relu", "softplus"], encoder_dims=(6, 5),
                decoder_dims=(4,), seed=1)
    model.fit(x, epochs=1, batch_size=16, progress=False, checkpoint=tmp_path / "a.npz")
    assert model.config()["encoder_dims"] == [6, 5] and model.config()["decoder_dims"] == [4]
    back = VAE.load(tmp_path / "a.npz")
    assert (back.encoder_dims, back.decoder_dims, back.activations) == \
        ((6, 5), (4,), ("tanh", "relu", "softplus"))
    np.testing.assert_array_equal(back.params.flat, model.params.flat)
    np.testing.assert_array_equal(back.log_likelihood(x[:5], K=7, progress=False),
                                  model.log_likelihood(x[:5], K=7, progress=False))
    mirrored = VAE(7, (5,), 2, activation="tanh")    # the mirrored form is written as before
    assert set(mirrored.config()) >= {"hidden_dims", "activation"}
    assert "encoder_dims" not in mirrored.config() and mirrored.hidden_dims == (5,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_dims=(4,), encoder_dims=(4,), decoder_dims=(4,)), "not both"),
    (dict(encoder_dims=(4,)), "go together"),
    (dict(encoder_dims=(4,), decoder_dims=(3,), activation=["relu"]), "2 names"),
    (dict(encoder_dims=(4,), decoder_dims=(3,), activation=["relu", "gelu"]), "activation"),
    (dict(encoder_dims=(4, 0), decoder_dims=(3,)), "encoder_dims"),
])
def test_bad_architectures_are_refused_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(7, latent_dim=2, **kwargs)


def _slice(model, name):
    start = 0
    for other, shape in model.params.shapes.items():
        size = int(np.prod(shape))
        if other == name:
            return slice(start, start + size)
        start += size


def _reference_loss_and_grads(model, x, eps, beta):
    """The same forward/backward composed from fastvae._reference (float64)."""
    P = {n: np.asarray(model.params[n], np.float64) for n in model.params}
    h, caches = x, []
    for name, _, _, act in model.layers():
        if name.startswith("enc") and name not in ("enc_mu", "enc_logvar"):
            h, c = ref.dense_forward(h, P[name + ".W"], P[name + ".b"], act)
            caches.append((name, c))
    mu, c_mu = ref.dense_forward(h, P["enc_mu.W"], P["enc_mu.b"])
    lv, c_lv = ref.dense_forward(h, P["enc_logvar.W"], P["enc_logvar.b"])
    z, c_z = ref.reparam_forward(mu, lv, eps)
    d, dcaches = z, []
    for name, _, _, act in model.layers():
        if name.startswith("dec"):
            d, c = ref.dense_forward(d, P[name + ".W"], P[name + ".b"], act)
            dcaches.append((name, c))
    loss, g = ref.elbo_loss_and_grads(x, d, mu, lv, model.likelihood,
                                      P.get("dec_out.logvar"), beta)
    grads = {"dec_out.logvar": g[3]} if len(g) > 3 else {}
    dd = g[0]
    for name, c in reversed(dcaches):
        dd, grads[name + ".W"], grads[name + ".b"] = ref.dense_backward(dd, c)
    dmu_z, dlv_z = ref.reparam_backward(dd, c_z)
    dh, grads["enc_mu.W"], grads["enc_mu.b"] = ref.dense_backward(g[1] + dmu_z, c_mu)
    dh2, grads["enc_logvar.W"], grads["enc_logvar.b"] = ref.dense_backward(g[2] + dlv_z, c_lv)
    dh = dh + dh2
    for name, c in reversed(caches):
        dh, grads[name + ".W"], grads[name + ".b"] = ref.dense_backward(dh, c)
    return loss, grads


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_float32_training_step_matches_the_reference_ops(likelihood):
    rng = np.random.default_rng(2)
    model = _model(likelihood, hidden=(31, 17), activation="relu", dtype="float32", D=37, L=5)
    x, eps = _data(19, 37, rng).astype(np.float32), rng.standard_normal((19, 5))
    loss, grads = model.loss_and_grads(x, eps.astype(np.float32), beta=0.7)
    loss64, grads64 = _reference_loss_and_grads(model, x.astype(np.float64), eps, 0.7)
    assert loss == pytest.approx(loss64, rel=1e-4)
    for name in grads:
        scale = np.abs(grads64[name]).max()
        np.testing.assert_allclose(grads[name], grads64[name], atol=2e-4 * scale + 1e-6,
                                   err_msg=name)


def _linear_gaussian(D=6, L=3, sigma2=0.5, seed=3):
    """hidden_dims=() Gaussian VAE whose encoder is the exact posterior.

    x = z @ W + b + noise, W (L, D) with orthogonal rows of norms s, noise variance sigma2:
    p(x) = N(b, W^T W + sigma2 I); p(z | x) = N(Sigma W (x - b) / sigma2, Sigma) with the diagonal
    Sigma = 1 / (1 + s^2 / sigma2), which a linear encoder represents exactly.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    s = np.array([2.0, 1.0, 0.5])[:L]
    W, b = q[:L] * s[:, None], rng.standard_normal(D)
    sigma = 1 / (1 + s ** 2 / sigma2)
    model = VAE(D, (), L, "gaussian", seed=seed, dtype="float64")
    model.params["dec_out.W"], model.params["dec_out.b"] = W, b
    model.params["dec_out.logvar"] = np.full(D, np.log(sigma2))
    W_mu = W.T * (sigma / sigma2)
    model.params["enc_mu.W"], model.params["enc_mu.b"] = W_mu, -b @ W_mu
    model.params["enc_logvar.W"] = np.zeros((D, L))
    model.params["enc_logvar.b"] = np.log(sigma)
    cov = W.T @ W + sigma2 * np.eye(D)
    x = rng.multivariate_normal(b, cov, size=200)
    r = x - b
    exact = -0.5 * (D * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                    + np.einsum("nd,de,ne->n", r, np.linalg.inv(cov), r))
    return model, x, exact, rng


def test_exact_posterior_makes_every_estimate_exact():
    model, x, exact, _ = _linear_gaussian()
    np.testing.assert_allclose(model.log_likelihood(x, K=1, seed=1), exact, rtol=1e-10)
    np.testing.assert_allclose(model.log_likelihood(x, K=37, seed=2, max_pairs=5), exact,
                               rtol=1e-10)
    # The ELBO (analytic KL) equals log p(x) in expectation only: Monte Carlo over 400 samples.
    assert model.elbo(x, k=400, seed=3).mean() == pytest.approx(exact.mean(), abs=0.02)


def test_estimates_approach_the_exact_marginal_as_k_grows():
    model, x, exact, rng = _linear_gaussian()
    model.params["enc_mu.W"] = model.params["enc_mu.W"] + 0.05 * rng.standard_normal((6, 3))
    model.params["enc_logvar.b"] = model.params["enc_logvar.b"] + 0.3
    elbo = model.elbo(x, k=64, seed=0).mean()
    ll_10 = model.log_likelihood(x, K=10, seed=0).mean()
    ll_3000 = model.log_likelihood(x, K=3000, seed=0).mean()
    assert elbo < ll_10 < ll_3000 <= exact.mean() + 0.01
    assert exact.mean() - ll_3000 < 0.1 * (exact.mean() - elbo)


def test_log_likelihood_is_independent_of_chunking_and_reads_memmaps(tmp_path):
    model = _model("bernoulli", hidden=(8,), dtype="float32", D=9, L=2)
    x = _data(13, 9, np.random.default_rng(4)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    x_map = np.load(path, mmap_mode="r")
    whole = model.log_likelihood(x, K=50, seed=5)
    chunked = model.log_likelihood(x_map, K=50, seed=5, max_pairs=7)
    rows = model.log_likelihood(x_map, K=50, seed=5, max_pairs=120)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    np.testing.assert_allclose(rows, whole, rtol=1e-6)
    assert np.all(model.elbo(x, k=8, seed=5) <= whole + 0.5)


def _train(model, x, **kw):
    kw = dict(epochs=2, batch_size=16, lr=3e-3, progress=False) | kw
    return model.fit(x, **kw)


def test_training_lowers_the_loss_and_is_deterministic():
    x = (np.random.default_rng(6).random((96, 12)) < 0.3).astype(np.float32)
    a, b = _model(dtype="float32", D=12, L=2), _model(dtype="float32", D=12, L=2)
    hist = _train(a, x, epochs=6, binarize="dynamic", validation_data=x[:32])
    _train(b, x, epochs=6, binarize="dynamic", validation_data=x[:32])
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(h["val_elbo"] is not None and np.isfinite(h["val_elbo"]) for h in hist)


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    x = np.random.default_rng(7).random((64, 12)).astype(np.float32)
    straight = _model(dtype="float32", D=12, L=2)
    _train(straight, x, epochs=4, k=2, objective="iwae")
    first = _model(dtype="float32", D=12, L=2)
    _train(first, x, epochs=2, k=2, objective="iwae", checkpoint=tmp_path / "c.npz")
    resumed = VAE.load(tmp_path / "c.npz")
    assert len(resumed.history) == 2 and resumed.optimizer_state.step == 8
    _train(resumed, x, epochs=2, k=2, objective="iwae")   # 2 more: 4 in all
    np.testing.assert_array_equal(resumed.params.flat, straight.params.flat)


@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")
def test_divergence_stops_with_the_step_and_keeps_the_last_good_parameters(tmp_path):
    x = np.random.default_rng(8).random((40, 12)).astype(np.float32)
    model = _model(dtype="float32", D=12, L=2)
    _train(model, x, epochs=1)
    model.params["enc_logvar.b"] = np.full(2, 200.0)   # exp(200) overflows float32: KL = inf
    before = model.params.flat.copy()
    with pytest.raises(TrainingDiverged, match=r"diverged at step 4 \(epoch 2\)"):
        _train(model, x, epochs=2, checkpoint=tmp_path / "c.npz")
    np.testing.assert_array_equal(model.params.flat, before)
    np.testing.assert_array_equal(VAE.load(tmp_path / "c.npz").params.flat, before)


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 12), np.nan, np.float32), "NaN"),
    (np.full((4, 12), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((4, 11), 0.5, np.float32), "12"),
])
def test_bad_training_data_is_refused_before_training(bad, message):
    model = _model(dtype="float32", D=12, L=2)
    before = model.params.flat.copy()
    with pytest.raises(ValueError, match=message):
        _train(model, bad)
    np.testing.assert_array_equal(model.params.flat, before)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = _model("gaussian", dtype="float32", D=12, L=2)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = VAE.load(path)
    np.testing.assert_array_equal(loaded.params.flat, model.params.flat)
    assert loaded.config() == model.config()
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]   # no temporary left behind
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastvae checkpoint"):
        VAE.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a fastvae checkpoint"):
        VAE.load(tmp_path / "foreign.npz")
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        VAE.load(tmp_path / "pickled.npz")


def test_params_assignment_changes_the_model_and_is_checked():
    model = _model(dtype="float32", D=12, L=2)
    x = np.random.default_rng(9).random((3, 12)).astype(np.float32)
    before = model.reconstruct(x)
    model.params["dec_out.b"] = np.full(12, 5.0)
    assert not np.allclose(model.reconstruct(x), before)
    with pytest.raises(ValueError, match=r"params\['dec_out.b'\] must have shape \(12,\)"):
        model.params["dec_out.b"] = np.ones(3)
    with pytest.raises(KeyError, match="unknown parameter"):
        model.params["nope"] = np.ones(3)


def test_api_shapes_and_public_names():
    model = fv.VAE(input_dim=12, hidden_dims=(), latent_dim=2, seed=0)
    assert set(model.params) == {"enc_mu.W", "enc_mu.b", "enc_logvar.W", "enc_logvar.b",
                                 "dec_out.W", "dec_out.b"}
    x = np.random.default_rng(10).random((5, 12)).astype(np.float32)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 2)
    assert model.decode(mu).shape == (5, 12) and model.sample(4).shape == (4, 12)
    samples = model.sample(4)
    assert np.all((samples > 0) & (samples < 1))


def test_ten_training_steps_match_the_reference_step_by_step():
    """llm.c's check: the float32 model trained with its kernels and a float64 copy trained with
    the reference ops and the reference Adam see the same batches and noise; losses must agree at
    every step."""
    rng = np.random.default_rng(11)
    fast = _model("bernoulli", hidden=(24,), activation="relu", dtype="float32", D=30, L=4)
    slow = {n: np.asarray(fast.params[n], np.float64) for n in fast.params}
    moments = {n: (np.zeros_like(p), np.zeros_like(p)) for n, p in slow.items()}
    holder = _model("bernoulli", hidden=(24,), activation="relu", dtype="float64", D=30, L=4)
    from fastvae.optim import Adam
    opt = Adam(fast.params.flat, lr=1e-2)
    for step in range(1, 11):
        x = (rng.random((16, 30)) < 0.4).astype(np.float32)
        eps = fv.random.normal((16, 4), seed=5, offset=step * 64)
        loss, grads = fast.loss_and_grads(x, eps)
        opt.update(np.concatenate([grads[n].ravel() for n in fast.params]))
        for n in slow:
            holder.params[n] = slow[n]
        loss64, grads64 = _reference_loss_and_grads(holder, x.astype(np.float64),
                                                    eps.astype(np.float64), 1.0)
        for n in slow:
            m, v = moments[n]
            slow[n], m, v = ref.adam_update(slow[n], grads64[n], m, v, step, lr=1e-2)
            moments[n] = (m, v)
        assert loss == pytest.approx(loss64, rel=2e-5), f"step {step}"


def test_log_likelihood_memory_does_not_grow_with_k():
    """N x K x D float32 would be 4 x 4000 x 784 x 4 B = 50 MB; the streaming estimator with
    max_pairs=256 must stay near its chunk size (~256 x 784 x 4 B = 0.8 MB per array)."""
    import tracemalloc
    model = _model("bernoulli", hidden=(64,), dtype="float32", D=784, L=8)
    x = np.random.default_rng(12).random((4, 784)).astype(np.float32)
    model.log_likelihood(x[:1], K=10, max_pairs=256)   # compile outside the measurement
    tracemalloc.start()
    model.log_likelihood(x, K=4000, max_pairs=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_kl_warmup_and_early_stopping(monkeypatch):
    x = np.random.default_rng(13).random((64, 12)).astype(np.float32)
    model = _model(dtype="float32", D=12, L=2)
    hist = _train(model, x, epochs=4, beta=0.5, warmup_epochs=2)
    assert [h["beta"] for h in hist] == [0.25, 0.5, 0.5, 0.5]
    scores = iter([-10.0, -9.0, -9.5, -9.8, -8.0])   # best at epoch 2, then two worse epochs
    snapshots = []
    monkeypatch.setattr(VAE, "elbo", lambda self, *a, **k: (
        snapshots.append(self.params.flat.copy()), np.array([next(scores)]))[1])
    model = _model(dtype="float32", D=12, L=2)
    hist = _train(model, x, epochs=5, validation_data=x[:8], early_stopping_patience=2)
    assert len(hist) == 4
    np.testing.assert_array_equal(model.params.flat, snapshots[1])


def test_cuda_device_without_a_gpu_fails_clearly_and_to_cpu_round_trips():
    try:
        import cupy
        has_gpu = cupy.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:   # the model on the GPU itself: tests/gpu/test_model_gpu.py
        assert VAE(12, (5,), 2, device="cuda").to("cpu").device == "cpu"
    else:
        with pytest.raises(RuntimeError, match="device='cuda' needs"):
            VAE(12, (5,), 2, device="cuda")
    model = _model(dtype="float32", D=12, L=2)
    before = model.params.flat.copy()
    assert model.to("cpu") is model
    np.testing.assert_array_equal(model.params.flat, before)
    with pytest.raises(ValueError, match="device must be one of"):
        model.to("tpu")


def test_training_from_a_memmap_equals_training_from_memory(tmp_path):
    x = np.random.default_rng(14).random((50, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    a, b = _model(dtype="float32", D=12, L=2), _model(dtype="float32", D=12, L=2)
    _train(a, x, binarize="dynamic")
    _train(b, np.load(tmp_path / "x.npy", mmap_mode="r"), binarize="dynamic")
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
