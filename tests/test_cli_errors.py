"""The command line's failures: one line on stderr, ``fastvae <command>: error: ...``, and one exit
code per kind (cli.EXIT_*); only a bug prints a traceback. And --resume against the checkpoint's
architecture and data."""
import errno
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from fastvae import cli
from fastvae.model import VAE
from fastvae.train import TrainingInterrupted

pytest.importorskip("sklearn", reason="the digits dataset comes with scikit-learn")

TINY = ["--data", "digits", "--hidden", "16", "--latent", "3", "--K", "0"]


def _error(capsys, command):
    """The one error line on stderr (progress bars aside); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastvae {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 64-16-3 Bernoulli relu model trained one epoch on digits."""
    path = tmp_path_factory.mktemp("run") / "m.npz"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(path)]) == cli.EXIT_OK
    return path


def test_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "nope.npz"
    assert cli.main(["evaluate", str(path), "--data", "digits", "--K", "0"]) == cli.EXIT_USAGE
    assert str(path) in _error(capsys, "evaluate")


@pytest.mark.parametrize("edit", ["config list", "extra key", "int step", "no m"])
def test_malformed_checkpoint_metadata_is_a_usage_error_naming_the_file(trained, tmp_path,
                                                                        capsys, edit):
    with np.load(trained) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    if edit == "config list":
        meta["config"] = list(meta["config"].values())
    elif edit == "extra key":
        meta["extra"] = 1
    elif edit == "int step":
        meta["optimizer"]["step"] = "12"
    else:
        del arrays["optimizer/m"]
    path = tmp_path / "bad.npz"
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    assert cli.main(["sample", str(path), "--out", str(tmp_path / "s.png")]) == cli.EXIT_USAGE
    assert str(path) in _error(capsys, "sample")


def test_a_checkpoint_that_is_a_folder_is_an_io_error(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path), "--out", str(tmp_path / "s.png")]) == cli.EXIT_IO
    line = _error(capsys, "sample")
    assert str(tmp_path) in line and "is a folder" in line


def test_bad_threads_is_a_usage_error(capsys):
    assert cli.main(["--threads", "0", "sample", "x.npz"]) == cli.EXIT_USAGE
    _error(capsys, "sample")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_exits_3_and_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "m.npz"
    code = cli.main(["train", *TINY, "--epochs", "1", "--lr", "1e30", "--out", str(out)])
    assert code == cli.EXIT_DIVERGED
    line = _error(capsys, "train")
    assert "diverged" in line and "--lr" in line and str(out) in line
    assert "last good parameters" in line
    assert np.isfinite(VAE.load(out).params.flat).all()


def test_disk_full_while_writing_the_checkpoint_exits_4_naming_it(tmp_path, capsys,
                                                                   monkeypatch):
    from fastvae import checkpoint

    def full(path, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")   # no filename, as from write()
    monkeypatch.setattr(checkpoint, "_atomic_savez", full)
    out = tmp_path / "m.npz"
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == cli.EXIT_IO
    line = _error(capsys, "train")
    assert "disk full" in line and str(out) in line and "--out" in line


def test_permission_denied_exits_4_naming_the_path(trained, tmp_path, capsys, monkeypatch):
    from fastvae import figures
    target = tmp_path / "locked" / "s.png"

    def denied(model, path, **options):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(figures, "sample_grid", denied)
    assert cli.main(["sample", str(trained), "--out", str(target)]) == cli.EXIT_IO
    line = _error(capsys, "sample")
    assert str(target) in line and "permission denied" in line


def test_ctrl_c_outside_training_exits_130_in_one_line(trained, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(VAE, "elbo", interrupted)
    assert cli.main(["evaluate", str(trained), "--data", "digits", "--K", "0"]) == \
        cli.EXIT_INTERRUPTED
    assert "interrupted" in _error(capsys, "evaluate")


def test_sigterm_during_training_exits_143(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.npz"

    def terminated(self, x, **options):
        raise TrainingInterrupted("stopped by SIGTERM", "SIGTERM", str(out), 1, 3)
    monkeypatch.setattr(VAE, "fit", terminated)
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == \
        cli.EXIT_TERMINATED
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_exits_1(trained, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something fastvae did not expect")
    monkeypatch.setattr(VAE, "elbo", broken)
    assert cli.main(["evaluate", str(trained), "--data", "digits", "--K", "0"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something fastvae did not expect" in err


# --------------------------------------------------------------------------------------------
# --resume and the architecture flags
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, stored", [
    ("--hidden", ["8"], "16"), ("--hidden", ["16", "16"], "16"), ("--latent", ["4"], "3"),
    ("--likelihood", ["gaussian"], "bernoulli"), ("--activation", ["tanh"], "relu"),
])
def test_resume_refuses_flags_that_contradict_the_checkpoint(trained, capsys, flag, value,
                                                             stored):
    before = trained.read_bytes()
    code = cli.main(["train", "--data", "digits", "--K", "0", "--epochs", "2", "--resume",
                     "--out", str(trained), flag, *value])
    assert code == cli.EXIT_USAGE
    line = _error(capsys, "train")
    assert f"{flag} {' '.join(value)} contradicts the checkpoint {trained}" in line
    assert f"has {flag} {stored}" in line
    assert trained.read_bytes() == before


def test_resume_takes_the_architecture_from_the_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "m.npz"
    shutil.copy(trained, out)
    assert cli.main(["train", "--data", "digits", "--K", "0", "--epochs", "2", "--resume",
                     "--out", str(out), "--latent", "3"]) == cli.EXIT_OK   # agreeing: fine
    model = VAE.load(out)
    assert model.hidden_dims == (16,) and model.latent_dim == 3 and len(model.history) == 2
    assert "resuming" in capsys.readouterr().out


def test_a_gaussian_checkpoint_resumes_without_likelihood(tmp_path, capsys):
    out = tmp_path / "g.npz"
    assert cli.main(["train", *TINY, "--likelihood", "gaussian", "--epochs", "1",
                     "--out", str(out)]) == cli.EXIT_OK
    assert cli.main(["train", "--data", "digits", "--K", "0", "--epochs", "2", "--resume",
                     "--out", str(out)]) == cli.EXIT_OK, capsys.readouterr().err
    model = VAE.load(out)
    assert model.likelihood == "gaussian" and len(model.history) == 2


def test_resume_refuses_data_of_another_width(tmp_path, capsys):
    out = tmp_path / "m.npz"
    VAE(10, (4,), 2, seed=0).save(out)
    assert cli.main(["train", "--data", "digits", "--K", "0", "--epochs", "1", "--resume",
                     "--out", str(out)]) == cli.EXIT_USAGE
    line = _error(capsys, "train")
    assert "--data digits has 64 columns" in line and str(out) in line and "10" in line


def test_a_new_model_gets_the_documented_defaults_and_args_the_effective_values(tmp_path):
    args = cli._parser().parse_args(["train", "--out", str(tmp_path / "none.npz"), "--resume"])
    assert (args.hidden, args.latent, args.likelihood, args.activation) == (None,) * 4
    model = cli._model_for_training(args, SimpleNamespace(x_train=np.zeros((2, 64))))
    assert (model.hidden_dims, model.latent_dim, model.likelihood, model.activation) == \
        ((400,), 20, "bernoulli", "relu")
    assert (args.hidden, args.latent, args.likelihood, args.activation) == \
        ([400], 20, "bernoulli", "relu")
    args = cli._parser().parse_args(["train", "--hidden", "--likelihood", "gaussian"])
    model = cli._model_for_training(args, SimpleNamespace(x_train=np.zeros((2, 5))))
    assert model.hidden_dims == () and model.likelihood == "gaussian" and args.hidden == []
