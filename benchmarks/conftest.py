import json
import os
import platform
import subprocess

import numba
import numpy as np
import pytest

import common


def pytest_sessionstart(session):
    common.probe("start")


def _rate(row):
    if row["flops"]:
        return row["flops"] / row["fastvae_s"] / 1e9, "GFLOP/s", "gemm_gflops_f32"
    if row["nbytes"]:
        return row["nbytes"] / row["fastvae_s"] / 1e9, "GB/s", "copy_gbs"
    return float("nan"), "", None


def pytest_terminal_summary(terminalreporter):
    if not common.RESULTS:
        return
    end = common.probe("end")
    start = common.PROBES["start"]
    tr = terminalreporter
    tr.write_sep("=", "fastvae vs NumPy (median times; rate vs this run's probes)")
    tr.write_line(f"threads: numba={numba.get_num_threads()}  probes start/end: sgemm "
                  f"{start['gemm_gflops_f32']:.1f}/{end['gemm_gflops_f32']:.1f} GFLOP/s, copy "
                  f"{start['copy_gbs']:.1f}/{end['copy_gbs']:.1f} GB/s")
    tr.write_line(f"{'op':<28}{'size':<22}{'dtype':<9}{'fastvae':>11}{'numpy':>11}{'speedup':>9}"
                  f"{'rate':>18}{'of peak':>9}")
    for row in common.RESULTS:
        rate, unit, peak_key = _rate(row)
        peak = (start[peak_key] + end[peak_key]) / 2 if peak_key else float("nan")
        tr.write_line(f"{row['op']:<28}{str(row['size']):<22}{row['dtype']:<9}"
                      f"{row['fastvae_s'] * 1e6:>9.1f}us{row['numpy_s'] * 1e6:>9.1f}us"
                      f"{row['numpy_s'] / row['fastvae_s']:>8.2f}x{rate:>10.2f} {unit:<7}"
                      f"{rate / peak:>8.1%}")
    out = os.environ.get("FASTVAE_BENCH_JSON", "benchmark-ops.json")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    with open(out, "w") as f:
        json.dump({"machine": platform.machine(), "cpus": os.cpu_count(),
                   "threads": numba.get_num_threads(), "numpy": np.__version__,
                   "numba": numba.__version__, "commit": commit, "probes": common.PROBES,
                   "results": common.RESULTS}, f, indent=1)
    tr.write_line(f"results written to {out}")
