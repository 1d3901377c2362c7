"""Nothing silently wrong with the data: integer files scaled by what they hold, every entry point
that reads rows refuses NaN/Inf (and values outside [0, 1] for a Bernoulli model) naming the
argument, row, column and value, bad option values refused before any work, and a refused Dask
connection told apart from a timeout.

Real inputs throughout: .npy / .npz / IDX files written here, memmaps, the CLI's main(), Dask's
synchronous scheduler and an in-process LocalCluster.
"""
import re
import socket
import time

import numpy as np
import pytest

from fastvae import cli, data
from fastvae.data import block_is_clean, check_data, load_dataset
from fastvae.model import VAE


def _rows(n, d=64, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random((n, d)).astype(dtype)


@pytest.fixture(scope="module")
def model():
    return VAE(64, (8,), 2, seed=1)


@pytest.fixture(scope="module")
def gaussian():
    return VAE(64, (8,), 2, "gaussian", seed=1)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "m.npz"
    VAE(64, (8,), 2, seed=1).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# item 5: integer files are scaled by what they hold

def test_uint8_zero_one_npy_is_binary_not_divided_by_255(tmp_path):
    bits = (np.random.default_rng(0).random((30, 8, 8)) < 0.3).astype(np.uint8)
    np.save(tmp_path / "bin.npy", bits)
    for mmap in (True, False):
        ds = load_dataset(tmp_path / "bin.npy", mmap=mmap)
        got = np.concatenate([ds.x_train, ds.x_test])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, bits.reshape(30, 64).astype(np.float32))
        assert set(np.unique(got)) == {0.0, 1.0}
        assert "binary" in ds.source and "not divided by 255" in ds.source
        assert "binary" in ds.describe()
        check_data(ds.x_train, "bernoulli", 64)                # usable as it is


def test_zero_one_idx_bool_and_int32_are_binary(tmp_path):
    from tests.test_data import write_idx
    bits = (np.random.default_rng(1).random((20, 6)) < 0.5)
    write_idx(tmp_path / "bits.idx.gz", bits.astype(np.uint8), gz=True)
    np.save(tmp_path / "bits_bool.npy", bits)
    np.save(tmp_path / "bits_i32.npy", bits.astype(np.int32))
    for name in ("bits.idx.gz", "bits_bool.npy", "bits_i32.npy"):
        ds = load_dataset(tmp_path / name)
        np.testing.assert_array_equal(np.concatenate([ds.x_train, ds.x_test]),
                                      bits.astype(np.float32), err_msg=name)
        assert "binary" in ds.source, name


def test_uint8_pixels_are_divided_by_255_and_say_so(tmp_path):
    pix = np.zeros((20, 5), np.uint8)
    pix[19, 4] = 2                       # one value above 1, in the last (test) row: not binary
    np.save(tmp_path / "pix.npy", pix)
    ds = load_dataset(tmp_path / "pix.npy")
    assert ds.x_test[-1, 4] == pytest.approx(2 / 255)
    assert "divided by 255" in ds.source and "binary" not in ds.source


def test_npz_train_and_test_are_scaled_together(tmp_path):
    """A 0/1 train array and a 0..255 test array must not be scaled differently."""
    rng = np.random.default_rng(2)
    train = (rng.random((10, 4)) < 0.5).astype(np.uint8)
    test = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    test[0, 0] = 255
    np.savez(tmp_path / "tt.npz", x_train=train, x_test=test)
    ds = load_dataset(tmp_path / "tt.npz")
    np.testing.assert_allclose(ds.x_train, train / 255, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test, test / 255, rtol=1e-6)
    np.savez(tmp_path / "bb.npz", x_train=train, x_test=train[:3])
    assert "binary" in load_dataset(tmp_path / "bb.npz").source


@pytest.mark.parametrize("dtype, lo, hi", [(np.int16, 0, 1000), (np.uint16, 0, 4095),
                                           (np.int8, -1, 1), (np.int64, 0, 2)])
def test_other_integers_are_refused_with_how_to_scale(tmp_path, dtype, lo, hi):
    a = np.zeros((12, 7), dtype)
    a[3, 2], a[11, 6] = lo, hi
    path = tmp_path / f"ints_{np.dtype(dtype).name}.npy"
    np.save(path, a)
    with pytest.raises(ValueError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert str(path) in msg and np.dtype(dtype).name in msg
    assert f"[{lo}, {hi}]" in msg and "float32" in msg and "does not guess" in msg


def test_integer_range_is_read_in_chunks(tmp_path, monkeypatch):
    """The scan of a uint8 memmap goes block by block (never the whole file at once), and a
    value > 1 in the very last block still decides."""
    a = np.zeros((1000, 16), np.uint8)
    a[999, 15] = 200
    np.save(tmp_path / "big.npy", a)
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")
    monkeypatch.setattr(data, "_CHUNK", 16 * 64)          # 64 rows per block
    seen = []

    class Spy:
        def __init__(self, a):
            self.a, self.dtype, self.shape = a, a.dtype, a.shape

        def __len__(self):
            return len(self.a)

        def __getitem__(self, index):
            b = self.a[index]
            if isinstance(index, slice):
                seen.append(len(b))
            return b

    assert data._int_range(Spy(mapped)) == (0, 200)
    assert len(seen) == 16 and max(seen) <= 64
    ds = load_dataset(tmp_path / "big.npy")
    assert ds.x_test[-1, 15] == pytest.approx(200 / 255)


def test_empty_files_name_the_file(tmp_path):
    for i, a in enumerate((np.empty((0, 784), np.float32), np.empty((0, 28, 28), np.uint8),
                           np.empty(0, np.float32))):
        path = tmp_path / f"empty{i}.npy"
        np.save(path, a)
        with pytest.raises(ValueError, match=re.escape(str(path)) + ".*no data"):
            load_dataset(path)
    np.savez(tmp_path / "e.npz", x_train=np.ones((3, 4), np.float32),
             x_test=np.empty((0, 4), np.float32))
    with pytest.raises(ValueError, match="e.npz.*no data"):
        load_dataset(tmp_path / "e.npz")


# ---------------------------------------------------------------------------------------------
# item 6: the fast check itself

@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4", np.float16])
@pytest.mark.parametrize("value", [np.nan, -np.nan, np.inf, -np.inf, 1.0000001, 1.5, -1e-30,
                                   -0.0, 0.0, 1.0, 3e30])
def test_block_is_clean_agrees_with_the_definition(dtype, value):
    x = _rows(40, 8)
    x = x.astype(dtype)
    with np.errstate(over="ignore"):
        x[13, 2] = value
    for block in (x, x[:, ::2], x.T):
        wide = block.astype(np.float64)
        finite = bool(np.isfinite(wide).all())
        assert block_is_clean(block, "gaussian") == finite
        assert block_is_clean(block, "bernoulli") == (finite and bool(
            ((wide >= 0) & (wide <= 1)).all()))


# ---------------------------------------------------------------------------------------------
# item 6: every entry point that reads rows checks them

@pytest.mark.parametrize("row", [0, 37, 1023, 1024, 1499])
def test_elbo_names_the_row_of_a_nan_in_any_chunk(model, row):
    x = _rows(1500)
    x[row, 5] = np.nan
    with pytest.raises(ValueError, match=f"x has a non-finite value nan at row {row}, column 5"):
        model.elbo(x, batch_size=256)
    x[row, 5] = 0.5
    assert np.isfinite(model.elbo(x, batch_size=256)).all()


def test_log_likelihood_names_the_global_row(model):
    x = _rows(60)
    x[41, 63] = np.inf
    # max_pairs // K = 3 rows per chunk: row 41 is in the middle of a chunk, on a worker thread
    with pytest.raises(ValueError, match="x has a non-finite value inf at row 41, column 63"):
        model.log_likelihood(x, K=10, max_pairs=30, progress=False)
    with pytest.raises(ValueError, match="non-finite value inf at row 141, column 63"):
        model.log_likelihood(x, K=10, max_pairs=30, progress=False, first_row=100)
    x[41, 63] = 1.25
    with pytest.raises(ValueError, match=r"x has 1.25 at row 41, column 63, outside \[0, 1\]"):
        model.log_likelihood(x, K=10, progress=False)


def test_values_above_one_refused_for_bernoulli_but_fine_for_gaussian(model, gaussian):
    x = _rows(20)
    x[7, 3] = 3.7
    for call in (lambda: model.elbo(x), lambda: model.encode(x), lambda: model.reconstruct(x),
                 lambda: model.log_likelihood(x, K=3, progress=False)):
        with pytest.raises(ValueError, match=r"x has 3.7\d* at row 7, column 3, outside \[0, 1\]"):
            call()
    assert np.isfinite(gaussian.elbo(x)).all()
    assert np.isfinite(gaussian.encode(x)[0]).all()
    x[7, 3] = -np.inf
    with pytest.raises(ValueError, match="non-finite value -inf at row 7, column 3"):
        gaussian.reconstruct(x)


def test_negative_zero_and_exact_bounds_are_accepted(model):
    x = _rows(10)
    x[0, 0], x[1, 1], x[2, 2] = -0.0, 0.0, 1.0
    model.elbo(x)
    model.encode(x)


def test_memmap_checked_chunk_by_chunk_with_the_file_row(model, tmp_path):
    m = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float32,
                                  shape=(3000, 64))
    m[:] = 0.5
    m[2987, 9] = np.nan
    m.flush()
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="row 2987, column 9"):
        model.elbo(mapped)
    with pytest.raises(ValueError, match="row 2987, column 9"):
        model.encode(mapped)
    with pytest.raises(ValueError, match="row 2987, column 9"):
        model.log_likelihood(mapped, K=200, progress=False)


def test_float64_rows_that_overflow_float32_are_named(gaussian):
    x = _rows(10, dtype=np.float64)
    x[4, 1] = 1e300
    with pytest.raises(ValueError, match="1e\\+300 at row 4, column 1, which overflows the "
                                         "model's float32"):
        gaussian.elbo(x)


def test_decode_refuses_non_finite_z(model):
    z = np.zeros((5, 2))
    z[3, 1] = np.nan
    with pytest.raises(ValueError, match="z has a non-finite value nan at row 3, column 1"):
        model.decode(z)
    assert np.isfinite(model.decode(np.zeros((5, 2)))).all()


def test_figures_refuse_bad_rows(model, tmp_path):
    pytest.importorskip("matplotlib")
    from fastvae import figures
    x = _rows(16)
    x[9, 0] = np.nan
    with pytest.raises(ValueError, match="row 9, column 0"):
        figures.reconstructions_and_samples(model, x, tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_sample_validates_n_and_seed(model):
    with pytest.raises(TypeError, match="seed must be an integer"):
        model.sample(4, seed=2.5)
    with pytest.raises(ValueError, match="seed must be in"):
        model.sample(4, seed=-1)
    with pytest.raises(ValueError, match="seed must be in"):
        model.sample(4, seed=2 ** 64)
    with pytest.raises(ValueError, match="n must be in"):
        model.sample(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        model.sample(3.0)
    assert model.sample(2, seed=2 ** 64 - 1).shape == (2, 64)
    np.testing.assert_array_equal(model.sample(3, seed=np.uint64(7)), model.sample(3, seed=7))


# ---------------------------------------------------------------------------------------------
# the CLI: checked before binarizing, exit 2 naming the file's row

def _npy(tmp_path, x, name="rows.npy"):
    path = tmp_path / name
    np.save(path, x)
    return str(path)


@pytest.mark.parametrize("bad, match", [(np.nan, "non-finite value nan at row 38, column 3"),
                                        (3.7, r"3.7\d* at row 38, column 3, outside \[0, 1\]"),
                                        (-0.5, r"-0.5 at row 38, column 3, outside")])
def test_evaluate_refuses_bad_test_rows_before_any_work(ckpt, tmp_path, capsys, bad, match):
    x = _rows(40)                        # test set: the last 4 rows, 36..39 of the file
    x[38, 3] = bad
    path = _npy(tmp_path, x)
    assert cli.main(["evaluate", str(ckpt), "--data", path, "--K", "5"]) == 2
    out, err = capsys.readouterr()
    assert re.search(match, err) and path in err, err
    assert "test ELBO" not in out
    x[38, 3] = 0.5
    assert cli.main(["evaluate", str(ckpt), "--data", _npy(tmp_path, x), "--K", "5"]) == 0
    assert "test ELBO" in capsys.readouterr().out


def test_evaluate_gaussian_refuses_inf(tmp_path, capsys):
    VAE(64, (8,), 2, "gaussian").save(tmp_path / "g.npz")
    x = _rows(40) * 10
    x[36, 0] = np.inf
    assert cli.main(["evaluate", str(tmp_path / "g.npz"), "--data", _npy(tmp_path, x),
                     "--K", "0"]) == 2
    assert "non-finite value inf at row 36, column 0" in capsys.readouterr().err


def test_evaluate_refuses_the_wrong_width(ckpt, tmp_path, capsys):
    assert cli.main(["evaluate", str(ckpt), "--data", _npy(tmp_path, _rows(40, 32)),
                     "--K", "0"]) == 2
    assert "32 columns but the model's input_dim is 64" in capsys.readouterr().err


def test_figures_command_refuses_bad_rows(ckpt, tmp_path, capsys):
    x = _rows(40)
    x[39, 63] = np.nan
    assert cli.main(["figures", str(ckpt), "--data", _npy(tmp_path, x),
                     "--out-dir", str(tmp_path / "figs")]) == 2
    assert "row 39, column 63" in capsys.readouterr().err
    assert not (tmp_path / "figs").exists()


def test_evaluate_binary_uint8_file_end_to_end(ckpt, tmp_path, capsys):
    bits = (np.random.default_rng(3).random((40, 64)) < 0.3).astype(np.uint8)
    assert cli.main(["evaluate", str(ckpt), "--data", _npy(tmp_path, bits), "--K", "3"]) == 0
    assert "0/1 values taken as binary data (not divided by 255)" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [(["--examples", "-1"], "--examples must be"),
                                         (["--examples", "0"], "--examples must be"),
                                         (["--K", "-3"], "--K must be")])
def test_evaluate_refuses_bad_counts_up_front(ckpt, tmp_path, capsys, args, match, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("evaluated before checking the options")
    monkeypatch.setattr(VAE, "elbo", no_work)
    monkeypatch.setattr(data, "load_dataset", no_work)
    assert cli.main(["evaluate", str(ckpt), "--data", "unused.npy"] + args) == 2
    out, err = capsys.readouterr()
    assert match in err and "test ELBO" not in out


def test_report_checks_K_and_examples_before_the_elbo(model, monkeypatch, capsys):
    """cmd_train's path: _report is where its --K / --eval-examples are checked."""
    monkeypatch.setattr(VAE, "elbo", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("ELBO ran before the check")))
    with pytest.raises(ValueError, match="--K must be an integer >= 0"):
        cli._report(model, _rows(5), -3, 0)
    with pytest.raises(ValueError, match="--eval-examples must be an integer >= 1"):
        cli._report(model, _rows(5), 5, 0, ll_examples=-1)
    assert capsys.readouterr().out == ""


def test_sample_command_refuses_bad_n(ckpt, tmp_path, capsys):
    assert cli.main(["sample", str(ckpt), "--n", "0", "--out", str(tmp_path / "s.png")]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert cli.main(["sample", str(ckpt), "--seed", "-1", "--out", str(tmp_path / "s.png")]) == 2
    assert "--seed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Dask: the distributed estimator checks in its tasks; a refused scheduler is said so, quickly

def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_dask_connection_is_quick_and_says_refused(ckpt, tmp_path, capsys,
                                                           monkeypatch):
    pytest.importorskip("distributed", reason="needs dask[distributed]")
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="refused") as e:
        cli._dask_client(address)                       # the default timeout, 5 s
    assert time.perf_counter() - t0 < 10
    assert "timed out" not in str(e.value) and address in str(e.value)
    monkeypatch.setattr(cli, "DASK_CONNECT_TIMEOUT", "1s")   # the CLI path, quicker
    assert cli.main(["evaluate", str(ckpt), "--data", _npy(tmp_path, _rows(40)), "--K", "2",
                     "--scheduler", address]) == 2
    assert "refused" in capsys.readouterr().err


def test_distributed_log_likelihood_names_the_global_row(model, tmp_path):
    pytest.importorskip("distributed", reason="needs dask[distributed]")
    import dask.array as da
    import fastvae.distributed as fd
    x = _rows(90)
    x[77, 12] = np.nan
    # a NumPy array (travels in the graph) and a dask array, on the synchronous scheduler
    for rows in (x, da.from_array(x, chunks=(20, 64))):
        lazy = fd.log_likelihood(model, rows, K=5, seed=1, chunk_rows=10)
        with pytest.raises(ValueError, match="data has a non-finite value nan at row 77, "
                                             "column 12"):
            lazy.compute(scheduler="sync")
    # a memmap read by the tasks from its file
    np.save(tmp_path / "rows.npy", x)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    lazy = fd.log_likelihood(model, mapped, K=5, seed=1, chunk_rows=10)
    with pytest.raises(ValueError, match="row 77, column 12"):
        lazy.compute(scheduler="sync")
    x[77, 12] = 0.5
    clean = fd.log_likelihood(model, x, K=5, seed=1, chunk_rows=10).compute(scheduler="sync")
    np.testing.assert_array_equal(clean, model.log_likelihood(x, K=5, seed=1, progress=False))


def test_distributed_check_on_a_cluster_and_with_out(model, tmp_path):
    pytest.importorskip("distributed", reason="needs dask[distributed]")
    from distributed import Client, LocalCluster
    import fastvae.distributed as fd
    x = _rows(50)
    x[31, 2] = 2.0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        with pytest.raises(ValueError, match=r"data has 2.0 at row 31, column 2, outside"):
            client.compute(fd.log_likelihood(model, x, K=4, client=client,
                                             chunk_rows=8)).result()
        with pytest.raises(ValueError, match="row 31, column 2"):
            fd.log_likelihood(model, x, K=4, client=client, chunk_rows=8,
                              out=tmp_path / "ll.npy")


# ---------------------------------------------------------------------------------------------
# issue 13: the Bernoulli x of fastvae.ops' ELBO and log-weight ops is checked in the fused pass
# (fastvae/cpu/elbo.py::refuse_bad_x, fastvae/cuda/elbo.py's twin; tests/gpu/test_x_range_gpu.py
# runs the same cases on the device)
X_OPS = ("elbo_forward", "elbo_loss_and_grads", "log_weight_forward")
X_N, X_D, X_L, X_K = 67, 129, 5, 3   # 67 rows: three 32-row tiles on the CPU, several blocks


def x_range_inputs(dtype):
    """x (N, D) in [0, 1] with exact 0s, 1s and -0.0s; logits (N, D); mu, logvar (N, L);
    dec_out (N, K, D); eps (N, K, L)."""
    rng = np.random.default_rng(13)
    x = rng.random((X_N, X_D))
    x[:, :9] = np.round(x[:, :9])
    x[3], x[4], x[5, ::2] = 0.0, 1.0, -0.0
    return tuple(a.astype(dtype) for a in (
        x, 3 * rng.standard_normal((X_N, X_D)), rng.standard_normal((X_N, X_L)),
        rng.standard_normal((X_N, X_L)), 3 * rng.standard_normal((X_N, X_K, X_D)),
        rng.standard_normal((X_N, X_K, X_L))))


def run_x_op(op, x, arrays, put=lambda a: a, **kw):
    """op of fastvae.ops on x and the other x_range_inputs (moved by ``put``) -> a result array
    or the loss."""
    from fastvae import ops
    _, logits, mu, logvar, dec_out, eps = arrays
    x, logits, mu, logvar, dec_out, eps = map(put, (x, logits, mu, logvar, dec_out, eps))
    if op == "log_weight_forward":
        return ops.log_weight_forward(x, dec_out, mu, logvar, eps, **kw)[0]
    if op == "elbo_forward":
        return ops.elbo_forward(x, logits, mu, logvar, **kw)[0]
    return ops.elbo_loss_and_grads(x, logits, mu, logvar, **kw)[0]


# (row, column, value): the last row and column, a middle row in the second CPU tile, column 0
X_BAD = [(66, 128, -1e-3), (40, 0, 1 + 1e-3), (33, 77, np.nan), (0, 5, -1.0), (31, 64, 2.0)]


def check_x_refused(op, dtype, row, col, value, put=lambda a: a):
    arrays = x_range_inputs(dtype)
    x = arrays[0].copy()
    if row + 1 < X_N:   # later bad values: the first (row-major) is named
        x[row + 1, X_D - 1] = 5.0
    if col + 1 < X_D:
        x[row, col + 1] = -7.0
    x[row, col] = value
    shown = str(dtype(value)) if value == value else "nan"
    with pytest.raises(ValueError) as err:
        run_x_op(op, x, arrays, put)
    message = str(err.value)
    assert message.startswith(f"{op}: x has {shown} at row {row}, column {col}, "), message
    assert ("not a number" if value != value else "outside [0, 1]") in message
    assert ("x must be the data in [0, 1] and dec_out the decoder's logits; did you swap them? "
            "(torch's F.binary_cross_entropy takes (recon, x))") in message


@pytest.mark.parametrize("row, col, value", X_BAD)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", X_OPS)
def test_bernoulli_x_outside_unit_interval_is_refused(op, dtype, row, col, value):
    check_x_refused(op, dtype, row, col, value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", X_OPS)
def test_bernoulli_x_exactly_zero_and_one_is_accepted(op, dtype):
    """Exact 0, 1 and -0.0 (x_range_inputs) pass, and the swapped call is what is refused."""
    arrays = x_range_inputs(dtype)
    out = run_x_op(op, arrays[0], arrays)
    assert np.all(np.isfinite(out))
    swapped = (arrays[1],) + arrays[1:]   # x = the logits: refused
    with pytest.raises(ValueError, match="did you swap them"):
        run_x_op(op, swapped[0], swapped)


@pytest.mark.parametrize("op", X_OPS)
def test_gaussian_x_is_not_range_checked(op):
    arrays = x_range_inputs(np.float64)
    x = arrays[0] * 40 - 20
    x[7, 3] = -1e3
    out = run_x_op(op, x, arrays, likelihood="gaussian", dec_logvar=np.zeros(X_D))
    assert np.all(np.isfinite(out))
