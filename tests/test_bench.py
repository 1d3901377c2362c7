"""The benchmark suite (fastvae/bench): architecture bookkeeping, the peers' models against
fastvae's, the bound arithmetic and the probes, short end-to-end runs of ``fastvae bench`` (with
the peers, with them hidden, and --under-load), the under-load process's life cycle, and the CLI
loading the suite only for ``fastvae bench``. No timing assertions."""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest

from fastvae import cli
from fastvae.bench import arch as bench_arch
from fastvae.bench import probes, report, run, timing, workloads
from fastvae.model import VAE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = [bench_arch.CANONICAL, bench_arch.DEEP, bench_arch.Arch(131, (37, 19, 7), 5)]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_arch_layers_and_params_match_the_model(arch):
    model = VAE(arch.input_dim, arch.hidden, arch.latent, seed=0)
    assert arch.layers() == [(n, i, o) for n, i, o, _ in model.layers()]
    assert arch.n_params == model.n_params


def test_step_flops_of_the_canonical_model_follow_the_hand_count():
    D, H, L, B = 784, 400, 20, 37
    fwd = 2 * B * (D * H + 2 * H * L + L * H + H * D)
    assert bench_arch.CANONICAL.step_flops(B) == fwd + 2 * fwd - 2 * B * D * H
    assert bench_arch.CANONICAL.decoder_flops_per_pair() == 2 * (L * H + H * D)
    assert bench_arch.CANONICAL.n_params == 652_824


def _fastvae_with_weights(arch, layers):
    """A fastvae model whose (W (in, out), b) per layer name are given."""
    model = VAE(arch.input_dim, arch.hidden, arch.latent, seed=0)
    for name, (W, b) in layers.items():
        model.params[f"{name}.W"], model.params[f"{name}.b"] = W, b
    return model


def _check_same_function(arch, model, encode, decode_logits, rng):
    x = (rng.random((29, arch.input_dim)) < 0.3).astype(np.float32)
    z = rng.standard_normal((29, arch.latent)).astype(np.float32)
    mu, logvar = encode(x)
    want_mu, want_logvar = model.encode(x)
    np.testing.assert_allclose(mu, want_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logvar, want_logvar, rtol=1e-4, atol=1e-5)
    probs = 1 / (1 + np.exp(-decode_logits(z).astype(np.float64)))
    np.testing.assert_allclose(probs, model.decode(z), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS[1:], ids=lambda a: a.name)
def test_torch_peer_builds_the_same_architecture(arch):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional peer (fastvae[bench])")
    from fastvae.bench import peers
    tm = peers.torch_model(torch, arch)
    mods = {f"enc{i}": m for i, m in enumerate(tm.enc)}
    mods.update(enc_mu=tm.enc_mu, enc_logvar=tm.enc_logvar, dec_out=tm.dec_out)
    mods.update({f"dec{i}": m for i, m in enumerate(tm.dec)})
    layers = {n: (m.weight.detach().numpy().T, m.bias.detach().numpy() + 0.1)
              for n, m in mods.items()}
    with torch.no_grad():
        for n, m in mods.items():
            m.bias += 0.1   # nonzero biases, so a bias bug shows
    assert sum(p.numel() for p in tm.parameters()) == arch.n_params
    model = _fastvae_with_weights(arch, layers)
    with torch.no_grad():
        _check_same_function(arch, model, lambda x: [t.numpy() for t in
                                                     tm.encode(torch.from_numpy(x))],
                             lambda z: tm.decode(torch.from_numpy(z)).numpy(),
                             np.random.default_rng(3))


@pytest.mark.parametrize("arch", ARCHS[1:], ids=lambda a: a.name)
def test_jax_peer_builds_the_same_architecture(arch):
    jax = pytest.importorskip("jax", reason="JAX is an optional peer (fastvae[bench])")
    from fastvae.bench import peers
    p = peers.jax_params(jax, arch)
    rng = np.random.default_rng(5)
    def nonzero_bias(a):   # the builder starts biases at zero; a bias bug must show
        return jax.numpy.asarray(0.1 * rng.standard_normal(a.shape).astype(np.float32))
    p = jax.tree_util.tree_map(lambda a: nonzero_bias(a) if a.ndim == 1 else a, p)
    layers = {f"enc{i}": wb for i, wb in enumerate(p["enc"])}
    layers.update({f"dec{i}": wb for i, wb in enumerate(p["dec"])})
    layers.update(enc_mu=p["enc_mu"], enc_logvar=p["enc_logvar"], dec_out=p["dec_out"])
    layers = {n: tuple(np.asarray(a) for a in wb) for n, wb in layers.items()}
    assert sum(a.size for wb in layers.values() for a in wb) == arch.n_params
    model = _fastvae_with_weights(arch, layers)
    _check_same_function(arch, model,
                         lambda x: [np.asarray(a) for a in peers._jax_encode(jax, p, x)],
                         lambda z: np.asarray(peers._jax_decode(jax, p, z)), rng)


def test_per_op_cases_agree_with_numpy_and_count_their_work():
    cases = workloads.per_op_cases()   # each checks fastvae against NumPy before returning
    assert [c.name for c in cases] == ["dense fwd relu", "dense bwd relu", "fused ELBO + grads",
                                       "Adam update", "logsumexp fwd"]
    assert cases[0].flops == 2 * 128 * 784 * 400 and cases[1].flops == 2 * cases[0].flops
    assert cases[3].nbytes == 4 * 7 * 652_824
    for c in cases:
        c.fastvae(), c.numpy()


def test_probes_measure_every_planned_product_in_its_metric():
    out = probes.measure(probes.op_plan())
    assert out["gpu"] is None and set(out["cpu"]) == {probes.GEMM_KEY, probes.COPY_KEY}
    gemm, copy = out["cpu"][probes.GEMM_KEY], out["cpu"][probes.COPY_KEY]
    assert gemm["gflops"] == pytest.approx(2 * 128 * 784 * 400 / gemm["seconds"] / 1e9)
    assert copy["gbs"] == pytest.approx(2 * probes.COPY_BYTES / copy["seconds"] / 1e9)
    assert probes.sgemm_gflops() > 0
    plan = run.probe_plan(types.SimpleNamespace(only=["train", "ops"], batches=[16]))
    assert set(plan) == {"train:784-400-20:b16", "train:784-512-256-32:b16",
                         probes.GEMM_KEY, probes.COPY_KEY}


def test_bounds_fractions_and_ratios_come_from_the_given_probes():
    probes = {w: {"cpu": {"k": {"gflops": g}}, "gpu": None} for w, g in (("start", 40.0),
                                                                         ("end", 25.0))}
    row = dict(kind="rate", flops_per_unit=2e6, bytes_per_unit=None, probe_key="k",
               results={n: {"median": m} for n, m in (("fastvae", 9000.0), ("torch", 6000.0))})
    run.add_bounds(row, probes)
    assert row["bound"]["cpu"]["high"] == pytest.approx(40e9 / 2e6)   # 20k samples/s
    assert row["bound"]["cpu"]["low"] == pytest.approx(25e9 / 2e6)
    assert row["fraction_of_bound"]["fastvae"]["low"] == pytest.approx(9000 / 20000)
    assert row["fraction_of_bound"]["fastvae"]["high"] == pytest.approx(9000 / 12500)
    assert row["results"]["torch"]["gflops"] == pytest.approx(6000 * 2e6 / 1e9)
    assert row["ratios"] == {"torch": pytest.approx(1.5)}
    cost = dict(kind="cost", results={"fastvae": {"value": 20.0}, "jax": {"value": 300.0}})
    assert run.add_bounds(cost, probes)["ratios"] == {"jax": pytest.approx(15.0)}  # jax / fastvae


def _rows(merged, workload):
    return [(r, row) for r in merged["runs"] for row in r["rows"] if row["workload"] == workload]


def _check_rate_rows(merged, workloads_expected):
    for r, row in (pair for w in workloads_expected for pair in _rows(merged, w)):
        assert row["results"], row["label"]
        for name, res in row["results"].items():
            assert res["median"] > 0 and math.isfinite(res["median"]), (row["label"], name)
            assert len(res["rates"]) == res["n"] >= 5
            assert all(v > 0 and math.isfinite(v) for v in res["rates"])
        # the fraction of the bound comes from this run's own start and end probes
        probed = [r["probes"][w]["cpu"][row["probe_key"]]["gflops"] for w in ("start", "end")]
        bounds = [g * 1e9 / row["flops_per_unit"] for g in probed]
        fv = row["results"]["fastvae"]["median"]
        assert row["fraction_of_bound"]["fastvae"]["low"] == pytest.approx(fv / max(bounds))
        assert row["fraction_of_bound"]["fastvae"]["high"] == pytest.approx(fv / min(bounds))
        for peer, ratio in row["ratios"].items():
            assert ratio == pytest.approx(fv / row["results"][peer]["median"])


def test_fastvae_bench_quick_run_writes_json_table_and_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--only", "train,loglik", "--batches", "16",
                     "--K", "50", "--threads", "1", "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    for key in ("machine", "versions", "git_commit", "gpu", "peers", "settings", "runs"):
        assert key in merged
    assert merged["threads"] == [1] and merged["runs"][0]["threads"] == 1
    assert merged["runs"][0]["env"]["NUMBA_NUM_THREADS"] == "1"
    assert merged["versions"]["numpy"] == np.__version__
    assert [row["size"] for _, row in _rows(merged, "train")] == ["batch 16", "batch 16"]
    assert [row["model"] for _, row in _rows(merged, "train")] == ["784-400-20", "784-512-256-32"]
    assert [row["K"] for _, row in _rows(merged, "loglik")] == [50]
    _check_rate_rows(merged, ("train", "loglik"))
    expected = {"fastvae"}
    expected |= {"torch"} if importlib.util.find_spec("torch") else set()
    expected |= {"jax"} if importlib.util.find_spec("jax") else set()
    for _, row in _rows(merged, "train") + _rows(merged, "loglik"):
        assert expected <= set(row["results"])
        if not merged["gpu"]["available"]:
            assert row["missing"]["fastvae cuda"].startswith("no GPU")
    assert not any("under_load" in row for _, row in _rows(merged, "train"))   # mode off
    printed = capsys.readouterr().out
    assert "Training step (samples/s)" in printed and "log-likelihood 784-400-20" in printed
    assert "under load" not in printed
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _env_without_peers(tmp_path):
    """os.environ for a run in which every process fails to import torch and jax."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['torch'] = None\nsys.modules['jax'] = None\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), ROOT]))


def test_missing_peers_are_reported_as_not_installed(tmp_path):
    env = _env_without_peers(tmp_path)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastvae.bench", "--quick", "--only", "loglik",
                           "--K", "50", "--threads", "1", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    for peer in ("torch", "jax"):
        assert not merged["peers"][peer]["installed"]
        assert merged["peers"][peer]["reason"].startswith("not installed")
    [(_, row)] = _rows(merged, "loglik")
    assert set(row["results"]) == {"fastvae"}
    assert row["missing"]["torch"].startswith("not installed")
    assert row["missing"]["jax"].startswith("not installed")
    _check_rate_rows(merged, ("loglik",))
    table = proc.stdout[proc.stdout.index("Importance-weighted"):]
    assert table.count("not installed") >= 2


def test_report_formats_every_section_from_a_synthetic_merge():
    rate = dict(workload="ops", label="dense fwd relu", size="128x784x400", kind="rate",
                unit="calls/s", flops_per_unit=8e7, bytes_per_unit=None, probe_key="g",
                results={"fastvae": {"median": 250.0, "spread": 0.1, "n": 5, "rates": [250.0]},
                         "numpy": {"median": 200.0, "spread": 0.2, "n": 5, "rates": [200.0]}},
                missing={"fastvae cuda": "no GPU: none"})
    cost = dict(workload="memory", label="working memory", size="N=3, K=7", kind="cost",
                unit="MB", results={"fastvae": {"value": 12.5}},
                missing={"jax": "not installed (ImportError)"})
    probes = {w: {"cpu": {"g": {"gflops": 30.0}}, "gpu": None} for w in ("start", "end")}
    for row in (rate, cost):
        run.add_bounds(row, probes)
    the_run = dict(threads=2, probes=probes, rows=[rate, cost],
                   machine=dict(cpu="cpu", cpus=2, platform="p"), versions={"numpy": "2"},
                   git_commit=None, gpu=dict(available=False, reason="none"),
                   peers={"jax": {"installed": False, "reason": "not installed"}},
                   settings=dict(quick=True, repeats=5, block_s=0.05))
    merged = report.merge([the_run], argv=["x"], wall_s=1.0)
    text = "\n".join(report.table_lines(merged))
    assert "4.00ms ±10%" in text and "5.00ms ±20% 1.25x" in text   # time per call, fv/numpy
    assert "0.67-0.67" in text                                        # 20 / 30 GFLOP/s
    assert "12.5 MB" in text and "not installed" in text and "no GPU" in text


# ---------------------------------------------------------------------------------------------
# --under-load
# ---------------------------------------------------------------------------------------------
def _load_running(pid):
    """True while pid is a live busy-loop load process (not once it has exited: a zombie or a
    reused pid does not count)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"fastvae bench: CPU load" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_under_load_reports_quiet_loaded_and_kept_per_contender_and_stops_the_load(tmp_path):
    out = tmp_path / "bench.json"   # peers hidden: fastvae is the only contender (quick)
    proc = subprocess.run([sys.executable, "-m", "fastvae.bench", "--quick", "--only", "train",
                           "--batches", "16", "--threads", "1", "--under-load",
                           "--json", str(out)],
                          env=_env_without_peers(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads(out.read_text())
    assert merged["settings"]["under_load"] is True
    rows = _rows(merged, "train")
    assert [row["model"] for _, row in rows] == ["784-400-20", "784-512-256-32"]
    _check_rate_rows(merged, ("train",))   # the quiet numbers are the usual row
    pids = []
    for _, row in rows:
        ul = row["under_load"]
        assert set(ul["results"]) == set(row["results"]) == {"fastvae"}
        for name, r in ul["results"].items():
            assert r["quiet"] == row["results"][name]["median"]
            assert len(r["rates"]) == r["n"] == merged["settings"]["repeats"]
            assert all(v > 0 and math.isfinite(v) for v in r["rates"])
            assert r["loaded"] == pytest.approx(float(np.median(r["rates"])))
            assert r["kept"] == pytest.approx(r["loaded"] / r["quiet"])
            assert r["min_over_median"] == pytest.approx(min(r["rates"]) / r["loaded"])
            assert 0 < r["min_over_median"] <= 1 and 0 < r["quiet_min_over_median"] <= 1
        load = ul["load"]
        assert load["stopped"] in ("terminate", "kill") and load["returncode"] is not None
        pids.append(load["pid"])
    assert len(set(pids)) == len(rows)   # one load process per row, each started and stopped
    assert not any(_load_running(pid) for pid in pids)
    table = proc.stdout[proc.stdout.index("Training step under load"):]
    assert "kept" in table and "min/median" in table and table.count("fastvae") >= 2


def _fake_ctx():
    return types.SimpleNamespace(threads=1, s=types.SimpleNamespace(repeats=3, block_s=0.01))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_loaded_blocks_still_stops_the_load(monkeypatch, error):
    started, start = [], timing.start_cpu_load
    monkeypatch.setattr(timing, "start_cpu_load", lambda: started.append(start()) or started[-1])

    def fails():
        assert _load_running(started[0].pid)   # the load runs while the loaded blocks do
        raise error("a contender failed during the loaded blocks")
    quiet = {"fastvae": timing.summary([1.0, 2.0, 3.0])}
    with pytest.raises(error):
        run._under_load(_fake_ctx(), "train", {"fastvae": (fails, None)}, {"fastvae": 1}, 1,
                        quiet)
    [proc] = started
    assert proc.returncode is not None and not _load_running(proc.pid)


def test_the_load_process_ends_by_itself_when_its_parent_dies():
    code = ("import os, signal\nfrom fastvae.bench import timing\n"
            "print(timing.start_cpu_load().pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")   # no finally, no clean-up
    parent = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert parent.returncode == -signal.SIGKILL, parent.stderr[-2000:]
    pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 60   # a liveness deadline, not a speed check
    while _load_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _load_running(pid)


def test_under_load_summary_gives_kept_and_min_block_fractions():
    quiet = {"fastvae": timing.summary([90.0, 100.0, 110.0]),
             "jax": timing.summary([200.0, 200.0, 200.0])}
    loaded = {"fastvae": [30.0, 50.0, 60.0], "jax": [190.0, 180.0, 200.0]}
    out = run.under_load_summary(quiet, loaded, {"pid": 1})
    fv, jx = out["results"]["fastvae"], out["results"]["jax"]
    assert out["load"] == {"pid": 1}
    assert (fv["quiet"], fv["loaded"], jx["quiet"], jx["loaded"]) == (100.0, 50.0, 200.0, 190.0)
    assert fv["kept"] == pytest.approx(0.5) and jx["kept"] == pytest.approx(0.95)
    assert fv["min_over_median"] == pytest.approx(0.6)       # 30 / 50
    assert fv["quiet_min_over_median"] == pytest.approx(0.9)  # 90 / 100
    assert fv["rates"] == loaded["fastvae"] and fv["n"] == 3


def test_report_under_load_section_from_a_synthetic_merge():
    def row(threads):
        ul = run.under_load_summary({"fastvae": timing.summary([4000.0, 4000.0])},
                                    {"fastvae": [1000.0, 3000.0, 3000.0]},
                                    dict(pid=7, cpu_s=1.0, wall_s=2.0))
        return dict(workload="train", label="train step 784-400-20", size="batch 32",
                    kind="rate", unit="samples/s", flops_per_unit=None, bytes_per_unit=None,
                    results={"fastvae": {"median": 4000.0, "spread": 0.0, "n": 2,
                                         "rates": [4000.0, 4000.0]}},
                    missing={}, under_load=ul, bound={}, fraction_of_bound={}, ratios={})
    runs = [dict(threads=t, rows=[row(t)], probes={"start": {"cpu": {}}, "end": {"cpu": {}}})
            for t in (1, 2)]
    merged = dict(runs=runs, threads=[1, 2])
    lines = report._under_load_lines(merged)
    assert lines[1].startswith("Training step under load")
    body = [ln.split() for ln in lines[4:6]]
    # thr, contender, quiet, loaded, kept, min/median (1000 / 3000 < 0.40: flagged), load CPU
    assert body[0][-9:] == ["1", "fastvae", "4.00k", "3.00k", "0.75", "0.33", "!", "0.50",
                            "core"]
    assert body[1] == ["2", "fastvae", "4.00k", "3.00k", "0.75", "0.33", "!", "0.50", "core"]
    for r in runs:
        del r["rows"][0]["under_load"]
    assert report._under_load_lines(merged) == []


def test_under_load_needs_the_train_workload(capsys):
    assert cli.main(["bench", "--under-load", "--only", "loglik", "--threads", "1"]) == \
        cli.EXIT_USAGE
    assert "--under-load measures the train workload" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the CLI loads the suite only for `fastvae bench`
# ---------------------------------------------------------------------------------------------
def test_the_cli_imports_no_benchmark_code_until_fastvae_bench_is_parsed():
    code = textwrap.dedent("""
        import contextlib, io, json, sys
        def bench_modules():
            return sorted(m for m in sys.modules if m.split(".")[:2] == ["fastvae", "bench"])
        import fastvae.cli as cli
        seen = [bench_modules()]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli._parser().parse_args(["--help"])
        cli._parser().parse_args(["train"])
        seen.append(bench_modules())
        cli._parser().parse_args(["bench", "--quick"])
        seen.append(bench_modules())
        print(json.dumps(seen))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    on_import, after_help_and_train, after_bench = json.loads(proc.stdout.splitlines()[-1])
    assert on_import == [] and after_help_and_train == []
    assert after_bench == ["fastvae.bench"]   # its options; the suite itself loads when it runs


def test_fastvae_bench_help_lists_the_suite_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    for flag in ("--quick", "--threads", "--json", "--figure", "--only", "--batches", "--K",
                 "--under-load"):
        assert flag in out
