"""benchmarks/interop.py --quick end to end in a subprocess (about 20-40 s on 2 cores): every
contender runs, including fastvae's torch.compile'd and jax.jit'ed training steps, and the loss
values agree with the formulas. No timing assertions."""
import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch is an optional extra")
pytest.importorskip("jax", reason="jax is an optional extra")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_interop_quick(tmp_path):
    out = tmp_path / "interop.json"
    run = subprocess.run([sys.executable, "benchmarks/interop.py", "--quick", "--threads", "2",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "sgemm probe (start)" in run.stdout and "sgemm probe (end)" in run.stdout
    assert "| op | size | library |" in run.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["library"], r["op"]) for r in rows if r["part"] == "op"] == [
        (lib, op) for lib in ("torch", "jax")
        for op in ("reparameterize", "elbo_loss", "iwae_loss")]
    assert [r["library"] for r in rows if r["part"] == "step"] == ["torch", "jax"]
    for r in rows:
        for who in ("fastvae", "formula"):
            assert "median" in r[who], (r["library"], r["op"], who, r[who].get("error"))
        assert r["values_agree"] is not False, (r["library"], r["op"])
