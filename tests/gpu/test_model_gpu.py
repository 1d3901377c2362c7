"""The VAE on device="cuda" through the paths a user runs: construction and ``to``, one explicit
step, ``fit`` (ELBO, IWAE, Gaussian, KL warm-up, early stopping), ``elbo``, ``log_likelihood``,
encode/decode/sample/reconstruct, and checkpoints across devices. Each result is compared with
the CPU backend's for the same seed: float32 on the device within the three-way tolerance of the
CPU's float32 and float64 runs, float64 on the device within float64 rounding of the CPU's."""
import numpy as np
import pytest

import fastvae as fv
from fastvae.train import TrainingDiverged
from tests.helpers import assert_close3

from .conftest import is_device_array

D, H, L = 13, (9, 6), 3   # two hidden layers: every layer kind of the backward runs


def _data(n=40, seed=6):
    x = np.random.default_rng(seed).uniform(0.02, 0.98, (n, D))
    x[::3] = np.round(x[::3])   # exact 0s and 1s too
    return x


def _models(dev, likelihood="bernoulli", activation="tanh", device_dtype="float32"):
    """(on the device, CPU float32, CPU float64), the same parameters (seed 4)."""
    return tuple(fv.VAE(D, H, L, likelihood, activation, seed=4, dtype=dtype, device=device)
                 for device, dtype in (("cuda", device_dtype), ("cpu", "float32"),
                                       ("cpu", "float64")))


def assert_three_way(got, cpu32, cpu64, name, rtol=1e-6):
    """got from the device (float32) against the CPU's float32 and float64 results."""
    cpu64 = np.asarray(cpu64, np.float64)
    scale = max(1.0, float(np.abs(cpu64[np.isfinite(cpu64)]).max(initial=0.0)))
    assert_close3(got, cpu32, cpu64, atol=rtol * scale, name=name)


def _host_params(dev, model):
    assert is_device_array(model.params.flat)
    return dev.get(model.params.flat)


def test_a_model_built_on_the_device_has_the_cpu_parameters(dev):
    gpu, cpu32, _ = _models(dev)
    assert gpu.device == "cuda" and "device='cuda'" in repr(gpu)
    for name in gpu.params:
        assert is_device_array(gpu.params[name]), name
    np.testing.assert_array_equal(_host_params(dev, gpu), cpu32.params.flat)


@pytest.mark.parametrize("likelihood, objective, k, activation", [
    ("bernoulli", "elbo", 1, "relu"), ("gaussian", "elbo", 1, "softplus"),
    ("bernoulli", "iwae", 4, "tanh"), ("gaussian", "iwae", 3, "sigmoid")])
def test_one_step_matches_the_cpu(dev, likelihood, objective, k, activation):
    x = _data(11)
    eps = np.random.default_rng(2).standard_normal((11, k, L))
    results = [m.loss_and_grads(x, eps, objective=objective, beta=0.8)
               for m in _models(dev, likelihood, activation)]
    (loss, grads), (loss32, grads32), (loss64, grads64) = results
    assert_three_way(np.array([loss]), [loss32], [loss64], "loss")
    for name in grads64:
        assert isinstance(grads[name], np.ndarray), f"{name}: grads come back on the host"
        assert_three_way(grads[name], grads32[name], grads64[name], name)


FITS = {
    "bernoulli-elbo-dynamic": dict(binarize="dynamic", beta=0.5, warmup_epochs=1),
    "bernoulli-iwae-k3": dict(objective="iwae", k=3),
    "gaussian-elbo": dict(),
}


@pytest.mark.parametrize("case", list(FITS))
def test_fit_follows_the_cpu(dev, case):
    likelihood = case.split("-")[0]
    x = _data(40) if likelihood == "bernoulli" else _data(40) * 4 - 2
    runs = []
    for model in _models(dev, likelihood):
        hist = model.fit(x, epochs=3, batch_size=16, lr=3e-3, seed=11, progress=False,
                         validation_data=x[:9], **FITS[case])
        runs.append((model, hist))
    (gpu, hist), (cpu32, hist32), (cpu64, hist64) = runs
    for key in ("loss", "val_elbo"):
        assert_three_way([h[key] for h in hist], [h[key] for h in hist32],
                         [h[key] for h in hist64], key)
    assert_three_way(_host_params(dev, gpu), cpu32.params.flat, cpu64.params.flat, "params",
                     rtol=1e-5)


def test_float64_fit_matches_the_cpu_to_float64_rounding(dev):
    x = _data(40)
    gpu, _, cpu64 = _models(dev, device_dtype="float64")
    hist = gpu.fit(x, epochs=2, batch_size=16, lr=3e-3, seed=3, progress=False)
    hist64 = cpu64.fit(x, epochs=2, batch_size=16, lr=3e-3, seed=3, progress=False)
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in hist64],
                               rtol=1e-11)
    np.testing.assert_allclose(_host_params(dev, gpu), cpu64.params.flat, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 4])
def test_elbo_matches_the_cpu(dev, k):
    x = _data(29)
    got, e32, e64 = (m.elbo(x, k=k, seed=5, batch_size=8) for m in _models(dev))
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (29,)
    assert_three_way(got, e32, e64, "elbo")


@pytest.mark.parametrize("max_pairs", [7, 60, 10_000])
def test_log_likelihood_matches_the_cpu_whatever_the_chunks(dev, max_pairs):
    x = _data(17)
    got, ll32, ll64 = (m.log_likelihood(x, K=30, seed=2, max_pairs=max_pairs, progress=False)
                       for m in _models(dev))
    assert isinstance(got, np.ndarray) and got.shape == (17,)
    assert_three_way(got, ll32, ll64, f"log p(x), max_pairs={max_pairs}")


def test_log_likelihood_of_a_gaussian_model(dev):
    x = _data(12) * 3 - 1
    got, ll32, ll64 = (m.log_likelihood(x, K=20, seed=2, max_pairs=50, progress=False)
                       for m in _models(dev, "gaussian"))
    assert_three_way(got, ll32, ll64, "gaussian log p(x)")


@pytest.mark.parametrize("method", ["encode", "decode", "reconstruct", "sample"])
def test_inference_helpers_match_the_cpu_and_return_host_arrays(dev, method):
    x = _data(10)
    z = np.random.default_rng(3).standard_normal((10, L)) * 2
    calls = {"encode": lambda m: m.encode(x), "decode": lambda m: m.decode(z),
             "reconstruct": lambda m: m.reconstruct(x), "sample": lambda m: m.sample(10, seed=8)}
    outs = [calls[method](m) for m in _models(dev)]
    outs = [o if isinstance(o, tuple) else (o,) for o in outs]
    for i, (got, o32, o64) in enumerate(zip(*outs)):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, type(got)
        assert_three_way(got, o32, o64, f"{method}[{i}]")


def test_decode_refuses_nan_on_the_device(dev):
    gpu = _models(dev)[0]
    z = np.ones((4, L))
    z[2, 1] = np.nan
    with pytest.raises(ValueError, match="z"):
        gpu.decode(z)


def test_to_cuda_continues_training_as_the_cpu_does(dev):
    """One epoch on the CPU, then .to("cuda") (parameters and Adam moments move) and one more
    epoch there: the same as two epochs on the CPU."""
    x = _data(40)
    _, moved, cpu32 = (fv.VAE(D, H, L, seed=4, dtype=t) for t in ("float32",) * 3)
    cpu64 = fv.VAE(D, H, L, seed=4, dtype="float64")
    for m in (moved, cpu32, cpu64):
        m.fit(x, epochs=1, batch_size=16, lr=3e-3, seed=1, progress=False)
    assert moved.to("cuda") is moved and moved.device == "cuda"
    assert is_device_array(moved.optimizer_state.m) and is_device_array(moved.optimizer_state.v)
    hists = [m.fit(x, epochs=1, batch_size=16, lr=3e-3, seed=1, progress=False)
             for m in (moved, cpu32, cpu64)]
    assert_three_way([h["loss"] for h in hists[0]], [h["loss"] for h in hists[1]],
                     [h["loss"] for h in hists[2]], "loss after to('cuda')")
    assert_three_way(_host_params(dev, moved), cpu32.params.flat, cpu64.params.flat, "params",
                     rtol=1e-5)
    back = dev.get(moved.params.flat)
    moved.to("cpu")
    assert isinstance(moved.params.flat, np.ndarray) and isinstance(moved.optimizer_state.m,
                                                                    np.ndarray)
    np.testing.assert_array_equal(moved.params.flat, back)


def test_a_checkpoint_saved_on_the_device_loads_on_either_device(dev, tmp_path):
    x = _data(40)
    gpu = _models(dev)[0]
    gpu.fit(x, epochs=1, batch_size=16, lr=3e-3, progress=False, checkpoint=tmp_path / "g.npz")
    on_cpu = fv.VAE.load(tmp_path / "g.npz")
    assert on_cpu.device == "cpu"
    np.testing.assert_array_equal(on_cpu.params.flat, dev.get(gpu.params.flat))
    np.testing.assert_array_equal(on_cpu.optimizer_state.m, dev.get(gpu.optimizer_state.m))
    on_gpu = fv.VAE.load(tmp_path / "g.npz", device="cuda")
    assert on_gpu.device == "cuda" and is_device_array(on_gpu.optimizer_state.v)
    np.testing.assert_array_equal(dev.get(on_gpu.params.flat), on_cpu.params.flat)
    assert on_gpu.history == on_cpu.history


def test_training_resumed_from_a_checkpoint_on_the_device_equals_training_straight(dev,
                                                                                  tmp_path):
    x = _data(40)
    straight, first = _models(dev)[0], _models(dev)[0]
    straight.fit(x, epochs=2, batch_size=16, lr=3e-3, seed=9, progress=False)
    first.fit(x, epochs=1, batch_size=16, lr=3e-3, seed=9, progress=False,
              checkpoint=tmp_path / "c.npz")
    resumed = fv.VAE.load(tmp_path / "c.npz", device="cuda")
    resumed.fit(x, epochs=1, batch_size=16, lr=3e-3, seed=9, progress=False)
    np.testing.assert_allclose(dev.get(resumed.params.flat), dev.get(straight.params.flat),
                               rtol=1e-6, atol=1e-7)
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in straight.history], rel=1e-6)


def test_early_stopping_restores_the_best_parameters_on_the_device(dev, monkeypatch):
    x = _data(40)
    gpu = _models(dev)[0]
    scores = iter([-10.0, -9.0, -9.5, -9.8, -8.0])   # best at epoch 2, then two worse epochs
    snapshots = []
    monkeypatch.setattr(fv.VAE, "elbo", lambda self, *a, **k: (
        snapshots.append(dev.get(self.params.flat)), np.array([next(scores)]))[1])
    hist = gpu.fit(x, epochs=5, batch_size=16, lr=3e-3, progress=False, validation_data=x[:8],
                   early_stopping_patience=2)
    assert len(hist) == 4
    np.testing.assert_array_equal(dev.get(gpu.params.flat), snapshots[1])


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_diverging_step_on_the_device_keeps_the_last_good_parameters(dev, tmp_path):
    x = _data(40)
    gpu = _models(dev)[0]
    gpu.fit(x, epochs=1, batch_size=16, lr=3e-3, progress=False)
    gpu.params["enc_logvar.b"] = np.full(L, 200.0)   # exp(200) overflows float32: KL = inf
    before = dev.get(gpu.params.flat)
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        gpu.fit(x, epochs=1, batch_size=16, lr=3e-3, progress=False,
                checkpoint=tmp_path / "c.npz")
    np.testing.assert_array_equal(dev.get(gpu.params.flat), before)
    np.testing.assert_array_equal(fv.VAE.load(tmp_path / "c.npz").params.flat, before)


def test_bad_data_is_refused_before_the_device_runs(dev):
    gpu = _models(dev)[0]
    x = _data(20)
    x[7, 4] = 1.5
    for call in (lambda: gpu.fit(x, epochs=1, progress=False), lambda: gpu.elbo(x),
                 lambda: gpu.log_likelihood(x, K=4, progress=False)):
        with pytest.raises(ValueError, match=r"row 7.*column 4|\[0, 1\]"):
            call()
