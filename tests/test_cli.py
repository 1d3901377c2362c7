"""The command line end to end on the bundled digits: train, evaluate, figures, sample."""
import shutil

import numpy as np
import pytest

from fastvae import cli
from fastvae.model import VAE

pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """One training run for the module (read only: tests get a copy from ``trained``)."""
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["train", "--data", "digits", "--hidden", "32", "--latent", "4",
                     "--epochs", "2", "--out", str(out / "m.npz"), "--figures", str(out),
                     "--K", "20", "--eval-examples", "30"])
    assert code == 0
    return out


@pytest.fixture
def trained(trained_once, tmp_path):
    """This test's own copy of the trained run (checkpoint and figures), so a test that
    resumes or overwrites it changes nothing another test sees."""
    return shutil.copytree(trained_once, tmp_path / "run")


def test_train_writes_a_checkpoint_figures_and_reports(trained, capsys):
    model = VAE.load(trained / "m.npz")
    assert model.hidden_dims == (32,) and len(model.history) == 2
    for name in ("reconstructions_and_samples.png", "training_curves.png"):
        assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_to_the_requested_epochs(trained, capsys):
    assert cli.main(["train", "--data", "digits", "--hidden", "32", "--latent", "4",
                     "--epochs", "3", "--resume", "--out", str(trained / "m.npz")]) == 0
    assert len(VAE.load(trained / "m.npz").history) == 3
    assert "resuming" in capsys.readouterr().out


def test_evaluate_prints_elbo_and_log_likelihood(trained, capsys):
    assert cli.main(["evaluate", str(trained / "m.npz"), "--data", "digits", "--K", "10",
                     "--examples", "20"]) == 0
    out = capsys.readouterr().out
    assert "test ELBO:" in out and "test log p(x) (IWAE, K=10)" in out
    values = [float(line.split(":")[1].split()[0]) for line in out.splitlines()
              if line.startswith("test ")]
    assert all(np.isfinite(v) and v < 0 for v in values)


def test_sample_writes_a_png(trained, tmp_path):
    assert cli.main(["sample", str(trained / "m.npz"), "--n", "9",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert cli.main(["evaluate", str(tmp_path / "junk.npz"), "--data", "digits"]) == 2
    assert "not a readable fastvae checkpoint" in capsys.readouterr().err


def test_every_command_takes_an_asymmetric_checkpoint(tmp_path, capsys):
    """A checkpoint of a model with different encoder and decoder widths (as VAE.from_torch
    makes): evaluate, figures, sample and train --resume read it; a flag it cannot have is
    refused naming the checkpoint."""
    path = tmp_path / "a.npz"
    VAE(64, latent_dim=3, activation=["relu", "tanh", "softplus"], encoder_dims=(24, 12),
        decoder_dims=(16,), seed=2).save(path)
    assert cli.main(["evaluate", str(path), "--data", "digits", "--K", "5",
                     "--examples", "10"]) == 0
    assert "log p(x)" in capsys.readouterr().out
    assert cli.main(["figures", str(path), "--data", "digits", "--out-dir",
                     str(tmp_path)]) == 0
    assert cli.main(["sample", str(path), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["train", "--data", "digits", "--epochs", "1", "--resume", "--out",
                     str(path)]) == 0
    model = VAE.load(path)
    assert len(model.history) == 1 and model.encoder_dims == (24, 12)
    assert cli.main(["train", "--data", "digits", "--hidden", "24", "--epochs", "2", "--resume",
                     "--out", str(path)]) != 0
    assert "--hidden cannot describe the checkpoint" in capsys.readouterr().err
