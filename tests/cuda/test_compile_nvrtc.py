"""Every kernels/*.cu compiles with NVRTC for sm_80 and sm_90, without errors or warnings, with
exactly the options the launchers pass to cupy.RawModule (fastvae.cuda._module.OPTIONS) plus what
CuPy appends itself (CUPY_APPENDS) and the architecture; no GPU needed.

NVRTC comes from pip (``cuda-bindings`` + ``nvidia-cuda-nvrtc==13.0.*``, the test extra), so a fresh
machine needs no CUDA toolkit. ``--ptxas-options=-v`` makes NVRTC write ptxas's resource report into
the program log: registers, shared memory, stack and spills per kernel. The table is printed at the
end of the run (terminal summary) and written to <pytest basetemp>/ptxas.json; spills fail the test.
"""
import json
import pathlib
import re

import pytest

from fastvae.cuda import _module
from tests.cuda_host.cuda_host import kernel_names

TEST_KERNELS = pathlib.Path(__file__).resolve().parent / "kernels"
SOURCES = [*sorted(_module.kernels_dir().glob("*.cu")), *sorted(TEST_KERNELS.glob("*.cu"))]
ARCHS = ("sm_80", "sm_90")
PTXAS_ROWS = []   # filled by the tests, printed by tests/cuda/conftest.py::pytest_terminal_summary


def nvrtc_compile(source, arch):
    """-> (ok, log, cubin_size) for ``source`` compiled by NVRTC with the launchers' options."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings not installed "
                                "(pip install -e '.[test]')")
    try:
        err, prog = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    except RuntimeError as e:   # libnvrtc not found
        pytest.skip(f"NVRTC library not found ({e}); pip install 'nvidia-cuda-nvrtc==13.0.*'")
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = (*_module.OPTIONS, *_module.CUPY_APPENDS, f"-arch={arch}", "--ptxas-options=-v")
    opts = [o.encode() for o in options]
    try:
        (rc,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        cubin = 0
        if rc == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, cubin = nvrtc.nvrtcGetCUBINSize(prog)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return rc == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.rstrip(b"\0 ").decode(), cubin


def parse_ptxas(log):
    """ptxas -v lines -> {kernel: {registers, smem, stack, spill_stores, spill_loads, barriers}}."""
    out, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = out.setdefault(m.group(1), dict(registers=None, smem=0, stack=0, spill_stores=0,
                                                  spill_loads=0, barriers=0))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            s = re.search(r"(\d+) bytes smem", line)
            cur["barriers"] = int(b.group(1)) if b else 0
            cur["smem"] = int(s.group(1)) if s else 0
    return out


def without_ptxas_info(log):
    return "\n".join(line for line in log.splitlines() if not line.startswith("ptxas") and line.strip())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_nvrtc_compiles_clean(source, arch):
    ok, log, cubin = nvrtc_compile(source, arch)
    assert ok, f"NVRTC failed on {source.name} for {arch}:\n{log}"
    rest = without_ptxas_info(log)
    assert not re.search(r"warning|error", rest, re.I), f"{source.name} {arch}:\n{rest}"
    assert cubin > 0
    stats = parse_ptxas(log)
    kernels = kernel_names(source.read_text())   # what the host harness finds and exports
    assert kernels and sorted(stats) == sorted(kernels), (
        f"{source.name}: NVRTC compiled the kernels {sorted(stats)}, the host harness finds "
        f"{sorted(kernels)} (tests/cuda_host/cuda_host.py::kernel_names)\n{log}")
    for name, s in stats.items():
        PTXAS_ROWS.append(dict(source=source.name, kernel=name, arch=arch, **s))
        assert s["registers"] is not None, log
        assert s["spill_stores"] == 0 and s["spill_loads"] == 0, f"{name} {arch} spills:\n{log}"


def format_table(rows):
    head = f"{'kernel':<28} {'arch':<6} {'regs':>5} {'smem B':>7} {'stack B':>8} {'spill st/ld B':>14}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["source"], r["kernel"], r["arch"])):
        lines.append(f"{r['kernel']:<28} {r['arch']:<6} {r['registers']:>5} {r['smem']:>7} "
                     f"{r['stack']:>8} {r['spill_stores']:>6}/{r['spill_loads']:<7}")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _write_ptxas_json(tmp_path_factory):
    yield
    if PTXAS_ROWS:
        path = tmp_path_factory.getbasetemp() / "ptxas.json"
        path.write_text(json.dumps(PTXAS_ROWS, indent=1))
