"""Nothing lost: checkpoints after every epoch and every N steps, SIGINT/SIGTERM/SIGKILL at
random moments then --resume (bit for bit the uninterrupted run), an unwritable or full output
found before the first step, saves killed midway, undone Adam updates, and fit's epoch counts."""
import errno
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastvae import checkpoint as ckpt
from fastvae import cli
from fastvae import train as train_mod
from fastvae.model import VAE
from fastvae.train import CheckpointNotWritten, TrainingDiverged, TrainingInterrupted

OPTIONS = dict(batch_size=16, lr=3e-2, binarize="dynamic", early_stopping_patience=2,
               progress=False)


def _data():
    rng = np.random.default_rng(3)
    return rng.random((90, 12)).astype(np.float32), rng.random((30, 12)).astype(np.float32)


def _model():
    return VAE(12, (8,), 2, seed=0)


def _state(model):
    """Everything a resumed run must reproduce exactly (the history without its timings)."""
    opt = model.optimizer_state
    history = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")}
               for h in model.history]
    return model.params.flat, opt.m, opt.v, opt.step, history


def _assert_same(a, b):
    (*arrays_a, step_a, history_a), (*arrays_b, step_b, history_b) = _state(a), _state(b)
    for got, want in zip(arrays_a, arrays_b):
        np.testing.assert_array_equal(got, want)
    assert (step_a, history_a) == (step_b, history_b)


@pytest.fixture(autouse=True)
def sigint_not_ignored():
    """A shell's background job (CI, nohup) starts with SIGINT ignored, and fit leaves an ignored
    signal ignored. These tests send SIGINT as a terminal's Ctrl-C would reach a foreground
    program, so they run with Python's default handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _signal_after_step(monkeypatch, step, signum):
    """Make fit's train_step send signum to this process right after Adam's step ``step``."""
    real = train_mod.train_step

    def step_then_signal(model, opt, *args, **kw):
        loss = real(model, opt, *args, **kw)
        if opt.step == step:
            os.kill(os.getpid(), signum)
        return loss
    monkeypatch.setattr(train_mod, "train_step", step_then_signal)


@pytest.fixture(scope="module")
def straight():
    """6 steps an epoch; validation ELBO best after epoch 3, then early stopping after 5."""
    x, val = _data()
    model = _model()
    model.fit(x, epochs=10, validation_data=val, **OPTIONS)
    vals = [h["val_elbo"] for h in model.history]
    assert len(vals) == 5 and int(np.argmax(vals)) == 2   # what the cases below rely on
    return model


@pytest.mark.parametrize("signum, step, position", [
    (signal.SIGINT, 20, (4, 2)),    # inside epoch 4, after the best epoch: best params needed
    (signal.SIGTERM, 24, (5, 0)),   # at the end of epoch 4: one bad epoch already counted
])
def test_signal_stops_at_a_step_boundary_and_resuming_is_bit_identical(
        straight, monkeypatch, tmp_path, signum, step, position):
    x, val = _data()
    model, path = _model(), tmp_path / "m.npz"
    before = signal.getsignal(signum)
    _signal_after_step(monkeypatch, step, signum)
    with pytest.raises(TrainingInterrupted) as info:
        model.fit(x, epochs=10, validation_data=val, checkpoint=path, **OPTIONS)
    e = info.value
    assert (e.signal_name, e.checkpoint, (e.epoch, e.step_in_epoch)) == \
        (signal.Signals(signum).name, path, position)
    assert f"epoch {position[0]}, step {position[1]} of 6" in str(e)
    assert signal.getsignal(signum) is before and model.optimizer_state.step == step
    monkeypatch.undo()
    resumed = VAE.load(path)
    assert resumed.resume_state["progress"]["step_in_epoch"] == position[1]
    resumed.fit(x, total_epochs=10, validation_data=val, **OPTIONS)
    _assert_same(resumed, straight)
    model.fit(x, epochs=10 - len(model.history), validation_data=val, **OPTIONS)   # in memory
    _assert_same(model, straight)


def test_a_second_ctrl_c_while_the_checkpoint_is_written_changes_nothing(
        straight, monkeypatch, tmp_path):
    x, val = _data()
    path, real = tmp_path / "m.npz", np.lib.format.write_array

    def interrupted_write(*args, **kw):   # Ctrl-C again, between two arrays of the archive
        os.kill(os.getpid(), signal.SIGINT)
        real(*args, **kw)
    _signal_after_step(monkeypatch, 20, signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        _model().fit(x, epochs=10, validation_data=val, checkpoint=path, **OPTIONS)
    monkeypatch.undo()
    monkeypatch.setattr(np.lib.format, "write_array", interrupted_write)
    resumed = VAE.load(path)
    with pytest.raises(TrainingInterrupted, match="epoch 4, step 2 of 6"):
        resumed.fit(x, total_epochs=10, validation_data=val, checkpoint=path, **OPTIONS)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    again = VAE.load(path)
    again.fit(x, total_epochs=10, validation_data=val, **OPTIONS)
    _assert_same(again, straight)


def test_checkpoints_before_step_1_after_every_epoch_and_every_n_steps(monkeypatch, tmp_path):
    x, _ = _data()
    written, real = [], train_mod.save

    def record(model, path):
        real(model, path)
        saved = VAE.load(path)
        state = saved.resume_state   # None at an epoch boundary without early stopping
        written.append((len(saved.history), state["progress"]["step_in_epoch"] if state else 0,
                        saved.optimizer_state.step))
    monkeypatch.setattr(train_mod, "save", record)
    _model().fit(x, epochs=2, checkpoint=tmp_path / "m.npz", checkpoint_every=4,
                 batch_size=16, progress=False)
    assert written == [(0, 0, 0), (0, 4, 4), (1, 0, 6), (1, 2, 8), (1, 6, 12), (2, 0, 12)]


def test_epochs_trains_more_and_total_epochs_trains_up_to(tmp_path):
    x, _ = _data()
    model = _model()
    model.fit(x, epochs=1, batch_size=16, progress=False)
    model.fit(x, epochs=1, batch_size=16, progress=False)
    assert [h["epoch"] for h in model.history] == [1, 2]
    model.fit(x, total_epochs=3, batch_size=16, progress=False)
    assert len(model.history) == 3 and model.optimizer_state.step == 18
    model.fit(x, total_epochs=2, batch_size=16, progress=False)
    model.fit(x, epochs=0, batch_size=16, progress=False)
    assert len(model.history) == 3 and model.optimizer_state.step == 18
    with pytest.raises(ValueError, match="not both"):
        model.fit(x, epochs=1, total_epochs=4)


def test_a_mid_epoch_resume_needs_the_same_batches(monkeypatch, tmp_path):
    x, _ = _data()
    _signal_after_step(monkeypatch, 2, signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        _model().fit(x, epochs=1, batch_size=16, checkpoint=tmp_path / "m.npz", progress=False)
    with pytest.raises(ValueError, match=r"step 2 of 6, with rows 90, batch_size 16"):
        VAE.load(tmp_path / "m.npz").fit(x, epochs=1, batch_size=32, progress=False)


def test_an_update_that_would_overflow_never_lands(tmp_path):
    x, _ = _data()
    model = _model()
    model.fit(x, epochs=1, batch_size=16, progress=False)
    opt = model.optimizer_state
    before = [a.copy() for a in (model.params.flat, opt.m, opt.v)] + [opt.step]
    with pytest.raises(TrainingDiverged,
                       match=r"step 7 \(epoch 2\).*would make parameters NaN/Inf"):
        model.fit(x, epochs=1, batch_size=16, lr=1e39, checkpoint=tmp_path / "m.npz",
                  progress=False)
    for got, want in zip([model.params.flat, opt.m, opt.v, opt.step], before):
        np.testing.assert_array_equal(got, want)
    saved = VAE.load(tmp_path / "m.npz")   # loading refuses NaN/Inf: these are the good ones
    np.testing.assert_array_equal(saved.params.flat, before[0])
    assert saved.optimizer_state.step == 6


@pytest.mark.parametrize("where", ["parent is a file", "a folder", "full", "read-only"])
def test_an_unwritable_or_full_output_fails_before_the_first_step(where, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    out, codes = {"parent is a file": (tmp_path / "file" / "m.npz", {errno.ENOTDIR}),
                  "a folder": (tmp_path, {errno.EISDIR}),
                  "full": (tmp_path / "m.npz", {errno.ENOSPC}),
                  "read-only": (tmp_path / "ro" / "m.npz", {errno.EACCES, errno.EPERM})}[where]
    if where == "full":
        usage = ckpt.shutil.disk_usage(tmp_path)._replace(free=10_000)
        monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda folder: usage)
    if where == "read-only" and os.geteuid() != 0:
        out.parent.mkdir(mode=0o500)
    elif where == "read-only":   # root writes anywhere a mode forbids; sysfs refuses even root
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("no sysfs, and root ignores a read-only mode")
        out = Path("/sys/fastvae-test/m.npz")
    x, _ = _data()
    model = _model()
    before = model.params.flat.copy()
    with pytest.raises(CheckpointNotWritten) as info:
        model.fit(x, epochs=1, batch_size=16, checkpoint=out, progress=False)
    assert info.value.filename == str(out) and info.value.errno in codes
    assert model.optimizer_state.step == 0
    np.testing.assert_array_equal(model.params.flat, before)
    if where == "full":
        assert "MB free" in str(info.value)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     KeyboardInterrupt()])
def test_a_save_killed_midway_keeps_the_old_checkpoint(failure, monkeypatch, tmp_path):
    model, path = _model(), tmp_path / "m.npz"
    model.save(path)
    real = np.savez

    def half_then_fail(f, **arrays):
        real(f, **arrays)
        f.truncate(f.tell() // 2)
        raise failure
    monkeypatch.setattr(np, "savez", half_then_fail)
    changed = _model()
    changed.params["dec_out.b"] = np.ones(12)
    with pytest.raises(type(failure)):
        changed.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    np.testing.assert_array_equal(VAE.load(path).params.flat, model.params.flat)


def test_stale_temporaries_of_dead_processes_are_removed_at_the_next_save(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()   # its pid is now free
    stale, live = f".m.npz.tmp-{child.pid}-0a1b", f".m.npz.tmp-{os.getppid()}-0a1b"
    other = f".other.npz.tmp-{child.pid}-0a1b"
    for name in (stale, live, other):
        (tmp_path / name).write_bytes(b"partial")
    _model().save(tmp_path / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, other, "m.npz"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_checkpoint_gets_the_mode_the_umask_gives(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        _model().save(tmp_path / "m.npz")
    finally:
        os.umask(previous)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == mode


def test_saving_through_a_symlink_replaces_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    target, link = tmp_path / "runs" / "real.npz", tmp_path / "link.npz"
    _model().save(target)
    link.symlink_to(target)
    model = _model()
    model.params["dec_out.b"] = np.ones(12)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(VAE.load(target).params.flat, model.params.flat)


# --- the command line in a child process, stopped at random moments -------------------------

# The child takes SIGINT as Python does by default even where the test runner ignores it (a
# background job), and can be given a file size limit (a full disk, portably).
CHILD = """import resource, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[1] != "-":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
from fastvae.cli import main
sys.exit(main(sys.argv[2:]))
"""
EPOCHS, STEPS = 40, 9   # 270 training rows in batches of 32


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The training command's arguments, and its uninterrupted result (run in this process)."""
    folder = tmp_path_factory.mktemp("cli")
    np.save(folder / "x.npy", np.random.default_rng(0).random((300, 64)).astype(np.float32))
    args = ["train", "--data", str(folder / "x.npy"), "--hidden", "16", "--latent", "3",
            "--epochs", str(EPOCHS), "--batch-size", "32", "--K", "0"]
    assert cli.main(args + ["--out", str(folder / "straight.npz")]) == 0
    return args, VAE.load(folder / "straight.npz")


def _child(argv, fsize_limit="-"):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(fsize_limit), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved_step(path):
    try:
        with np.load(path) as npz:
            return json.loads(npz["meta"].tobytes())["optimizer"]["step"]
    except (FileNotFoundError, KeyError, TypeError):
        return -1   # not written yet, or before the first step


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_at_a_random_moment_resumes_bit_identically(cli_run, tmp_path, signum):
    args, straight = cli_run
    out = tmp_path / "m.npz"
    rng = random.Random(signum)
    # Progress to poll; after SIGINT/SIGTERM the save at the step boundary holds the position.
    every = "1" if signum == signal.SIGKILL else "4"
    child = _child(args + ["--out", str(out), "--checkpoint-every", every])
    at_step = rng.randrange(1, EPOCHS * STEPS // 2)
    while _saved_step(out) < at_step and child.poll() is None:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.01))
    if child.poll() is not None:
        pytest.fail(f"training ended before it could be stopped: {child.communicate()[1]}")
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL
        resume = args + ["--out", str(out), "--resume"]
    else:
        assert child.returncode == (130 if signum == signal.SIGINT else 143), err
        assert "Traceback" not in err and f"{signal.Signals(signum).name}: training stopped " \
            f"at epoch" in err and f"of {STEPS}" in err
        words = shlex.split(err.split("Resume with: ")[1].splitlines()[0])
        assert words[:2] == ["fastvae", "train"] and "--resume" in words
        resume = words[1:]
    finished = _child(resume)
    out_text, err = finished.communicate(timeout=60)
    assert finished.returncode == 0, err
    assert "resuming" in out_text
    _assert_same(VAE.load(out), straight)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]   # no temporary left behind


def test_a_full_disk_exits_4_with_one_line_before_training(cli_run, tmp_path):
    args, _ = cli_run
    out = tmp_path / "m.npz"
    child = _child(args + ["--out", str(out)], fsize_limit=8192)   # < one checkpoint
    stdout, err = child.communicate(timeout=60)
    assert child.returncode == 4, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastvae train: error: ") and str(out) in \
        lines[0] and "Traceback" not in err, err
    assert "epoch" not in stdout and list(tmp_path.iterdir()) == []
