"""Worker threads (fastvae/_threads.py): order, errors, thread-count independence, settings."""
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastvae
from fastvae import _threads


@pytest.fixture
def threads():
    yield _threads.set_num_threads
    _threads.set_num_threads(None)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ordered_map_keeps_order_and_uses_workers(threads, n):
    names = set()

    def work(i):
        names.add(threading.current_thread().name)
        time.sleep(0.001 * (7 - i % 7))   # later items often finish first
        return i * i
    assert list(_threads.ordered_map(work, range(23), n_threads=n)) == [i * i for i in range(23)]
    assert any(name.startswith("fastvae") for name in names) == (n > 1)


def test_ordered_map_error_stops_the_work_and_propagates():
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise ZeroDivisionError("item 3")
        return i
    with pytest.raises(ZeroDivisionError, match="item 3"):
        list(_threads.ordered_map(work, range(1000), n_threads=2))
    when_raised = len(started)
    # the error stopped the first window (2 x 2 items); no later window started
    assert 1 <= when_raised <= 4 and 3 in started, started
    # a later phase on the same pool runs after every tile of the failed one has returned: had a
    # tile still been running (or starting) after the re-raise, it would show up here
    assert list(_threads.ordered_map(lambda i: i, range(8), n_threads=2)) == list(range(8))
    assert len(started) == when_raised, f"{len(started) - when_raised} items ran after the error"


def test_single_threaded_blas_is_counted_and_restored():
    # openblas_set_num_threads_local returns the value it replaces: 1 inside (also nested and
    # from another thread), the count from before once the last user has left
    from fastvae.cpu._blas import set_blas_threads_local
    if set_blas_threads_local(0) is None or not _blas_is_numpys_openblas():
        pytest.skip("NumPy's BLAS has no openblas_set_num_threads_local")
    before = set_blas_threads_local(0)   # 0 sets the global count, so this returns it
    seen = []
    with _threads.single_threaded_blas():
        with _threads.single_threaded_blas():
            seen.append(set_blas_threads_local(1))
        seen.append(set_blas_threads_local(1))
        t = threading.Thread(target=lambda: seen.append(set_blas_threads_local(1)))
        t.start()
        t.join()
    assert seen == [1, 1, 1]
    assert set_blas_threads_local(0) == before


def _blas_is_numpys_openblas():
    return any(d["internal_api"] == "openblas" and "numpy" in d["filepath"]
               for d in threadpool_info())


def test_gemm_runs_on_one_thread_inside_single_threaded_blas():
    # CPU accounting, not speed: with one BLAS thread the process uses (almost) only the CPU
    # time of the calling thread; OpenBLAS's own threads would double it on 2 cores
    a = np.random.default_rng(0).random((1200, 1200)).astype(np.float32)
    with _threads.single_threaded_blas():
        process, thread = time.process_time(), time.thread_time()
        for _ in range(4):
            a @ a
        process, thread = time.process_time() - process, time.thread_time() - thread
    assert process < 1.3 * thread, (process, thread)


def test_num_threads_settings(threads, monkeypatch):
    monkeypatch.setenv("FASTVAE_NUM_THREADS", "3")
    assert _threads.num_threads() == 3
    monkeypatch.delenv("FASTVAE_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads.num_threads() == 1
    threads(2)
    assert _threads.num_threads() == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            threads(bad)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_log_likelihood_does_not_depend_on_the_thread_count(threads, likelihood):
    model = fastvae.VAE(37, (19,), 5, likelihood=likelihood, seed=3, dtype="float32")
    x = np.random.default_rng(4).random((29, 37)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append(model.log_likelihood(x, K=301, seed=9, max_pairs=1024))
    assert np.isfinite(results[0]).all()
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ---------------------------------------------------------------------------------------------
# the pool
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("n_tiles", [1, 2, 7, 200])
def test_every_tile_runs_exactly_once(n_threads, n_tiles):
    pool = _threads.Pool(n_threads)
    try:
        for _ in range(3):
            counts = np.zeros(n_tiles, dtype=np.int64)

            def tile(i):
                counts[i] += 1
            pool.run(_threads.Phase(n_tiles, _threads.python_tiles(tile)))
            np.testing.assert_array_equal(counts, 1)
    finally:
        pool.close()


def test_a_slow_tile_does_not_hold_the_others():
    # no tile belongs to a fixed thread: while one thread sits in a slow tile (as a worker the
    # OS has descheduled would), the other thread takes every remaining tile
    pool = _threads.Pool(2)
    ran_by = {}
    try:
        def tile(i):
            ran_by[i] = threading.current_thread().name
            if i == 0:
                time.sleep(0.5)
        pool.run(_threads.Phase(40, _threads.python_tiles(tile)))
    finally:
        pool.close()
    assert sorted(ran_by) == list(range(40))
    slow = ran_by[0]
    assert all(name != slow for i, name in ran_by.items() if i > 0), ran_by


def test_a_tile_error_propagates_skips_the_rest_and_the_pool_keeps_working():
    pool = _threads.Pool(2)
    started = []
    try:
        def tile(i):
            started.append(i)
            if i == 3:
                raise ZeroDivisionError("tile 3")
            time.sleep(0.002)
        with pytest.raises(ZeroDivisionError, match="tile 3"):
            pool.run(_threads.Phase(1000, _threads.python_tiles(tile)))
        assert len(started) < 10, f"{len(started)} tiles started after the error"
        counts = np.zeros(50, dtype=np.int64)
        pool.run(_threads.Phase(50, _threads.python_tiles(lambda i: counts.__setitem__(i, 1))))
        assert counts.sum() == 50
    finally:
        pool.close()


def test_a_tile_may_run_a_phase_of_its_own():
    # nested: the inner phase runs on the thread of the outer tile (no deadlock)
    pool = _threads.Pool(2)
    inner = np.zeros((6, 5), dtype=np.int64)
    try:
        def outer(i):
            pool.run(_threads.Phase(5, _threads.python_tiles(
                lambda j: inner.__setitem__((i, j), inner[i, j] + 1))))
        pool.run(_threads.Phase(6, _threads.python_tiles(outer)))
    finally:
        pool.close()
    np.testing.assert_array_equal(inner, 1)


def test_close_stops_the_workers():
    pool = _threads.Pool(3)
    assert all(t.is_alive() for t in pool.threads) and len(pool.threads) == 2
    pool.run(_threads.Phase(10, _threads.python_tiles(lambda i: None)))
    pool.close()
    assert not any(t.is_alive() for t in pool.threads)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(_threads.Phase(10, _threads.python_tiles(lambda i: None)))


def test_shutdown_then_a_new_pool(threads):
    threads(2)
    first = _threads.pool()
    _threads.shutdown()
    assert not any(t.is_alive() for t in first.threads)
    second = _threads.pool()
    assert second is not first and all(t.is_alive() for t in second.threads)


def _small_fit(n_threads, likelihood="bernoulli", objective="elbo", k=1):
    _threads.set_num_threads(n_threads)
    # 600-300-70-7: every layer's phase has several tiles at batch 150 (fastvae/cpu/dense.py)
    model = fastvae.VAE(600, (300, 70), 7, likelihood=likelihood, seed=5, dtype="float32")
    x = np.random.default_rng(6).random((330, 600)).astype(np.float32)
    history = model.fit(x, epochs=2, batch_size=150, k=k, objective=objective, progress=False)
    return model.params.flat.copy(), [h["loss"] for h in history], model


@pytest.mark.parametrize("likelihood, objective, k", [("bernoulli", "elbo", 1),
                                                      ("gaussian", "elbo", 2),
                                                      ("bernoulli", "iwae", 3)])
def test_training_gives_the_same_bits_for_1_2_3_threads(threads, likelihood, objective, k):
    # 6 steps (batches of 150, 150, 30) with tiles shared out differently every time
    runs = [_small_fit(n, likelihood, objective, k) for n in (1, 2, 3)]
    params, losses, _ = runs[0]
    assert np.isfinite(params).all() and np.isfinite(losses).all()
    for other_params, other_losses, _ in runs[1:]:
        np.testing.assert_array_equal(other_params, params)
        assert other_losses == losses


def test_encode_decode_elbo_give_the_same_bits_for_1_2_3_threads(threads):
    model = fastvae.VAE(600, (300, 70), 7, seed=5, dtype="float32")
    x = np.random.default_rng(7).random((333, 600)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        mu, logvar = model.encode(x)
        results.append((mu, logvar, model.decode(mu), model.elbo(x, k=2, seed=1)))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


def test_no_threads_left_behind_by_fit(threads):
    threads(2)
    _small_fit(2)
    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        _small_fit(2)
    assert {t.ident for t in threading.enumerate()} == before
    workers = [t for t in threading.enumerate() if t.name.startswith("fastvae-")]
    assert len(workers) == 1   # 2 threads: the caller and one worker


def test_cli_threads_sets_the_pool_size(threads):
    from fastvae import cli
    cli._set_threads(3)
    assert _threads.num_threads() == 3 and _threads.pool().size == 3


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_starts_a_pool_of_its_own(threads):
    import os
    threads(2)
    parent = _threads.pool()
    parent.run(_threads.Phase(4, _threads.python_tiles(lambda i: None)))
    pid = os.fork()
    if pid == 0:   # child: the parent's worker thread does not exist here
        ok = False
        try:
            counts = np.zeros(9, dtype=np.int64)
            child = _threads.pool()
            child.run(_threads.Phase(9, _threads.python_tiles(
                lambda i: counts.__setitem__(i, counts[i] + 1))))
            ok = child is not parent and (counts == 1).all()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_the_training_phases_really_are_shared_out(threads, monkeypatch):
    # the determinism tests above mean something only if phases have several tiles and more
    # than one thread runs them
    threads(2)
    ran = set()
    real = _threads.Phase.join

    def join(self):
        if self.n > 1:
            ran.add(threading.current_thread().name)
        return real(self)
    monkeypatch.setattr(_threads.Phase, "join", join)
    _small_fit(2)
    assert "MainThread" in ran and any(name.startswith("fastvae-") for name in ran), ran
