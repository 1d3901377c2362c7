"""fastvae.data: IDX / npy / npz readers, Fashion-MNIST discovery, digits fallback, checks.

Every fixture is written into tmp_path by the small IDX writer below, independent of the reader.
"""
import gzip
import os
import struct
import sys

import numpy as np
import pytest

from fastvae import data
from fastvae.data import (binarize, check_data, find_fashion_mnist, load_array, load_dataset,
                          load_digits, load_fashion_mnist, read_idx)

CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def write_idx(path, a, code=None, gz=False, extra=b"", cut=0):
    """Write ``a`` as IDX (big-endian); ``extra`` appended, ``cut`` bytes dropped from the end."""
    code = code if code is not None else {v: k for k, v in CODES.items()}[
        np.dtype(a.dtype).newbyteorder(">").str if a.dtype.itemsize > 1 else
        {"u": ">u1", "i": ">i1"}[a.dtype.kind]]
    raw = (bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
           + np.ascontiguousarray(a, CODES.get(code, ">u1")).tobytes() + extra)
    raw = raw[:len(raw) - cut]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)
    return path


def random_array(code, shape, rng):
    dt = np.dtype(CODES[code]).newbyteorder("=")
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt) * 1e3
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


# ---------------------------------------------------------------------------------------------
# IDX

@pytest.mark.parametrize("code", sorted(CODES))
@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 6, 5), (1,), (2, 1, 1, 3)])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, code, shape, gz):
    a = random_array(code, shape, np.random.default_rng(code * 100 + len(shape)))
    p = write_idx(tmp_path / "a.idx", a, code, gz=gz)
    b = read_idx(p)
    assert b.shape == shape
    assert b.dtype == a.dtype and b.dtype.isnative
    np.testing.assert_array_equal(b, a)


def test_idx_gzip_detected_by_magic_not_suffix(tmp_path):
    a = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain.idx", a, gz=True)), a)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "fake.gz", a, gz=False)), a)


def test_idx_empty_and_zero_dims(tmp_path):
    a = np.zeros((0, 28, 28), np.uint8)
    for mmap in (False, True):
        b = read_idx(write_idx(tmp_path / "e.idx", a), mmap=mmap)
        assert b.shape == (0, 28, 28) and b.dtype == np.uint8


@pytest.mark.parametrize("code", [0x08, 0x0B, 0x0E])
def test_idx_mmap(tmp_path, code):
    a = random_array(code, (6, 4, 3), np.random.default_rng(1))
    p = write_idx(tmp_path / "m.idx", a, code)
    m = read_idx(p, mmap=True)
    assert isinstance(m, np.memmap)
    assert not m.flags.writeable
    assert m.shape == a.shape and m.dtype.newbyteorder("=") == a.dtype
    np.testing.assert_array_equal(m, a)
    with pytest.raises(ValueError):
        m[0, 0, 0] = 1
    # gzip cannot be mapped: decompressed into memory instead
    g = read_idx(write_idx(tmp_path / "m.idx.gz", a, code, gz=True), mmap=True)
    assert not isinstance(g, np.memmap)
    np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_errors(tmp_path, gz):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    cases = {
        "bad.idx": (dict(), b"\x01\x00\x08\x01", "bad magic"),
        "truncated.idx": (dict(cut=5), None, "truncated IDX file"),
        "trailing.idx": (dict(extra=b"\x00\x01\x02"), None, "3 trailing bytes"),
        "unknown.idx": (dict(code=0x0A), None, "unknown IDX type code 0x0A"),
        "short_header.idx": (dict(cut=100), None, "truncated IDX file"),
    }
    for name, (kw, raw, match) in cases.items():
        p = tmp_path / (name + (".gz" if gz else ""))
        if raw is not None:
            with (gzip.open if gz else open)(p, "wb") as f:
                f.write(raw + b"\x00" * 8)
        else:
            write_idx(p, a, gz=gz, **kw)
        with pytest.raises(ValueError, match=match) as e:
            read_idx(p)
        assert str(p) in str(e.value), name
        if not gz:
            with pytest.raises(ValueError, match=match):
                read_idx(p, mmap=True)


def test_idx_truncated_message_has_sizes(tmp_path):
    p = write_idx(tmp_path / "t.idx", np.ones((10, 10), np.float32), cut=8)
    with pytest.raises(ValueError, match=r"shape \(10, 10\) of float32: 400 bytes .* only 392"):
        read_idx(p)


def test_idx_corrupt_gzip(tmp_path):
    p = write_idx(tmp_path / "c.gz", np.ones((50, 50), np.uint8), gz=True)
    raw = p.read_bytes()
    p.write_bytes(raw[:len(raw) // 2])                     # gzip stream cut mid-way
    with pytest.raises(ValueError, match=str(p)):
        read_idx(p)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# .npy / .npz

def test_load_array_npy_npz(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 3)).astype(np.float32), rng.random((4, 3))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "one.npz", x=a)
    np.savez_compressed(tmp_path / "two.npz", a=a, b=b)
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), a)
    m = load_array(tmp_path / "a.npy", mmap=True)
    assert isinstance(m, np.memmap) and not m.flags.writeable
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz"), a)
    np.testing.assert_array_equal(load_array(tmp_path / "two.npz", key="b"), b)
    with pytest.raises(ValueError, match="pass key="):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no array 'c'"):
        load_array(tmp_path / "two.npz", key="c")
    write_idx(tmp_path / "i.idx", np.ones(3, np.uint8))
    with pytest.raises(ValueError, match="not a .npy or .npz"):
        load_array(tmp_path / "i.idx")


def test_load_array_refuses_pickles(tmp_path):
    obj = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "o.npz", x=obj)
    for name in ("o.npy", "o.npz"):
        with pytest.raises(ValueError, match="object .pickled. array") as e:
            load_array(tmp_path / name)
        assert name in str(e.value)
        with pytest.raises(ValueError, match="pickled"):
            load_dataset(str(tmp_path / name))


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST discovery

def fake_fashion(folder, n_train=7, n_test=3, gz=True, seed=0):
    """Write the four Fashion-MNIST IDX files with tiny random contents; returns the arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{sfx}"), x, gz=gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{sfx}"), y, gz=gz)
        arrays[prefix] = (x, y)
    return arrays


@pytest.fixture
def no_fashion(tmp_path, monkeypatch):
    """An environment with no Fashion-MNIST anywhere: empty $FASTVAE_DATA, home, system dir."""
    for d in ("env", "home", "system"):
        (tmp_path / d).mkdir()
    monkeypatch.setenv("FASTVAE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", (str(tmp_path / "system"),))
    return tmp_path


@pytest.mark.parametrize("sub", ["", "fashion-mnist", os.path.join("data", "fashion")])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_env(no_fashion, sub, gz):
    arrays = fake_fashion(no_fashion / "env" / sub, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_fashion_mnist(split)
        x0, y0 = arrays[prefix]
        assert x.shape == (len(x0), 784) and x.dtype == np.float32
        assert 0 <= x.min() and x.max() <= 1
        np.testing.assert_allclose(x, x0.reshape(len(x0), -1) / 255, rtol=1e-6)
        assert y.dtype == np.uint8 and y.shape == (len(x0),)
        np.testing.assert_array_equal(y, y0)
        raw, _ = load_fashion_mnist(split, flatten=False, scale=False)
        assert raw.shape == (len(x0), 28, 28) and raw.dtype == np.uint8
        np.testing.assert_array_equal(raw, x0)


def test_fashion_mnist_search_order(no_fashion, monkeypatch):
    home = no_fashion / "home" / ".cache" / "fastvae"
    fake_fashion(no_fashion / "system", n_train=2, seed=1)
    assert load_fashion_mnist()[0].shape[0] == 2
    fake_fashion(home, n_train=4, seed=2)
    assert load_fashion_mnist()[0].shape[0] == 4
    fake_fashion(no_fashion / "env", n_train=5, seed=3)
    assert load_fashion_mnist()[0].shape[0] == 5
    assert os.path.dirname(find_fashion_mnist("test")[1]) == str(no_fashion / "env")
    monkeypatch.delenv("FASTVAE_DATA")
    assert load_fashion_mnist()[0].shape[0] == 4


def test_fashion_mnist_missing_message(no_fashion):
    fake_fashion(no_fashion / "env" / "other")            # a layout that is not searched
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist("test")
    msg = str(e.value)
    for folder in ("env", os.path.join("home", ".cache", "fastvae"), "system"):
        assert str(no_fashion / folder) in msg
    assert str(no_fashion / "env" / "data" / "fashion") in msg
    assert "t10k-images-idx3-ubyte" in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "$FASTVAE_DATA" in msg
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("validation")


def test_fashion_mnist_bad_files(no_fashion):
    env = no_fashion / "env"
    fake_fashion(env)
    write_idx(env / "train-labels-idx1-ubyte.gz", np.zeros(6, np.uint8), gz=True)
    with pytest.raises(ValueError, match="expected 7 uint8 labels"):
        load_fashion_mnist("train")


# ---------------------------------------------------------------------------------------------
# digits and load_dataset

def test_digits():
    pytest.importorskip("sklearn", reason="scikit-learn is an optional dependency")
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))
    raw, _ = load_digits(flatten=False, scale=False)
    assert raw.shape == (1797, 8, 8) and raw.max() == 16
    np.testing.assert_array_equal(x, raw.reshape(1797, 64) / np.float32(16))
    ds = load_dataset("digits")
    assert (ds.name, ds.x_train.shape, ds.x_test.shape) == ("digits", (1500, 64), (297, 64))
    ds2 = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_train, ds2.x_train)        # deterministic split
    np.testing.assert_array_equal(np.sort(np.concatenate([ds.y_train, ds.y_test])), np.sort(y))


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


def test_auto_falls_back_to_digits(no_fashion):
    pytest.importorskip("sklearn", reason="scikit-learn is an optional dependency")
    with pytest.warns(UserWarning, match="Fashion-MNIST not found.*digits") as w:
        ds = load_dataset("auto")
    assert "dataset-fashion-mnist" in str(w[0].message)
    assert ds.name == "digits" and ds.x_train.shape == (1500, 64)


def test_auto_without_anything(no_fashion, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(FileNotFoundError, match="(?s)apt-get install.*pip install scikit-learn"):
        load_dataset("auto")


def test_auto_finds_fashion(no_fashion, recwarn):
    fake_fashion(no_fashion / "env" / "fashion-mnist")
    ds = load_dataset("auto")
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    assert ds.name == "fashion-mnist"
    assert ds.x_train.shape == (7, 784) and ds.x_test.shape == (3, 784)
    assert ds.source == str(no_fashion / "env" / "fashion-mnist")
    assert "fashion-mnist: 7 train + 3 test rows of 784" in ds.describe()
    assert load_dataset("fashion_mnist").x_test.shape == (3, 784)


def test_load_dataset_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(20, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / "x.idx.gz", imgs, gz=True)
    ds = load_dataset(str(tmp_path / "x.idx.gz"))
    assert ds.x_train.shape == (18, 20) and ds.x_test.shape == (2, 20)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_allclose(np.concatenate([ds.x_train, ds.x_test]),
                               imgs.reshape(20, 20) / 255, rtol=1e-6)

    x = rng.random((30, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "x.npy")
    assert isinstance(ds.x_train, np.memmap)                       # float32 stays mapped
    np.testing.assert_array_equal(ds.x_test, x[-3:])
    write_idx(tmp_path / "x.idx", x)
    ds = load_dataset(tmp_path / "x.idx")                          # big-endian: converted
    assert ds.x_train.dtype == np.float32 and ds.x_train.dtype.isnative
    np.testing.assert_array_equal(ds.x_train, x[:-3])

    np.savez(tmp_path / "tt.npz", x_train=x[:10], x_test=x[10:], other=x)
    ds = load_dataset(tmp_path / "tt.npz")
    np.testing.assert_array_equal(ds.x_test, x[10:])
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    with pytest.raises(ValueError, match="expected arrays 'x_train' and 'x_test'"):
        load_dataset(tmp_path / "bad.npz")
    np.save(tmp_path / "flat.npy", x[0])
    with pytest.raises(ValueError, match="expected rows"):
        load_dataset(tmp_path / "flat.npy")
    with pytest.raises(FileNotFoundError, match="unknown dataset 'mnist'.*fashion-mnist"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# binarize and check_data

def test_binarize():
    rng = np.random.default_rng(0)
    x = rng.random((400, 300)).astype(np.float32)
    a, b = binarize(x, np.random.default_rng(7)), binarize(x, 7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 1.0}
    assert not np.array_equal(a, binarize(x, 8))
    # mean of Bernoulli(x) draws: |mean(a) - mean(x)| within 6 standard errors
    assert abs(a.mean() - x.mean()) < 6 * np.sqrt((x * (1 - x)).sum()) / x.size
    assert abs(binarize(np.full(100_000, 0.3), 1).mean() - 0.3) < 6 * np.sqrt(0.21 / 100_000)
    assert binarize(np.zeros(50), 0).sum() == 0 and binarize(np.ones(50), 0).sum() == 50
    assert binarize(x.astype(np.float64), 0).dtype == np.float64
    out = np.empty_like(x)
    assert binarize(x, 7, out=out) is out
    np.testing.assert_array_equal(out, a)


def test_check_data_ok_and_width():
    x = np.random.default_rng(0).random((31, 7)).astype(np.float32)
    check_data(x, "bernoulli", 7)
    check_data(x * 5 - 2, "gaussian", 7)
    check_data(x.astype(np.float64), "bernoulli")
    check_data((x > 0.5), "bernoulli", 7)
    with pytest.raises(ValueError, match="x has 7 columns but the model's input_dim is 784"):
        check_data(x, "bernoulli", 784)
    with pytest.raises(ValueError, match="2-D"):
        check_data(x[0], "bernoulli", 7)
    with pytest.raises(ValueError, match="empty"):
        check_data(x[:0], "bernoulli", 7)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        check_data(x, "poisson", 7)
    with pytest.raises(ValueError, match="numeric"):
        check_data(x.astype(complex), "gaussian", 7)


@pytest.mark.parametrize("block_rows", [None, 1, 4, 1000])
def test_check_data_first_offender(block_rows):
    x = np.random.default_rng(0).random((31, 7)).astype(np.float32)
    for bad, match in ((np.nan, "non-finite value nan at row 13, column 5"),
                       (-np.inf, "non-finite value -inf at row 13, column 5")):
        y = x.copy()
        y[13, 5] = bad
        y[20, 0] = bad
        for lik in ("bernoulli", "gaussian"):
            with pytest.raises(ValueError, match=match):
                check_data(y, lik, 7, block_rows=block_rows)
    y = x.copy()
    y[17, 2], y[25, 1] = 1.5, -0.25
    with pytest.raises(ValueError, match=r"x has 1.5 at row 17, column 2, outside \[0, 1\]"):
        check_data(y, "bernoulli", 7, block_rows=block_rows)
    check_data(y, "gaussian", 7, block_rows=block_rows)
    with pytest.raises(ValueError, match="x_test has 255 at row 0, column 0"):
        check_data(np.full((3, 2), 255, np.uint8), "bernoulli", name="x_test")


def test_check_data_memmap_in_blocks(tmp_path, monkeypatch):
    """A memmap is read block by block: never more than block_rows rows at once."""
    n, d = 1000, 16
    m = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                  shape=(n, d))
    m[:] = 0.5
    m[987, 3] = 2.0
    m.flush()
    m = load_array(tmp_path / "big.npy", mmap=True)
    seen = []
    real_asarray = np.asarray

    def spy(a, *args, **kw):
        seen.append(len(a))
        return real_asarray(a, *args, **kw)

    monkeypatch.setattr(data.np, "asarray", spy)
    with pytest.raises(ValueError, match="row 987, column 3"):
        check_data(m, "bernoulli", d, block_rows=100)
    monkeypatch.undo()
    assert seen and max(seen) <= 100 and len(seen) == 10
    check_data(m[:900], "bernoulli", d, block_rows=64)


def test_the_readme_spelling_fv_data_is_the_one_dataset_module():
    import importlib.util

    import fastvae as fv
    assert fv.data is data and fv.data.load_dataset is load_dataset   # README.md example
    assert importlib.util.find_spec("fastvae.datasets") is None       # no second name for it
    assert not hasattr(fv, "datasets")
