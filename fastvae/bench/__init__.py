"""``fastvae bench``: fastvae against PyTorch (eager) and JAX (jit) on the same work, one process
per thread count, one table, one JSON file, one figure.

    fastvae bench                                   # threads 1 and 2, all workloads (~8 min)
    fastvae bench --quick --only train,loglik       # shorter blocks, fewer repeats
    fastvae bench --quick --only train --under-load # training steps quiet and beside a busy loop
    python -m fastvae.bench --threads 1 --json out.json --figure out.png

Peers are optional (``pip install "fastvae[bench]"``); a peer that does not import shows as
"not installed" and everything else still runs. Model: Bernoulli VAE, relu, float32, Adam lr 1e-3
on a synthetic binary dataset (30% ones), the same for every contender.

Workloads (``--only``):

train    One training step at each ``--batches`` size (samples/s), for 784-400-20 (canonical)
         and 784-512-256-32 (deep). fastvae: ``fastvae.train.train_step`` (Philox noise, explicit
         forward and backward, finiteness checks, fused Adam) inside ``cpu_work``,
         exactly what ``fit`` runs per batch. PyTorch: nn.Linear layers, zero_grad, forward,
         backward, torch.optim.Adam (default foreach, and fused=True where it runs), loss.item().
         JAX: value_and_grad and a hand-written Adam in one jit with donated buffers.
epoch    One epoch over 10,000 rows (2,048 with --quick), batch 128, canonical model
         (samples/s). fastvae: ``model.fit(x, epochs=one more, progress=False)``: NumPy
         permutation, row gather, train_step per batch (the last one partial), the per-epoch loss
         and fit's one-off input checks. PyTorch and JAX: the same NumPy permutation, their own
         row gather, their step; PyTorch reads each loss (.item()), JAX keeps the losses on the
         device and sums them once per epoch (its natural asynchronous loop).
loglik   Importance-weighted log-likelihood for each ``--K`` ((x, k) pairs/s), canonical model,
         on min(32, 32000 // K) rows. fastvae: ``model.log_likelihood`` (encoder once per row,
         4096-pair chunks, streaming log-sum-exp). PyTorch (no_grad) and JAX: chunks of about
         the same size (the largest divisor of K with rows * chunk <= 4096), log-sum-exp per
         chunk, merged.
memory   Working memory of one log-likelihood call on 100 rows (10 with --quick) at the largest
         --K, each in a fresh process: the resident high-water mark during the call minus the
         resident size just before it (after a warm-up call), so the model and the libraries are
         not counted. fastvae streams; JAX is measured doing all K samples at once (the
         straightforward version; XLA's planned temporaries are reported too, and it is not run
         when that would take more than 40% of the available memory).
startup  Fresh interpreter to the end of the first training step (import, build the model,
         first step at batch 128): fastvae with a warm Numba cache (run twice, the second
         reported) and cold (NUMBA_CACHE_DIR pointed at an empty directory); PyTorch and JAX
         (first jitted step, compilation included) run twice, the second reported.
ops      Key fastvae ops (``fastvae.ops``, run inside ``cpu_work`` as the model runs
         them) against the same work in NumPy: dense forward/backward 128x784x400, the fused
         ELBO loss and gradients, Adam over 652,824 parameters, logsumexp 128x5000. Each checked
         against NumPy before it is timed.

Noise: contenders run interleaved (A B C A B C ...) in blocks of ~0.15 s (0.05 s with --quick)
after an untimed warm-up block each; a row gives the median rate over the blocks (11, or 7 with
--quick; 5/3 epochs; 7/5 log-likelihood blocks) and the spread (max - min) / median. The GEMM-only
bound is the time of exactly the row's matrix products in NumPy float32 (preallocated outputs),
probed at the start and at the end of each run; "of bound" is fastvae's rate over that bound,
from the end with the lower bound to the end with the higher one. Ratios are fastvae / peer for
rates and peer / fastvae for seconds and bytes, so > 1 always means fastvae is ahead.

Under load (``--under-load``, train only): after each training-step row's quiet blocks, the same
blocks (same contenders, order and calls per block) run again while the suite keeps ONE
CPU-bound process of its own busy (a Python ``while`` loop, started just before and stopped,
terminate then kill, just after, also on an error or Ctrl-C; it also ends by itself if the
worker dies). It inherits the worker's core pinning, so it takes a share of the contenders'
cores: at 2 threads on 2 cores, one other busy process on the machine. The "under load" table
gives, per contender, the quiet and loaded medians, the share kept (loaded / quiet) and the
slowest loaded block over the loaded median ("min/median"; the target: no block below 0.40).

Threads: each thread count runs in a fresh ``python -m fastvae.bench --worker`` process that pins
itself to that many cores (when fewer than available) and sets OMP/OpenBLAS/MKL/Numba thread
counts, torch.set_num_threads and (1 thread) XLA's single-threaded Eigen before any of them load;
the parent merges the results. GPU: where CuPy finds a CUDA device, fastvae (device="cuda") and
PyTorch (if built with CUDA) get GPU columns, timed with a device synchronize at the end of each
block and compared with cuBLAS's rate on the same products; otherwise the column says why not.
JAX runs on the CPU only (JAX_PLATFORMS=cpu).

This module imports nothing heavy: the worker must set the thread environment before NumPy,
Numba, PyTorch or JAX load. ``fastvae.cli`` imports it only once ``fastvae bench`` is parsed.
"""
import argparse
import os
import sys

WORKLOADS = ("train", "epoch", "loglik", "ops", "memory", "startup")
DEFAULT_JSON = "benchmark-e2e.json"


def _int_list(text):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _workload_list(text):
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {unknown}; choose from "
                                         f"{','.join(WORKLOADS)}")
    return [w for w in WORKLOADS if w in names]


def add_arguments(p):
    """The ``fastvae bench`` options (shared by the CLI and ``python -m fastvae.bench``)."""
    p.add_argument("--quick", action="store_true",
                   help="shorter blocks and fewer repeats, smaller epoch and memory runs")
    p.add_argument("--threads", dest="bench_threads", type=_int_list, default=[1, 2],
                   metavar="1,2", help="thread counts, each in a fresh process (default 1,2)")
    p.add_argument("--json", dest="json_path", default=DEFAULT_JSON, metavar="PATH",
                   help=f"write the merged results here (default {DEFAULT_JSON})")
    p.add_argument("--figure", dest="figure_path", default=None, metavar="PATH",
                   help="samples/s per batch figure (default: the JSON path with .png)")
    p.add_argument("--only", type=_workload_list, default=list(WORKLOADS),
                   metavar=",".join(WORKLOADS), help="run only these workloads")
    p.add_argument("--batches", type=_int_list, default=[32, 128, 512], metavar="32,128,512",
                   help="training-step batch sizes")
    p.add_argument("--K", dest="Ks", type=_int_list, default=[1000, 5000], metavar="1000,5000",
                   help="importance samples for the log-likelihood rows")
    p.add_argument("--under-load", dest="under_load", action="store_true",
                   help="train: time each row's blocks twice, quiet and beside one busy-loop "
                        "process the suite starts on the worker's cores (stopped right after); "
                        "adds the 'under load' table: quiet, loaded, kept = loaded/quiet, "
                        "slowest loaded block / median")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def pin_threads(n):
    """Pin this process to n cores (when fewer than it has) and set every library's thread
    count; must run before NumPy, Numba, PyTorch or JAX are imported."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if cpus and n < len(cpus):
        os.sched_setaffinity(0, cpus[:n])
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run_suite(args):
    """Run the suite for parsed ``args`` (see add_arguments); returns the merged results dict.
    With ``args.worker``: one thread count in this process (the environment set first)."""
    if getattr(args, "under_load", False) and "train" not in args.only:
        raise ValueError("--under-load measures the train workload: add train to --only")
    if args.worker:
        if len(args.bench_threads) != 1:
            raise ValueError("--worker runs exactly one thread count")
        if any(sys.modules.get(m) is not None for m in ("numpy", "numba", "torch", "jax")):
            raise RuntimeError("the bench worker must set its threads before NumPy loads; run "
                               "it as python -m fastvae.bench --worker")
        pin_threads(args.bench_threads[0])
        from . import run
        return run.worker_main(args)
    from . import run
    return run.orchestrate(args)


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(
        prog="python -m fastvae.bench", description=__doc__.split("\n")[0]))
    run_suite(parser.parse_args(argv))
    return 0
