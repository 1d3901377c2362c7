"""fastvae.distributed on a real local cluster: worker processes on the loopback interface, the
same numbers as one process (bit for bit), a worker killed mid-run, the out= file, the CLI's
--scheduler.

Bit for bit holds because both sides run the GEMMs with one-thread BLAS (eval.log_likelihood
pins it; Dask's nanny also sets OPENBLAS_NUM_THREADS=1) on the same row batches: OpenBLAS on
2 threads rounds some products differently.
"""
import os
import pickle
import signal

import numpy as np
import pytest

pytest.importorskip("distributed", reason="fastvae.distributed needs dask[distributed]")

import dask                                                       # noqa: E402
import dask.array as da                                           # noqa: E402
from distributed import Client, LocalCluster                      # noqa: E402
from distributed.diagnostics.plugin import SchedulerPlugin        # noqa: E402

import fastvae.distributed as fd                                  # noqa: E402
from fastvae import cli                                           # noqa: E402
from fastvae.model import VAE                                     # noqa: E402

N_WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    """Not the default client: every call names it, and a test without it has no cluster.
    Dask's nannies write OMP_NUM_THREADS=1 (and the like) into this process's environment before
    spawning their workers; it is put back afterwards, so later test modules keep their threads."""
    environ = dict(os.environ)
    try:
        with LocalCluster(n_workers=N_WORKERS, processes=True, threads_per_worker=1,
                          host="127.0.0.1", dashboard_address=None) as local, \
                Client(local, set_as_default=False) as client:
            yield local, client
    finally:
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)


@pytest.fixture
def client(cluster):
    client = cluster[1]
    client.wait_for_workers(N_WORKERS, timeout=60)   # a killed worker's nanny restarts it
    return client


def _model(dtype, seed=3):
    """Awkward small sizes; parameters moved off their init so every layer matters."""
    model = VAE(input_dim=64, hidden_dims=(31,), latent_dim=5, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    model.params.flat[...] += 0.05 * rng.standard_normal(model.n_params).astype(dtype)
    return model


def _rows(n, dtype, seed=0):
    return np.random.default_rng(seed).random((n, 64)).astype(dtype)


def _reference(model, x, K, seed, max_pairs=fd.DEFAULT_MAX_PAIRS):
    return model.log_likelihood(x, K=K, seed=seed, max_pairs=max_pairs, progress=False)


def _compute_locally(lazy):
    """Dask's synchronous scheduler in this process. (Its threaded one runs several
    eval.log_likelihood calls at once; their process-wide one-thread-BLAS limits then end out of
    order, which in a check left this process's BLAS on one thread for good.)"""
    return lazy.compute(scheduler="sync")


def _assert_identical(got, ref):
    got = np.asarray(got)
    assert got.shape == ref.shape, f"shape {got.shape} != {ref.shape}"
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, (f"{bad.size} rows differ, first {bad[:5].tolist()}: "
                           f"{got[bad[:5]]} vs {ref[bad[:5]]}")


# ---------------------------------------------------------------------------------------------
# the numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_rows_give_the_single_process_numbers(client, dtype):
    model, x = _model(dtype), _rows(137, dtype)
    ll = fd.log_likelihood(model, x, K=300, seed=11, max_pairs=1000, client=client,
                           chunk_rows=20)
    assert isinstance(ll, da.Array) and ll.shape == (137,) and ll.dtype == np.float64
    assert ll.chunks == ((21,) * 6 + (11,),)   # multiples of max_pairs // K = 3 rows
    _assert_identical(client.compute(ll).result(), _reference(model, x, 300, 11, 1000))


def test_a_dask_array_keeps_its_chunks_aligned_to_the_gemm_batches(client):
    model, x = _model("float32"), _rows(101, "float32")
    # K=50: 81 rows per GEMM batch; chunks of 13 rows (and of 20 columns) are re-cut at 81
    ll = fd.log_likelihood(model, da.from_array(x, chunks=(13, 20)), K=50, seed=2,
                           client=client)
    assert ll.chunks == ((81, 20),)
    _assert_identical(client.compute(ll).result(), _reference(model, x, 50, 2))
    # K=5000 > max_pairs: one row per batch, any chunking is kept
    ll = fd.log_likelihood(model, da.from_array(x[:9], chunks=(4, 64)), K=5000, seed=2,
                           client=client)
    assert ll.chunks == ((4, 4, 1),)
    _assert_identical(client.compute(ll).result(), _reference(model, x[:9], 5000, 2))


def test_default_chunks_give_every_worker_rows(client):
    model, x = _model("float64"), _rows(137, "float64")
    # 2^18 pairs per task would be one task; an equal share is 69 rows, up to 80 (4096 // K = 40)
    ll = fd.log_likelihood(model, x, K=100, client=client)
    assert ll.chunks == ((80, 57),)
    _assert_identical(client.compute(ll).result(), _reference(model, x, 100, model.seed + 2))


def test_a_memmap_is_read_by_the_workers_from_its_file(tmp_path):
    model, x = _model("float32"), _rows(2000, "float32")
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    from_file = fd.log_likelihood(model, mapped, K=40, seed=5, chunk_rows=300)
    in_memory = fd.log_likelihood(model, x, K=40, seed=5, chunk_rows=300)
    graph_bytes = lambda a: len(pickle.dumps(dict(a.__dask_graph__())))   # noqa: E731
    assert graph_bytes(in_memory) > x.nbytes > 10 * graph_bytes(from_file)
    _assert_identical(_compute_locally(from_file), _reference(model, x, 40, 5))


def test_without_a_client_dask_runs_the_tasks_locally():
    model, x = _model("float64"), _rows(23, "float64")
    # no default client exists; chunk_rows 5 -> 6, a multiple of max_pairs // K = 2
    ll = fd.log_likelihood(model, x, K=9, seed=1, max_pairs=18, chunk_rows=5)
    assert ll.chunks == ((6, 6, 6, 5),)
    _assert_identical(_compute_locally(ll), _reference(model, x, 9, 1, max_pairs=18))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_first_row_continues_the_noise_of_the_whole_run(dtype):
    """eval.log_likelihood(first_row=a) on rows a:b is rows a:b of the whole run: bit for bit
    when a is a multiple of max_pairs // K (7 here), and a row computed without first_row is
    another row's estimate."""
    model, x = _model(dtype), _rows(45, dtype)
    whole = model.log_likelihood(x, K=13, seed=4, max_pairs=91, progress=False)
    part = model.log_likelihood(x[14:30], K=13, seed=4, max_pairs=91, progress=False,
                                first_row=14)
    _assert_identical(part, whole[14:30])
    unshifted = model.log_likelihood(x[14:30], K=13, seed=4, max_pairs=91, progress=False)
    assert not np.any(unshifted == whole[14:30])
    with pytest.raises(ValueError, match="first_row must be in"):
        model.log_likelihood(x, K=3, first_row=-1)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_naming_the_argument(client, tmp_path):
    model, x = _model("float32"), _rows(5, "float32")
    with pytest.raises(ValueError, match=r"data must be \(N, 64\)"):
        fd.log_likelihood(model, x[:, :60], K=3, client=client)
    with pytest.raises(ValueError, match=r"data must be \(N, 64\)"):
        fd.log_likelihood(model, da.ones((5, 63), chunks=2), K=3, client=client)
    with pytest.raises(TypeError, match="data must be a floating array"):
        fd.log_likelihood(model, np.ones((5, 64), np.int32), K=3, client=client)
    with pytest.raises(TypeError, match="data must be a floating array"):
        fd.log_likelihood(model, da.ones((5, 64), dtype=np.uint8, chunks=2), K=3, client=client)
    with pytest.raises(ValueError, match="K must be in"):
        fd.log_likelihood(model, x, K=0, client=client)
    with pytest.raises(TypeError, match="K must be an integer"):
        fd.log_likelihood(model, x, K=2.5, client=client)
    with pytest.raises(ValueError, match="data must have at least one row"):
        fd.log_likelihood(model, da.ones((0, 64), chunks=2), K=3, client=client)
    with pytest.raises(ValueError, match="chunk_rows must be in"):
        fd.log_likelihood(model, x, K=3, client=client, chunk_rows=0)
    with pytest.raises(TypeError, match="out must be"):
        fd.log_likelihood(model, x, K=3, client=client, out=[0.0] * 5)
    wrong = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32,
                                      shape=(5,))
    with pytest.raises(ValueError, match=r"float64 memmap of shape \(5,\)"):
        fd.log_likelihood(model, x, K=3, client=client, out=wrong)


# ---------------------------------------------------------------------------------------------
# out=: the workers write the file
# ---------------------------------------------------------------------------------------------
def test_out_path_is_written_by_the_workers(client, tmp_path):
    model, x = _model("float32"), _rows(137, "float32")
    result = fd.log_likelihood(model, x, K=30, seed=4, chunk_rows=25, client=client,
                               out=tmp_path / "ll.npy")
    assert isinstance(result, np.memmap) and result.shape == (137,)
    ref = _reference(model, x, 30, 4)
    _assert_identical(result, ref)
    _assert_identical(np.load(tmp_path / "ll.npy"), ref)


def test_out_memmap_is_filled_in_place(client, tmp_path):
    model, x = _model("float64"), _rows(61, "float64")
    out = np.lib.format.open_memmap(tmp_path / "ll.npy", mode="w+", dtype=np.float64,
                                    shape=(61,))
    out[:] = np.nan
    assert fd.log_likelihood(model, x, K=20, seed=6, chunk_rows=8, client=client,
                             out=out) is out
    _assert_identical(out, _reference(model, x, 20, 6))


# ---------------------------------------------------------------------------------------------
# a worker dies mid-run
# ---------------------------------------------------------------------------------------------
class Completions(SchedulerPlugin):
    """Runs in the scheduler (in this process): every completed chunk task (key (name, i)) whose
    name starts with prefix, with the worker that reported it."""

    def __init__(self, prefix):
        self.prefix, self.completed = prefix, []   # [(key, worker)]

    def transition(self, key, start, finish, *args, stimulus_id=None, worker=None, **kwargs):
        chunk = isinstance(key, tuple) and key[0].startswith(self.prefix)
        if chunk and start == "processing" and finish == "memory":
            self.completed.append((key, worker))
            self.completed_on(worker)

    def completed_on(self, worker):
        pass


class KillAtFirstResult(Completions):
    """... and SIGKILLs the worker of the first completion at once: a machine lost with one
    finished result in its memory and its next task in flight (not a polite shutdown)."""

    def __init__(self, prefix, pids):
        super().__init__(prefix)
        self.pids, self.victim = pids, None

    def completed_on(self, worker):
        if self.victim is None:
            self.victim = worker
            os.kill(self.pids[worker], signal.SIGKILL)


def _kill_during(cluster, prefix, run):
    local, client = cluster
    client.wait_for_workers(N_WORKERS, timeout=60)
    plugin = KillAtFirstResult(prefix, client.run(os.getpid))
    local.scheduler.add_plugin(plugin, name="kill-at-first-result")
    try:
        result = run()
    finally:
        local.scheduler.remove_plugin(name="kill-at-first-result")
    assert plugin.victim is not None, "no worker was killed"
    return result, plugin


def _assert_only_lost_work_repeated(plugin, keys):
    """Every key completed; a key completed again only because the killed worker held it."""
    done = {}
    for key, worker in plugin.completed:
        done.setdefault(key, []).append(worker)
    assert set(done) == set(keys), f"never completed: {set(keys) - set(done)}"
    for key, workers in done.items():
        assert all(w == plugin.victim for w in workers[:-1]), \
            f"{key} completed on {workers} (killed: {plugin.victim})"
    assert any(len(w) == 2 for w in done.values()), "the killed worker's result was not lost"
    assert len(plugin.completed) < 2 * len(keys), "the whole run was repeated"


def test_a_worker_killed_mid_run_loses_nothing(cluster):
    client = cluster[1]
    model, x = _model("float32"), _rows(96, "float32")
    ll = fd.log_likelihood(model, x, K=3000, seed=8, chunk_rows=4, client=client)   # 24 tasks
    got, plugin = _kill_during(cluster, "fastvae-log-likelihood",
                               lambda: client.compute(ll).result())
    _assert_only_lost_work_repeated(plugin, ll.__dask_keys__())
    _assert_identical(got, _reference(model, x, 3000, 8))


def test_a_worker_killed_while_writing_out_leaves_a_complete_file(cluster, tmp_path):
    model, x = _model("float64"), _rows(64, "float64")
    out = np.lib.format.open_memmap(tmp_path / "ll.npy", mode="w+", dtype=np.float64,
                                    shape=(64,))
    out[:] = np.nan   # a row that no task writes stays NaN
    _, plugin = _kill_during(cluster, "_write_block", lambda: fd.log_likelihood(
        model, x, K=2000, seed=9, chunk_rows=4, client=cluster[1], out=out))
    writes = {key for key, _ in plugin.completed}
    assert len(writes) == 16   # one write task per chunk of 4 rows
    _assert_only_lost_work_repeated(plugin, writes)
    _assert_identical(np.load(tmp_path / "ll.npy"), _reference(model, x, 2000, 9))


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _log_likelihood_line(out):
    return next(line for line in out.splitlines() if line.startswith("test log p(x)"))


def test_cli_evaluate_on_the_cluster(cluster, client, tmp_path, capsys):
    local = cluster[0]
    _model("float32").save(tmp_path / "m.npz")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x_train=rng.random((40, 64), dtype=np.float32),
             x_test=rng.random((33, 64), dtype=np.float32))
    args = ["evaluate", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d.npz"),
            "--K", "2000", "--seed", "3"]   # 2 rows per GEMM batch: a task per worker
    seen = Completions("fastvae-log-likelihood")
    local.scheduler.add_plugin(seen, name="count")
    try:
        assert cli.main(args + ["--scheduler", local.scheduler_address]) == 0
    finally:
        local.scheduler.remove_plugin(name="count")
    on_cluster = capsys.readouterr().out
    assert f"dask: {local.scheduler_address}, {N_WORKERS} workers" in on_cluster
    assert len(seen.completed) >= N_WORKERS, "the log-likelihood did not run on the cluster"
    assert cli.main(args) == 0
    local_line = _log_likelihood_line(capsys.readouterr().out)
    assert local_line.startswith("test log p(x) (IWAE, K=2000): -")
    assert _log_likelihood_line(on_cluster).split("nats")[0] == local_line.split("nats")[0]


def test_cli_reports_an_unreachable_scheduler(tmp_path, capsys):
    _model("float32").save(tmp_path / "m.npz")
    np.savez(tmp_path / "d.npz", x_train=_rows(10, "float32"), x_test=_rows(5, "float32"))
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = cli.main(["evaluate", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d.npz"),
                         "--K", "3", "--scheduler", "tcp://127.0.0.1:9"])   # nothing listens
    assert code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# stats=True, and any encoder and decoder (fastvae.CallableVAE)
# ---------------------------------------------------------------------------------------------
def _assert_same_estimate(got, want):
    _assert_identical(got.log_likelihood, want.log_likelihood)
    _assert_identical(got.ess, want.ess)
    _assert_identical(got.latent_variance, want.latent_variance)
    assert got.summary() == want.summary()


def test_stats_on_the_cluster_are_those_of_one_machine(client, tmp_path):
    model, x = _model("float32"), _rows(101, "float32")
    want = model.log_likelihood(x, K=40, seed=2, stats=True, progress=False)
    _assert_same_estimate(fd.log_likelihood(model, x, K=40, seed=2, chunk_rows=17,
                                            client=client, stats=True), want)
    written = fd.log_likelihood(model, x, K=40, seed=2, chunk_rows=30, client=client,
                                stats=True, out=tmp_path / "ll.npy")
    assert isinstance(written.log_likelihood, np.memmap)
    _assert_same_estimate(written, want)
    _assert_same_estimate(fd.log_likelihood(model, x, K=40, seed=2, stats=True), want)


def test_torch_callables_are_shipped_to_the_workers(client):
    """The functions close over torch modules: cloudpickle carries them to the workers."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    enc = torch.nn.Sequential(torch.nn.Linear(64, 17), torch.nn.Tanh(), torch.nn.Linear(17, 8))
    dec = torch.nn.Sequential(torch.nn.Linear(4, 23), torch.nn.ReLU(), torch.nn.Linear(23, 64))
    import fastvae
    callables = fastvae.CallableVAE(lambda x: enc(x).chunk(2, dim=1), dec, inputs="torch")
    x = _rows(77, "float32")
    want = fastvae.log_likelihood(lambda x: enc(x).chunk(2, dim=1), dec, x, K=30, seed=5,
                                  inputs="torch", stats=True, progress=False)
    lazy = fd.log_likelihood(callables, x, K=30, seed=5, chunk_rows=20, client=client)
    _assert_identical(client.compute(lazy).result(), want.log_likelihood)
    _assert_same_estimate(fd.log_likelihood(callables, x, K=30, seed=5, chunk_rows=20,
                                            client=client, stats=True), want)
    with pytest.raises(TypeError, match="model must be a fastvae.VAE or a fastvae.CallableVAE, "
                                        "got tuple"):
        fd.log_likelihood((enc, dec), x, K=3, client=client)


def test_cli_evaluate_prints_the_statistics_and_writes_out(cluster, client, tmp_path, capsys):
    """A checkpoint saved by VAE.from_torch, evaluated locally and with --scheduler."""
    torch = pytest.importorskip("torch")
    import fastvae
    torch.manual_seed(5)
    enc = torch.nn.Sequential(torch.nn.Linear(64, 19), torch.nn.Softplus())
    heads = torch.nn.Linear(19, 3), torch.nn.Linear(19, 3)
    dec = torch.nn.Sequential(torch.nn.Linear(3, 11), torch.nn.Tanh(), torch.nn.Linear(11, 64),
                              torch.nn.Sigmoid())
    fastvae.VAE.from_torch(enc, *heads, dec).save(tmp_path / "imported.npz")
    np.savez(tmp_path / "d.npz", x_train=_rows(20, "float32"), x_test=_rows(23, "float32"))
    args = ["evaluate", str(tmp_path / "imported.npz"), "--data", str(tmp_path / "d.npz"),
            "--K", "50", "--seed", "1"]
    assert cli.main(args + ["--out", str(tmp_path / "local.npy")]) == 0
    local = capsys.readouterr().out
    assert cli.main(args + ["--scheduler", cluster[0].scheduler_address,
                            "--out", str(tmp_path / "cluster.npy")]) == 0
    remote = capsys.readouterr().out
    for text in (local, remote):
        assert "effective sample size median" in text and "of K=50" in text
        assert "active latent units: " in text and " of 3 (Var_x E_q[z_u] > 0.01)" in text
    lines = [[line for line in text.splitlines() if line.startswith(("test log p", "importance",
                                                                     "active"))]
             for text in (local, remote)]
    assert [line.split("nats")[0] for line in lines[0]] == \
        [line.split("nats")[0] for line in lines[1]]
    _assert_identical(np.load(tmp_path / "cluster.npy"), np.load(tmp_path / "local.npy"))
    assert np.all(np.isfinite(np.load(tmp_path / "local.npy")))
    assert cli.main(["evaluate", str(tmp_path / "imported.npz"), "--data",
                     str(tmp_path / "d.npz"), "--K", "0", "--out", str(tmp_path / "x.npy")]) == 2
    assert "--out holds the per-example log p(x): it needs --K >= 1" in capsys.readouterr().err
