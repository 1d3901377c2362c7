"""The checkpoint loader against a corpus of crafted files: every malformed variant of a valid
checkpoint (edited meta JSON, edited arrays, edited archive) is a ValueError naming the file,
raised quickly and before anything of the claimed size is allocated."""
import io
import json
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastvae.checkpoint import CheckpointError
from fastvae.model import VAE
from fastvae.network import param_shapes
from fastvae.optim import Adam

load = VAE.load   # the loader every test below calls


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A trained 12-8-2 Bernoulli checkpoint: parameters, optimizer state and history."""
    path = tmp_path_factory.mktemp("valid") / "c.npz"
    model = VAE(12, (8,), 2, seed=0)
    x = np.random.default_rng(0).random((32, 12)).astype(np.float32)
    model.fit(x, epochs=1, batch_size=16, validation_data=x[:8], checkpoint=path,
              progress=False)
    return path


def _parts(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return arrays, json.loads(arrays.pop("meta").tobytes().decode())


def _write(path, arrays, meta):
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    np.savez(path, meta=np.frombuffer(raw, dtype=np.uint8), **arrays)
    return path


def _set(*keys_and_value):
    """A meta edit: meta[k0][k1]... = value (value _DELETE removes the key)."""
    *keys, value = keys_and_value

    def edit(arrays, meta):
        obj = meta
        for key in keys[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
    return edit


_DELETE = object()


def _array(key, fn):
    def edit(arrays, meta):
        if fn is _DELETE:
            del arrays[key]
        else:
            arrays[key] = fn(arrays[key])
    return edit


def _add_array(key, value):
    def edit(arrays, meta):
        arrays[key] = value(arrays) if callable(value) else value
    return edit


class _Replace:
    """An edit's result: write this as the whole meta (JSON value, or raw bytes)."""

    def __init__(self, value):
        self.value = value


def _whole_meta(value):
    def edit(arrays, meta):
        return _Replace(value)
    return edit


def _with_nan(a):
    a = a.copy()
    a.flat[3] = np.nan
    return a


def _with_inf(a):
    a = a.copy()
    a.flat[0] = np.inf
    return a


def _negative(a):
    a = a.copy()
    a.flat[1] = -1.0
    return a


def _all_params(fn):
    def edit(arrays, meta):
        for key in [k for k in arrays if k.startswith("params/")]:
            arrays[key] = fn(arrays[key])
    return edit


CORPUS = {
    # the meta object itself
    "meta is a list": (_whole_meta([1, 2]), "must be a JSON object, got a list"),
    "meta is a number": (_whole_meta(3), "JSON object"),
    "meta extra key": (_set("comment", "hi"), "unknown 'comment'"),
    "meta missing history": (_set("history", _DELETE), "lacks 'history'"),
    "meta missing optimizer": (_set("optimizer", _DELETE), "lacks 'optimizer'"),
    "wrong format": (_set("format", "other-format"), "unsupported checkpoint format"),
    "wrong version": (_set("version", 2), "unsupported checkpoint format"),
    "version true": (_set("version", True), "unsupported checkpoint format"),
    "version string": (_set("version", "1"), "unsupported checkpoint format"),
    "non-UTF8 meta": (_whole_meta(b"\xff\xfe{\"format\": 1}"), "no valid 'meta'"),
    "meta not JSON": (_whole_meta(b"{'format': "), "no valid 'meta'"),
    "meta deeply nested": (_whole_meta(b"[" * 100_000 + b"]" * 100_000), "meta"),
    "meta not uint8": (_add_array("meta", np.zeros(4, np.float32)), "uint8"),
    "progress is a list": (_set("progress", [1, 2]), "meta\\['progress'\\] must be an object"),
    # config
    "config is a list": (_set("config", [12, [8], 2]), "meta\\['config'\\] must be a JSON object"),
    "config missing seed": (_set("config", "seed", _DELETE), "lacks 'seed'"),
    "config extra key": (_set("config", "dropout", 0.5), "unknown 'dropout'"),
    "input_dim string": (_set("config", "input_dim", "12"), "input_dim"),
    "input_dim float": (_set("config", "input_dim", 12.0), "input_dim"),
    "latent_dim bool": (_set("config", "latent_dim", True), "latent_dim"),
    "latent_dim negative": (_set("config", "latent_dim", -2), "latent_dim"),
    "input_dim zero": (_set("config", "input_dim", 0), "input_dim"),
    "hidden_dims an int": (_set("config", "hidden_dims", 8), "hidden_dims"),
    "hidden_dims floats": (_set("config", "hidden_dims", [8.0]), "hidden_dims"),
    "hidden_dims negative": (_set("config", "hidden_dims", [-8]), "hidden_dims"),
    "hidden_dims wider": (_set("config", "hidden_dims", [9]), "shape"),
    "likelihood unknown": (_set("config", "likelihood", "poisson"), "likelihood"),
    "likelihood gaussian": (_set("config", "likelihood", "gaussian"),
                            "lacks params/dec_out.logvar"),
    "activation unknown": (_set("config", "activation", "gelu"), "activation"),
    "seed negative": (_set("config", "seed", -1), "seed"),
    "seed bool": (_set("config", "seed", False), "seed"),
    "seed huge": (_set("config", "seed", 2 ** 64), "seed"),
    "dtype float16": (_set("config", "dtype", "float16"), "dtype"),
    "dtype vs arrays": (_set("config", "dtype", "float64"), "float32, the configuration's dtype "
                                                            "is float64"),
    # history
    "history an object": (_set("history", {"epoch": 1}), "history'\\] must be a list"),
    "history entry a list": (_set("history", [[1, 2.0]]), "history'\\]\\[0\\] must be a JSON"),
    "history entry lacks loss": (_set("history", 0, "loss", _DELETE), "lacks 'loss'"),
    "history val_elbo string": (_set("history", 0, "val_elbo", "-3"), "val_elbo"),
    "history epoch bool": (_set("history", 0, "epoch", True), "epoch"),
    # optimizer settings
    "optimizer a list": (_set("optimizer", [0, 1e-3]), "optimizer'\\] must be a JSON object"),
    "optimizer missing eps": (_set("optimizer", "eps", _DELETE), "lacks 'eps'"),
    "optimizer extra key": (_set("optimizer", "amsgrad", True), "unknown 'amsgrad'"),
    "step negative": (_set("optimizer", "step", -1), "step"),
    "step float": (_set("optimizer", "step", 2.5), "step"),
    "step bool": (_set("optimizer", "step", True), "step"),
    "lr zero": (_set("optimizer", "lr", 0), "lr"),
    "lr string": (_set("optimizer", "lr", "0.001"), "lr"),
    "lr NaN": (_set("optimizer", "lr", float("nan")), "lr"),
    "lr Infinity": (_set("optimizer", "lr", float("inf")), "lr"),
    "beta1 one": (_set("optimizer", "beta1", 1.0), "beta1"),
    "beta2 negative": (_set("optimizer", "beta2", -0.1), "beta2"),
    "eps negative": (_set("optimizer", "eps", -1e-8), "eps"),
    "optimizer null with arrays": (_set("optimizer", None), "meta\\['optimizer'\\] is null"),
    # arrays
    "int parameters": (_all_params(lambda a: a.astype(np.int32)), "not a floating-point"),
    "float64 parameters": (_all_params(lambda a: a.astype(np.float64)), "float64"),
    "big-endian parameters": (_all_params(lambda a: a.astype(">f4")), ">f4"),
    "complex parameters": (_all_params(lambda a: a.astype(np.complex64)), "floating-point"),
    "NaN parameter": (_array("params/enc0.W", _with_nan), "NaN/Inf"),
    "Inf parameter": (_array("params/dec_out.b", _with_inf), "NaN/Inf"),
    "missing parameter": (_array("params/enc0.b", _DELETE), "lacks params/enc0.b"),
    "renamed parameter": (lambda arrays, meta: arrays.update(
        {"params/enc9.b": arrays.pop("params/enc0.b")}),
        "lacks params/enc0.b and has unexpected params/enc9.b"),
    "extra array": (_add_array("extra", np.zeros(3, np.float32)), "unexpected extra"),
    "transposed weight": (_array("params/enc0.W", lambda a: np.ascontiguousarray(a.T)),
                          "shape \\(8, 12\\)"),
    "missing optimizer/m": (_array("optimizer/m", _DELETE), "lacks optimizer/m"),
    "missing both moments": (lambda arrays, meta: [arrays.pop("optimizer/m"),
                                                   arrays.pop("optimizer/v")], "lacks"),
    "wrong-size m": (_array("optimizer/m", lambda a: a[:-1]), "optimizer/m"),
    "2-D v": (_array("optimizer/v", lambda a: a.reshape(2, -1)), "optimizer/v"),
    "int m": (_array("optimizer/m", lambda a: a.astype(np.int64)), "optimizer/m"),
    "NaN m": (_array("optimizer/m", _with_nan), "NaN/Inf"),
    "Inf v": (_array("optimizer/v", _with_inf), "NaN/Inf"),
    "negative v": (_array("optimizer/v", _negative), "negative"),
    "best_params wrong size": (_add_array("train/best_params", np.zeros(5, np.float32)),
                               "train/best_params"),
    "best_params NaN": (_add_array("train/best_params",
                                   lambda arrays: np.full(sum(a.size for k, a in arrays.items()
                                                              if k.startswith("params/")),
                                                          np.nan, np.float32)), "NaN/Inf"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_malformed_checkpoint_is_a_value_error_naming_the_file(valid, tmp_path, name):
    edit, message = CORPUS[name]
    arrays, meta = _parts(valid)
    replaced = edit(arrays, meta)
    if isinstance(replaced, _Replace):
        meta = replaced.value
    path = tmp_path / "bad.npz"
    if "meta" in arrays:   # the edit replaced the meta array itself
        np.savez(path, **arrays)
    else:
        _write(path, arrays, meta)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message) as info:
        load(path)
    assert time.perf_counter() - t0 < 5
    assert isinstance(info.value, CheckpointError)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def _assert_fails_fast_and_small(path, message):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=message) as info:
            load(path)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert seconds < 2, seconds
    assert peak < 20 << 20, peak


@pytest.mark.parametrize("input_dim", [10 ** 9, 2 ** 62, 10 ** 400])
def test_a_huge_input_dim_fails_fast_without_allocating(valid, tmp_path, input_dim):
    arrays, meta = _parts(valid)
    meta["config"]["input_dim"] = input_dim
    _assert_fails_fast_and_small(_write(tmp_path / "huge.npz", arrays, meta),
                                 "input_dim|shape|meta")


def test_a_million_hidden_layers_fail_fast(valid, tmp_path):
    arrays, meta = _parts(valid)
    meta["config"]["hidden_dims"] = [8] * 1_000_000   # 3 MB of JSON: parsed, nothing built
    path = _write(tmp_path / "deep.npz", arrays, meta)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="4000006 parameter arrays, the file 10"):
        load(path)
    assert time.perf_counter() - t0 < 2


def _npy_bytes(header_shape, dtype, data):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(
        np.dtype(dtype)), "fortran_order": False, "shape": header_shape})
    return buf.getvalue() + data


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_an_array_header_claiming_more_than_the_file_holds_is_refused_unread(valid, tmp_path):
    """A header that claims 10**9 x 12 values (48 GB) over a few bytes of data: refused from
    the header and the member's size, before NumPy would allocate the array."""
    with zipfile.ZipFile(valid) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["params/enc0.W.npy"] = _npy_bytes((10 ** 9, 12), "<f4", b"\0" * 64)
    _assert_fails_fast_and_small(_zip(tmp_path / "liar.npz", members), "claims shape")


@pytest.mark.parametrize("case", ["object member", "non-npy member", "single npy",
                                  "not a zip", "truncated"])
def test_archive_level_damage_is_a_value_error_naming_the_file(valid, tmp_path, case):
    path = tmp_path / "bad.npz"
    if case == "object member":
        with zipfile.ZipFile(valid) as z:
            members = {name: z.read(name) for name in z.namelist()}
        members["params/enc0.b.npy"] = _npy_bytes((8,), "O", b"\0" * 64)
        _zip(path, members)
    elif case == "non-npy member":
        with zipfile.ZipFile(valid) as z:
            members = {name: z.read(name) for name in z.namelist()}
        members["README.txt"] = b"hello"
        _zip(path, members)
    elif case == "single npy":
        path = tmp_path / "bad.npy"
        np.save(path, np.zeros(3))
    elif case == "not a zip":
        path.write_bytes(b"definitely not a zip archive")
    else:
        data = valid.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_the_valid_checkpoint_and_the_optional_keys_load(valid, tmp_path):
    model = load(valid)
    assert model.optimizer_state.step == 2 and len(model.history) == 1
    assert model.resume_state is None
    arrays, meta = _parts(valid)
    meta["progress"] = {"epoch": 2, "step_in_epoch": 1}
    best = np.concatenate([arrays[f"params/{n}"].ravel() for n in model.params])
    arrays["train/best_params"] = best
    meta["history"][0]["note"] = "extra per-epoch fields are allowed"
    extended = load(_write(tmp_path / "extended.npz", arrays, meta))
    assert extended.resume_state["progress"] == meta["progress"]
    np.testing.assert_array_equal(extended.resume_state["best_params"], best)
    meta["progress"] = None
    del arrays["train/best_params"], arrays["optimizer/m"], arrays["optimizer/v"]
    meta["optimizer"] = None
    untrained = load(_write(tmp_path / "untrained.npz", arrays, meta))
    assert untrained.optimizer_state is None and untrained.resume_state is None
    np.testing.assert_array_equal(untrained.params.flat, model.params.flat)


def test_param_shapes_matches_the_model_without_building_one():
    for likelihood in ("bernoulli", "gaussian"):
        model = VAE(7, (5, 3), 2, likelihood, seed=0)
        assert param_shapes(7, (5, 3), 2, likelihood) == model.params.shapes
    assert param_shapes(10 ** 9, [400], 20, "bernoulli")["enc0.W"] == (10 ** 9, 400)


@pytest.mark.parametrize("settings, m, v, message", [
    ({"step": 1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999}, 0, 0, "keys"),
    ({"step": -1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, 0, 0, "step"),
    ({"step": True, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, 0, 0, "step"),
    ({"step": 1, "lr": "x", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, 0, 0, "lr"),
    ({"step": 1, "lr": 1e-3, "beta1": 1.0, "beta2": 0.999, "eps": 1e-8}, 0, 0, "beta1"),
    ({"step": 1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, -1, 0, "shape"),
    ({"step": 1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, np.nan, 0, "NaN"),
    ({"step": 1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, 0, -1.0, "negative"),
])
def test_adam_from_saved_refuses_bad_state_as_value_error(settings, m, v, message):
    model = VAE(6, (4,), 2, seed=0)
    size = model.params.flat.size
    m = np.zeros(size - 1, np.float32) if isinstance(m, int) and m == -1 else \
        np.full(size, m, np.float32)
    v = np.full(size, v, np.float32)
    with pytest.raises(ValueError, match=message):
        Adam.from_saved(model.params.flat, settings, m, v)


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    """A 12-(8, 6)-2-(5)-12 checkpoint with one activation per hidden layer."""
    path = tmp_path_factory.mktemp("general") / "g.npz"
    VAE(12, latent_dim=2, activation=["tanh", "relu", "softplus"], encoder_dims=(8, 6),
        decoder_dims=(5,), seed=3).save(path)
    return path


GENERAL_CORPUS = {
    "activation list too short": (_set("config", "activation", ["tanh", "relu"]), "activation"),
    "activation list unknown": (_set("config", "activation", ["tanh", "relu", "gelu"]),
                                "activation"),
    "decoder_dims missing": (_set("config", "decoder_dims", _DELETE), "decoder_dims"),
    "decoder_dims wider": (_set("config", "decoder_dims", [7]), "shape"),
    "encoder_dims floats": (_set("config", "encoder_dims", [8.0, 6]), "encoder_dims"),
    "both forms": (_set("config", "hidden_dims", [8]), "unknown"),
}


@pytest.mark.parametrize("name", list(GENERAL_CORPUS))
def test_a_malformed_general_configuration_is_refused(general, tmp_path, name):
    edit, message = GENERAL_CORPUS[name]
    arrays, meta = _parts(general)
    edit(arrays, meta)
    path = _write(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_a_general_checkpoint_loads_as_it_was_saved(general):
    model = load(general)
    assert (model.encoder_dims, model.decoder_dims) == ((8, 6), (5,))
    assert model.activations == ("tanh", "relu", "softplus") and model.hidden_dims is None
