"""The suite's two halves: ``worker_main`` measures every workload at one thread count (in a
process whose thread environment is already set); ``orchestrate`` starts one worker per thread
count, merges their JSON, prints the table and draws the figure."""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

import fastvae
from fastvae.eval import DEFAULT_MAX_PAIRS

from . import isolated, report, timing, workloads
from . import peers as peer_lib
from . import probes as probe_lib
from .arch import CANONICAL, DEEP, binary_data

EPOCH_BATCH = 128
LOGLIK_MAX_ROWS, LOGLIK_PAIRS = 32, 32000   # rows = min(32, 32000 // K)
MEMORY_FRACTION = 0.4   # run JAX's all-at-once log-likelihood only below this share of RAM
GPU_CONTENDERS = ("fastvae cuda", "torch cuda")


class Settings:
    """Repeats, block lengths and sizes; --quick shortens everything."""

    def __init__(self, args):
        quick = bool(args.quick)
        self.quick = quick
        self.repeats = 7 if quick else 11
        self.block_s = 0.05 if quick else 0.15
        self.epoch_rows = 2048 if quick else 10_000
        self.epoch_repeats = 3 if quick else 5
        self.loglik_repeats = 5 if quick else 7
        self.memory_rows = 10 if quick else 100
        self.batches = list(args.batches)
        self.Ks = list(args.Ks)
        self.only = list(args.only)
        self.under_load = bool(getattr(args, "under_load", False))

    def as_dict(self):
        return dict(vars(self))


class Context:
    """What a worker knows: settings, thread count, which peers and GPU paths exist and, for
    each contender that cannot run, why."""

    def __init__(self, args):
        import numba
        self.s = Settings(args)
        self.threads = args.bench_threads[0]
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        modules, not_installed = peer_lib.load_peers()
        self.torch, self.jax = modules["torch"], modules["jax"]
        self.gpu_reason = timing.gpu_unavailable_reason()
        self.gpu = self.gpu_reason is None
        self.torch_fused = self.torch_cuda = self.torch_cuda_fused = False
        if self.torch is not None:
            self.torch.set_num_threads(self.threads)
            self.torch_fused = peer_lib.torch_adam_fused_ok(self.torch)
            self.torch_cuda = self.gpu and self.torch.cuda.is_available()
            self.torch_cuda_fused = self.torch_cuda and \
                peer_lib.torch_adam_fused_ok(self.torch, "cuda")
        self.why = self._reasons(not_installed)

    def _reasons(self, not_installed):
        why = dict(not_installed)
        if self.torch is not None and not self.torch_fused:
            why["torch fused"] = "torch.optim.Adam(fused=True) does not run in this PyTorch"
        elif self.torch is None:
            why["torch fused"] = why["torch"]
        no_gpu = f"no GPU: {self.gpu_reason}"
        if not self.gpu:
            why["fastvae cuda"] = why["torch cuda"] = no_gpu
        elif self.torch is None:
            why["torch cuda"] = why["torch"]
        elif not self.torch_cuda:
            why["torch cuda"] = "this PyTorch build has no CUDA"
        return why

    def missing(self, names):
        return {n: self.why[n] for n in names if n in self.why}


def _log(ctx, text):
    print(f"[threads={ctx.threads}] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------
def _rate_row(workload, label, size, unit, rates, missing, work_per_call, flops_per_unit=None,
              bytes_per_unit=None, probe_key=None, **extra):
    return dict(workload=workload, label=label, size=size, kind="rate", unit=unit,
                work_per_call=work_per_call, flops_per_unit=flops_per_unit,
                bytes_per_unit=bytes_per_unit, probe_key=probe_key,
                results={name: timing.summary(r) for name, r in rates.items()},
                missing=missing, **extra)


def _timed(ctx, what, contenders, work, repeats=None, calls=None, plan=None):
    """Interleaved timed blocks -> {name: [rate per block]}, logged as one line. plan: calls per
    block from timing.warm_up (None: warm up and calibrate here)."""
    t0 = time.perf_counter()
    if plan is None:
        plan = timing.warm_up(contenders, ctx.s.block_s, calls)
    rates = timing.timed_blocks(contenders, plan, work, repeats or ctx.s.repeats)
    medians = ", ".join(f"{n} {report.fmt_rate(float(np.median(r)))}" for n, r in rates.items())
    _log(ctx, f"{what}: {medians} ({time.perf_counter() - t0:.0f} s)")
    return rates


def _train_contenders(ctx, arch, x, epoch_batch=None):
    """{name: (fn, sync)} for a step on x (epoch_batch None) or an epoch over x."""
    torch, jax = ctx.torch, ctx.jax

    def fv(device):
        if epoch_batch is None:
            return workloads.fastvae_train_step(arch, x, device)
        return workloads.fastvae_epoch(arch, x, epoch_batch, device)

    def tv(fused, device):
        if epoch_batch is None:
            return peer_lib.torch_train_step(torch, arch, x, fused, device)
        return peer_lib.torch_epoch(torch, arch, x, epoch_batch, fused, device)
    c = {"fastvae": (fv("cpu"), None)}
    if torch is not None:
        c["torch"] = (tv(False, "cpu"), None)
        if ctx.torch_fused:
            c["torch fused"] = (tv(True, "cpu"), None)
    if jax is not None:
        c["jax"] = peer_lib.jax_train_step(jax, arch, x) if epoch_batch is None else \
            (peer_lib.jax_epoch(jax, arch, x, epoch_batch), None)
    if ctx.gpu:
        c["fastvae cuda"] = (fv("cuda"), timing.cuda_sync)
    if ctx.torch_cuda:
        c["torch cuda"] = (tv(ctx.torch_cuda_fused, "cuda"), torch.cuda.synchronize)
    return c


def run_train(ctx):
    x_all = binary_data(max(ctx.s.batches), CANONICAL.input_dim, seed=0)
    return [_train_row(ctx, arch, x_all[:b]) for arch in (CANONICAL, DEEP)
            for b in ctx.s.batches]


def _train_row(ctx, arch, x):
    """One training-step row (samples/s at batch len(x)); with --under-load, its blocks again
    beside one busy-loop process, in row["under_load"] (see under_load_summary)."""
    b, what = len(x), f"train {arch.name} batch {len(x)}"
    contenders = _train_contenders(ctx, arch, x)
    plan = timing.warm_up(contenders, ctx.s.block_s)
    rates = _timed(ctx, what, contenders, b, plan=plan)
    row = _rate_row("train", f"train step {arch.name}", f"batch {b}", "samples/s", rates,
                    ctx.missing(["torch", "torch fused", "jax", *GPU_CONTENDERS]), b,
                    flops_per_unit=arch.step_flops(b) / b, probe_key=_train_key(arch, b),
                    model=arch.name, batch=b)
    if ctx.s.under_load:
        row["under_load"] = _under_load(ctx, what, contenders, plan, b, row["results"])
    return row


def _under_load(ctx, what, contenders, plan, work, quiet):
    """The quiet blocks again (same contenders, order and calls per block, no new warm-up)
    while timing.cpu_load runs one busy-loop process; the load is stopped even when a
    contender fails or the run is interrupted."""
    with timing.cpu_load() as load:
        rates = _timed(ctx, f"{what} under load (pid {load['pid']})", contenders, work,
                       plan=plan)
    return under_load_summary(quiet, rates, load)


def under_load_summary(quiet, loaded, load):
    """{"load": the load process's record (timing.cpu_load), "results": {contender: {quiet,
    loaded, kept, min_over_median, quiet_min_over_median, spread, n, rates}}}.

    quiet: the row's quiet results (timing.summary per contender); loaded: {contender: [rate
    per loaded block]}. quiet / loaded: median rates (the row's unit); kept = loaded / quiet;
    min_over_median: the slowest loaded block over the loaded median (the target: no block
    below 0.4); quiet_min_over_median: the same for the quiet blocks; spread, n, rates: the
    loaded blocks' (timing.summary)."""
    results = {}
    for name, rates in loaded.items():
        s, q = timing.summary(rates), quiet[name]
        results[name] = dict(
            quiet=q["median"], loaded=s["median"], kept=_ratio(s["median"], q["median"]),
            min_over_median=_ratio(min(s["rates"]), s["median"]),
            quiet_min_over_median=_ratio(min(q["rates"]), q["median"]),
            spread=s["spread"], n=s["n"], rates=s["rates"])
    return dict(load=load, results=results)


def _ratio(a, b):
    return a / b if b > 0 else float("nan")


def run_epoch(ctx):
    x = binary_data(ctx.s.epoch_rows, CANONICAL.input_dim, seed=2)
    rates = _timed(ctx, f"epoch {len(x)} rows", _train_contenders(ctx, CANONICAL, x, EPOCH_BATCH),
                   len(x), repeats=ctx.s.epoch_repeats, calls=1)
    return [_rate_row("epoch", f"epoch {CANONICAL.name}", f"{len(x)} rows, batch {EPOCH_BATCH}",
                      "samples/s", rates, ctx.missing(["torch", "torch fused", "jax",
                                                       *GPU_CONTENDERS]),
                      len(x), flops_per_unit=CANONICAL.step_flops(EPOCH_BATCH) / EPOCH_BATCH,
                      probe_key=_train_key(CANONICAL, EPOCH_BATCH), model=CANONICAL.name,
                      batch=EPOCH_BATCH, rows=len(x))]


def loglik_rows(K):
    return max(1, min(LOGLIK_MAX_ROWS, LOGLIK_PAIRS // K))


def run_loglik(ctx):
    rows = []
    torch, jax = ctx.torch, ctx.jax
    for K in ctx.s.Ks:
        n = loglik_rows(K)
        x = binary_data(n, CANONICAL.input_dim, seed=3)
        c = {"fastvae": (workloads.fastvae_loglik(CANONICAL, x, K), None)}
        if torch is not None:
            c["torch"] = (peer_lib.torch_loglik(torch, CANONICAL, x, K), None)
        if jax is not None:
            c["jax"] = (peer_lib.jax_loglik(jax, CANONICAL, x, K), None)
        if ctx.gpu:   # both return host arrays, so each call ends synchronized
            c["fastvae cuda"] = (workloads.fastvae_loglik(CANONICAL, x, K, "cuda"), None)
        if ctx.torch_cuda:
            c["torch cuda"] = (peer_lib.torch_loglik(torch, CANONICAL, x, K, "cuda"), None)
        rates = _timed(ctx, f"loglik K={K}", c, n * K, repeats=ctx.s.loglik_repeats)
        rows.append(_rate_row(
            "loglik", f"log-likelihood {CANONICAL.name}", f"K={K}, {n} rows", "pairs/s", rates,
            ctx.missing(["torch", "jax", *GPU_CONTENDERS]), n * K,
            flops_per_unit=CANONICAL.decoder_flops_per_pair(), probe_key=_loglik_key(CANONICAL),
            K=K, rows=n, peer_chunk=peer_lib._chunk_size(n, K)))
    return rows


def run_ops(ctx):
    rows = []
    for op in workloads.per_op_cases(gpu=ctx.gpu):
        c = {"fastvae": (op.fastvae, None), "numpy": (op.numpy, None)}
        if op.cuda is not None:
            c["fastvae cuda"] = (op.cuda, timing.cuda_sync)
        rates = _timed(ctx, f"op {op.name}", c, 1)
        rows.append(_rate_row("ops", op.name, op.size, "calls/s", rates,
                              ctx.missing(["fastvae cuda"]), 1,
                              flops_per_unit=op.flops or None, bytes_per_unit=op.nbytes or None,
                              probe_key=op.probe_key))
    return rows


def _cost_row(workload, label, size, unit, results, missing, **extra):
    return dict(workload=workload, label=label, size=size, kind="cost", unit=unit,
                results=results, missing=missing, **extra)


def _jax_unchunked_bytes(arch, n, K):
    """Rough all-at-once working set: every pair's decoder activations and output, twice
    (the elementwise log-likelihood terms), float32."""
    widths = sum(o for name, _, o in arch.layers() if name.startswith("dec"))
    return n * K * widths * 4 * 2


def run_memory(ctx):
    n, K = ctx.s.memory_rows, max(ctx.s.Ks)
    t0 = time.perf_counter()
    results, missing = {}, ctx.missing(["jax"])
    fv = isolated.memory("fastvae", n, K)
    if "error" in fv:
        missing["fastvae"] = f"failed: {fv['error']}"
    else:
        results["fastvae"] = dict(fv, value=fv["working_bytes"] / 1e6)
    if ctx.jax is not None:
        need, avail = _jax_unchunked_bytes(CANONICAL, n, K), timing.available_memory_bytes()
        run = avail is None or need < MEMORY_FRACTION * avail
        jx = isolated.memory("jax", n, K, run=run)
        if "error" in jx:
            missing["jax"] = f"failed: {jx['error']}"
        elif run:
            results["jax"] = dict(jx, value=jx["working_bytes"] / 1e6)
        else:
            missing["jax"] = (f"not run: all K at once needs ~{need / 1e9:.1f} GB, "
                              f"{avail / 1e9:.1f} GB available")
    _log(ctx, "memory: " + ", ".join(f"{k} {v['value']:.1f} MB" for k, v in results.items()) +
         f" ({time.perf_counter() - t0:.0f} s)")
    traced = results.get("fastvae", {}).get("tracemalloc_peak_bytes")
    note = "fastvae streams 4096-pair chunks" + (
        "" if traced is None else f" (its NumPy allocations, by tracemalloc: {traced / 1e6:.1f} "
                                  f"MB at {ctx.threads} thread(s))") + \
        "; jax does all K samples at once"
    return [_cost_row("memory", f"log-likelihood working memory {CANONICAL.name}",
                      f"N={n}, K={K}", "MB", results, missing, N=n, K=K, note=note)]


def run_startup(ctx):
    t0 = time.perf_counter()
    warm, cold = {}, {}
    missing_warm, missing_cold = ctx.missing(["torch", "jax"]), ctx.missing(["torch", "jax"])
    for results, missing, cold_cache in ((warm, missing_warm, False), (cold, missing_cold, True)):
        result = isolated.startup("fastvae", cold=cold_cache)
        if "error" in result:
            missing["fastvae"] = f"failed: {result['error']}"
        else:
            results["fastvae"] = dict(result, value=result["total_s"])
    for name, module in (("torch", ctx.torch), ("jax", ctx.jax)):
        if module is None:
            continue
        result = isolated.startup(name)
        if "error" in result:
            missing_warm[name] = missing_cold[name] = f"failed: {result['error']}"
        else:   # no on-disk JIT cache by default: one measurement serves both rows
            warm[name] = cold[name] = dict(result, value=result["total_s"])
    _log(ctx, "startup: " + ", ".join(f"{k} {v['value']:.2f} s" for k, v in warm.items()) +
         (f", fastvae cold {cold['fastvae']['value']:.2f} s" if "fastvae" in cold else "") +
         f" ({time.perf_counter() - t0:.0f} s)")
    size = f"{CANONICAL.name}, batch 128"
    return [_cost_row("startup", "startup, warm Numba cache", size, "s", warm, missing_warm),
            _cost_row("startup", "startup, cold Numba cache", size, "s", cold, missing_cold,
                      note="peers have no on-disk JIT cache by default: their warm numbers")]


RUNNERS = {"train": run_train, "epoch": run_epoch, "loglik": run_loglik, "ops": run_ops,
           "memory": run_memory, "startup": run_startup}


# ---------------------------------------------------------------------------------------------
# GEMM-only bound probes
# ---------------------------------------------------------------------------------------------
def _train_key(arch, b):
    return f"train:{arch.name}:b{b}"


def _loglik_key(arch):
    return f"loglik:{arch.name}"


def probe_plan(s):
    """{key: (metric, work per call, builder(xp) -> fn)} for the selected workloads (the
    GEMM-only bounds, fastvae/bench/probes.py; ops: its per-op GEMM and copy probes)."""
    plan = {}
    if "train" in s.only:
        for arch in (CANONICAL, DEEP):
            for b in s.batches:
                plan[_train_key(arch, b)] = (
                    "gflops", arch.step_flops(b),
                    lambda xp, a=arch, b=b: probe_lib.gemm_step_fn(a, b, xp))
    if "epoch" in s.only:
        plan[_train_key(CANONICAL, EPOCH_BATCH)] = (
            "gflops", CANONICAL.step_flops(EPOCH_BATCH),
            lambda xp: probe_lib.gemm_step_fn(CANONICAL, EPOCH_BATCH, xp))
    if "loglik" in s.only:
        pairs = DEFAULT_MAX_PAIRS
        plan[_loglik_key(CANONICAL)] = ("gflops", pairs * CANONICAL.decoder_flops_per_pair(),
                                        lambda xp: probe_lib.gemm_loglik_fn(CANONICAL, pairs, xp))
    if "ops" in s.only:
        plan.update(probe_lib.op_plan())
    return plan


def probe(ctx):
    """{"cpu": {key: {seconds, gflops | gbs}}, "gpu": same or None}."""
    return probe_lib.measure(probe_plan(ctx.s), ctx.gpu)


def add_bounds(row, probes):
    """Bound, fraction of bound, per-contender GFLOP/s (or GB/s) and ratios for one row, from
    this run's start and end probes."""
    fv_names = {"cpu": "fastvae", "gpu": "fastvae cuda"}
    res = row["results"]
    if row["kind"] == "rate":
        per = row["flops_per_unit"] or row["bytes_per_unit"]
        metric = "gflops" if row["flops_per_unit"] else "gbs"
        row["bound"], row["fraction_of_bound"] = {}, {}
        for name, r in res.items():
            r[metric] = r["median"] * per / 1e9
        for dev, fv in fv_names.items():
            probed = [probes[w][dev][row["probe_key"]][metric] for w in ("start", "end")
                      if probes[w].get(dev)]
            if not probed:
                continue
            rates = [v * 1e9 / per for v in probed]   # the bound in the row's units
            row["bound"][dev] = dict(low=min(rates), high=max(rates), metric=metric,
                                     probe_start=probed[0], probe_end=probed[-1])
            if fv in res:
                row["fraction_of_bound"][fv] = dict(low=res[fv]["median"] / max(rates),
                                                    high=res[fv]["median"] / min(rates))
    row["ratios"] = {}
    for name, r in res.items():
        if name.startswith("fastvae"):
            continue
        fv = res.get("fastvae cuda" if name.endswith("cuda") else "fastvae")
        if fv is None:
            continue
        a, b = (fv["median"], r["median"]) if row["kind"] == "rate" else (r["value"], fv["value"])
        row["ratios"][name] = a / b if b > 0 else float("nan")
    return row


# ---------------------------------------------------------------------------------------------
# environment record
# ---------------------------------------------------------------------------------------------
def git_commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastvae.__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True,
                                         stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root,
                               stderr=subprocess.DEVNULL).returncode != 0
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine():
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return dict(platform=platform.platform(), machine=platform.machine(), cpu=_cpu_model(),
                cpus=os.cpu_count(), memory_bytes=mem, python=platform.python_version())


def versions(ctx):
    import numba
    import scipy
    out = dict(fastvae=fastvae.__version__, numpy=np.__version__, numba=numba.__version__,
               scipy=scipy.__version__)
    out["torch"] = None if ctx.torch is None else ctx.torch.__version__
    out["jax"] = None if ctx.jax is None else ctx.jax.__version__
    try:
        import jaxlib
        out["jaxlib"] = jaxlib.__version__ if ctx.jax is not None else None
    except ImportError:
        out["jaxlib"] = None
    try:
        import cupy
        out["cupy"] = cupy.__version__
    except ImportError:
        out["cupy"] = None
    return out


def gpu_info(ctx):
    info = dict(available=ctx.gpu, reason=ctx.gpu_reason, torch_cuda=ctx.torch_cuda)
    if ctx.gpu:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["name"] = props["name"].decode() if isinstance(props["name"], bytes) \
            else props["name"]
    return info


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def worker_main(args):
    """Measure every selected workload at this process's thread count; write args.json_path."""
    t0 = time.perf_counter()
    ctx = Context(args)
    _log(ctx, f"peers: torch {'yes' if ctx.torch else 'missing'}, jax "
              f"{'yes' if ctx.jax else 'missing'}; GPU: {'yes' if ctx.gpu else ctx.gpu_reason}")
    probes = {"start": probe(ctx)}
    rows = []
    for name in ctx.s.only:
        rows += RUNNERS[name](ctx)
    probes["end"] = probe(ctx)
    for row in rows:
        add_bounds(row, probes)
    result = dict(
        threads=ctx.threads, settings=ctx.s.as_dict(), machine=machine(), versions=versions(ctx),
        git_commit=git_commit(), gpu=gpu_info(ctx),
        peers={n: dict(installed=getattr(ctx, n.split()[0]) is not None,
                       reason=ctx.why.get(n)) for n in ("torch", "torch fused", "jax")},
        torch_fused_adam=ctx.torch_fused,
        affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        numba_threads=__import__("numba").get_num_threads(),
        torch_threads=None if ctx.torch is None else ctx.torch.get_num_threads(),
        env={k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                            "XLA_FLAGS", "JAX_PLATFORMS", "NUMBA_CACHE_DIR")},
        probes=probes, rows=rows, wall_s=time.perf_counter() - t0)
    report.write_json(result, args.json_path)
    _log(ctx, f"done in {result['wall_s']:.0f} s")
    return result


def _worker_command(args, threads, json_path):
    cmd = [sys.executable, "-m", "fastvae.bench", "--worker", "--threads", str(threads),
           "--json", json_path, "--only", ",".join(args.only),
           "--batches", ",".join(map(str, args.batches)), "--K", ",".join(map(str, args.Ks))]
    return cmd + (["--quick"] if args.quick else []) + \
        (["--under-load"] if getattr(args, "under_load", False) else [])


def orchestrate(args):
    """One worker process per thread count, then the merged table, JSON and figure."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastvae.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                  else []))
    t0, runs = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="fastvae-bench-") as tmp:
        for threads in args.bench_threads:
            path = os.path.join(tmp, f"threads{threads}.json")
            code = subprocess.run(_worker_command(args, threads, path), env=env).returncode
            if code != 0:
                raise RuntimeError(f"the bench worker for --threads {threads} failed (exit code "
                                   f"{code}); its output is above")
            with open(path) as f:
                runs.append(json.load(f))
    merged = report.merge(runs, argv=sys.argv, wall_s=time.perf_counter() - t0)
    report.print_table(merged)
    figure = args.figure_path or os.path.splitext(args.json_path)[0] + ".png"
    merged["figure"] = report.figure(merged, figure)
    report.write_json(merged, args.json_path)
    print(f"results: {args.json_path}" + (f", figure: {merged['figure']}"
                                          if merged["figure"] else ""))
    return merged
