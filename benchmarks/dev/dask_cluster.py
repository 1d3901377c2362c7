"""fastvae.distributed on a local Dask cluster against the single-process estimator, same data.

    .venv/bin/python benchmarks/dev/dask_cluster.py [--workers 2] [--rows 512] [--K 1000]
                                                    [--repeats 7] [--json out.json]

Work: the importance-weighted log-likelihood of the canonical 784-400-20-400-784 Bernoulli VAE in
float32 on ``--rows`` random binary rows with ``--K`` samples, in (x, z) pairs/s. Contenders,
interleaved (A B C A B C ...) after one warm-up run each, medians and min-max spreads reported:

* one process: ``model.log_likelihood``, its row blocks on fastvae's worker threads (one per
  core, each with one-thread BLAS: fastvae/_threads.py; the count is taken before the cluster
  starts, since Dask's nanny sets OMP_NUM_THREADS=1 in this process too);
* one process, one thread (``fastvae.set_num_threads(1)``): what one Dask worker does;
* dask: ``fastvae.distributed.log_likelihood`` on a ``LocalCluster`` of ``--workers`` processes
  with one thread each (Dask's nanny gives each worker a one-thread BLAS), default row chunks,
  computed to NumPy on the client (the rows travel in the graph each run).

Next to wall time, the CPU seconds of every process taking part (this one; for dask also the
workers, and the scheduler, which a LocalCluster runs in this process): on a shared machine the
wall times carry the other jobs' load, pairs per CPU-second do not.

Per-task overhead: the same cluster on trivial tasks (K=1, 8 rows per task: ~1 ms of
work each): wall time / tasks, worker-seconds / task (x workers), CPU seconds / task, and
the wall time / task of no-op Dask tasks on the same row chunks (Dask's own share). The first
call's extra cost (the model scattered to and built on every worker) is reported once.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # this checkout's fastvae
import fastvae.distributed as fd  # noqa: E402
from fastvae.bench import timing  # noqa: E402
from fastvae.model import VAE  # noqa: E402


def _noop(block):
    return np.zeros(block.shape[0])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--K", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args()


def seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wall_and_cpu(fn, cpu_clock):
    """(wall seconds, CPU seconds) of fn(): the CPU of every process taking part, so that the
    comparison holds when other jobs share the cores (wall time then shows their load)."""
    c0, t0 = cpu_clock(), time.perf_counter()
    fn()
    t1 = time.perf_counter()
    return t1 - t0, cpu_clock() - c0


def spread(values):
    """(median, (max - min) / median), as fastvae bench reports them (timing.summary)."""
    s = timing.summary(values)
    return s["median"], s["spread"]


def _contenders(args, model, x, client, threads):
    """{name: fn} of the three estimators and {name: CPU clock of every process it uses}."""
    from fastvae import set_num_threads

    def on_cluster():
        return client.compute(fd.log_likelihood(model, x, K=args.K, client=client)).result()

    def on_threads(n):
        set_num_threads(n)
        try:
            return model.log_likelihood(x, K=args.K, progress=False)
        finally:
            set_num_threads(None)

    def cluster_cpu():   # workers + this process (client and, in a LocalCluster, scheduler)
        return sum(client.run(time.process_time).values()) + time.process_time()
    dask = f"dask, {args.workers} workers x 1 thread"
    contenders = {"one process": lambda: on_threads(threads),
                  "one process, 1 thread": lambda: on_threads(1), dask: on_cluster}
    clocks = {name: time.process_time for name in contenders}
    clocks[dask] = cluster_cpu
    return contenders, clocks


def _interleaved(contenders, clocks, repeats):
    """({name: [wall s]}, {name: [CPU s]}): ``repeats`` rounds A B C A B C ..."""
    times = {name: [] for name in contenders}
    cpus = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            wall, cpu = wall_and_cpu(fn, clocks[name])
            times[name].append(wall)
            cpus[name].append(cpu)
    return times, cpus


def _trivial_tasks(args, model, x, client, cluster_cpu):
    """(tasks, [(wall, CPU) per run], [no-op wall per run]) on 8-row K=1 tasks."""
    import dask.array as da
    tasks = args.rows // 8
    trivial = fd.log_likelihood(model, x, K=1, max_pairs=8, client=client, chunk_rows=8)
    assert trivial.numblocks[0] == tasks
    client.compute(trivial).result()
    runs = [wall_and_cpu(lambda: client.compute(trivial).result(), cluster_cpu)
            for _ in range(args.repeats)]
    noop = da.map_blocks(_noop, da.from_array(x, chunks=(8, 784)), drop_axis=1,
                         dtype=np.float64, meta=np.empty(0))
    client.compute(noop).result()
    noop_times = [seconds(lambda: client.compute(noop).result()) for _ in range(args.repeats)]
    return tasks, runs, noop_times


def measure(args, model, x, threads):
    """Everything this script reports, measured on one LocalCluster (a dict)."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        n_tasks = fd.log_likelihood(model, x, K=args.K, client=client).numblocks[0]
        contenders, clocks = _contenders(args, model, x, client, threads)
        dask = list(contenders)[-1]
        first_call = seconds(contenders[dask])        # scatter + model build on every worker
        warm_call = seconds(contenders[dask])
        reference = contenders["one process, 1 thread"]()
        assert np.array_equal(contenders[dask](), reference), "the cluster's numbers differ"
        for fn in contenders.values():                # warm-up
            fn()
        times, cpus = _interleaved(contenders, clocks, args.repeats)
        tasks, trivial, noop_times = _trivial_tasks(args, model, x, client, clocks[dask])
    return dict(n_tasks=n_tasks, first_call=first_call, warm_call=warm_call, times=times,
                cpus=cpus, tasks=tasks, trivial=trivial, noop_times=noop_times)


def report_contenders(args, m, threads, pairs):
    """Print the contenders' table; -> its rows (for the JSON)."""
    print(f"log-likelihood, 784-400-20 float32, {args.rows} rows x K={args.K} "
          f"({pairs:,} pairs), {os.cpu_count()} cores, one process on {threads} threads, "
          f"median of {args.repeats}")
    base = float(np.median(m["times"]["one process"]))
    print(f"  {'':32s} {'wall':>8s}  {'spread':>6s}  {'pairs/s':>12s}  {'ratio':>5s}  "
          f"{'CPU s':>7s}  {'pairs/CPU-s':>11s}")
    rows = []
    for name, ts in m["times"].items():
        med, sp = spread(ts)
        cpu = float(np.median(m["cpus"][name]))
        rows.append({"contender": name, "median_s": med, "spread": sp, "cpu_s": cpu,
                     "pairs_per_s": pairs / med, "pairs_per_cpu_s": pairs / cpu,
                     "vs_one_process": base / med})
        print(f"  {name:32s} {med:7.3f}s  ±{sp:5.1%}  {pairs / med:12,.0f}  {base / med:5.2f}x  "
              f"{cpu:7.2f}  {pairs / cpu:11,.0f}")
    return rows


def report_overhead(args, m):
    """Print the per-task costs; -> them as a dict (for the JSON)."""
    tasks, n_tasks = m["tasks"], m["n_tasks"]
    trivial_times, trivial_cpu = zip(*m["trivial"])
    trivial_med, trivial_sp = spread(trivial_times)
    per_task = trivial_med / tasks
    cpu_per_task = float(np.median(trivial_cpu)) / tasks
    # the main run: each worker does its share at one-thread speed, plus its tasks' overhead
    ideal = float(np.median(m["times"]["one process, 1 thread"])) / args.workers
    dask_med = float(np.median(m["times"][f"dask, {args.workers} workers x 1 thread"]))
    per_task_main = (dask_med - ideal) / max(1, n_tasks / args.workers)
    print(f"  dask run: {n_tasks} tasks; (dask - one-thread / workers) / tasks per worker = "
          f"{per_task_main * 1e3:+.1f} ms per task")
    print(f"  first dask call {m['first_call']:.3f} s vs warm {m['warm_call']:.3f} s: "
          f"{m['first_call'] - m['warm_call']:+.3f} s to ship and build the model")
    print(f"  trivial tasks: {tasks} in {trivial_med * 1e3:.1f} ms ±{trivial_sp:.0%}: "
          f"{per_task * 1e3:.2f} ms wall per task, "
          f"{per_task * args.workers * 1e3:.2f} worker-ms per task, "
          f"{cpu_per_task * 1e3:.2f} CPU-ms per task (workers + client + scheduler)")
    noop_per_task = float(np.median(m["noop_times"])) / tasks
    print(f"  no-op Dask tasks on the same chunks: {noop_per_task * 1e3:.2f} ms wall per task "
          f"(Dask's own cost; the rest above is fastvae's)")
    return {"first_call_s": m["first_call"], "warm_call_s": m["warm_call"],
            "trivial_tasks": tasks, "trivial_median_s": trivial_med,
            "per_task_wall_s": per_task, "per_task_cpu_s": cpu_per_task,
            "noop_per_task_wall_s": noop_per_task, "tasks": n_tasks,
            "per_task_from_main_run_s": per_task_main}


def main():
    args = parse_args()
    from fastvae import num_threads
    model = VAE(784, (400,), 20, dtype="float32", seed=0)
    x = (np.random.default_rng(0).random((args.rows, 784)) < 0.3).astype(np.float32)
    # Starting a LocalCluster sets OMP_NUM_THREADS=1 in this process too (Dask's nanny
    # environment), which fastvae.num_threads() honours: keep the count from before.
    threads = num_threads()
    m = measure(args, model, x, threads)
    rows = report_contenders(args, m, threads, args.rows * args.K)
    overhead = report_overhead(args, m)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "cores": os.cpu_count(),
                       "threads": threads, "rows": args.rows, "K": args.K,
                       "workers": args.workers, "results": rows, **overhead}, f, indent=1)


if __name__ == "__main__":
    main()
