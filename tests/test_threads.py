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
        time.sleep(0.01)
        return i
    with pytest.raises(ZeroDivisionError, match="item 3"):
        list(_threads.ordered_map(work, range(1000), n_threads=2))
    time.sleep(0.05)
    assert len(started) < 12, f"{len(started)} items ran after the error"   # window 2 x 2


def test_single_threaded_blas_restores_the_thread_count():
    before = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
    with _threads.single_threaded_blas():
        assert all(d["num_threads"] == 1 for d in threadpool_info() if d["user_api"] == "blas")
    assert [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"] == before


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
