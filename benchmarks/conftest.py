import json
import os
import platform
import subprocess

import numba
import numpy as np
import pytest

import common


def pytest_sessionstart(session):
    if not session.config.getoption("benchmark_disable"):   # a smoke run records nothing
        common.probe("start")


def _rate(row, seconds_key="fastvae_s", probe_prefix=""):
    """(rate, unit, probe key) of one row's ``seconds_key`` time; the probe key with
    ``probe_prefix`` ("gpu_" for the CUDA column)."""
    if row["flops"]:
        return row["flops"] / row[seconds_key] / 1e9, "GFLOP/s", probe_prefix + "gemm_gflops_f32"
    if row["nbytes"]:
        return row["nbytes"] / row[seconds_key] / 1e9, "GB/s", probe_prefix + "copy_gbs"
    return float("nan"), "", None


def _peak(start, end, key):
    return (start[key] + end[key]) / 2 if key in start and key in end else float("nan")


def _cuda_cell(row, start, end):
    """time, rate and fraction of the GPU probe; "-" where not measured."""
    if row.get("cuda_s") is None:
        return f"{'-':>12}"
    rate, unit, key = _rate(row, "cuda_s", "gpu_")
    return (f"{row['cuda_s'] * 1e6:>10.1f}us{rate:>9.2f} {unit:<7}"
            f"{rate / _peak(start, end, key):>7.1%}")


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
    reason = common.gpu_unavailable_reason()
    if reason is None:
        tr.write_line(f"CUDA column: CUDA events after warm-up; GPU probes start/end: sgemm "
                      f"{start['gpu_gemm_gflops_f32']:.1f}/{end['gpu_gemm_gflops_f32']:.1f} "
                      f"GFLOP/s, copy {start['gpu_copy_gbs']:.1f}/{end['gpu_copy_gbs']:.1f} GB/s")
    else:
        tr.write_line(f"CUDA column: not measured ({reason})")
    tr.write_line(f"{'op':<28}{'size':<22}{'dtype':<9}{'fastvae':>11}{'numpy':>11}{'speedup':>9}"
                  f"{'rate':>18}{'of peak':>9}"
                  f"{'cuda':>12}{'rate':>17}{'of GPU':>7}")
    for row in common.RESULTS:
        rate, unit, peak_key = _rate(row)
        peak = _peak(start, end, peak_key)
        tr.write_line(f"{row['op']:<28}{str(row['size']):<22}{row['dtype']:<9}"
                      f"{row['fastvae_s'] * 1e6:>9.1f}us{row['numpy_s'] * 1e6:>9.1f}us"
                      f"{row['numpy_s'] / row['fastvae_s']:>8.2f}x{rate:>10.2f} {unit:<7}"
                      f"{rate / peak:>8.1%}{_cuda_cell(row, start, end)}")
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
                   "cuda_unavailable_reason": reason,
                   "results": common.RESULTS}, f, indent=1)
    tr.write_line(f"results written to {out}")
