"""The training loop: minibatch Adam on the ELBO or IWAE bound, with explicit backward passes.

Determinism: for a given seed the epoch order, the binarization draws and the reparameterization
noise depend only on (seed, epoch, step), so a run resumed from a checkpoint, even one written in
the middle of an epoch, continues bit for bit as the uninterrupted run would have. Noise for step
t is the Philox stream of ``seed`` at offset ``t * batch_size * k * L`` (what fastvae.random.normal
gives on every backend); the dynamic binarization of batch b of epoch e draws from
``default_rng([seed, 6, e, b])``.

Nothing is lost: given a checkpoint path, fit writes it before the first step (so an unwritable
folder, or one without room for two checkpoints, fails before any training), after every epoch,
every ``checkpoint_every`` steps, and when training stops on an error or on SIGINT/SIGTERM.
Besides the parameters and Adam's state it holds ``model.resume_state``, which fit keeps current:
{"progress": {key: value for PROGRESS_KEYS}, "best_params": early stopping's best parameters
(flat) or None}, or None between epochs when early stopping is off (nothing to carry over).
"""
import contextlib
import math
import os
import signal
import threading
import time

import numpy as np
from tqdm.auto import tqdm

from . import _validate as check
from ._threads import cpu_work
from .checkpoint import check_room, save
from .data import binarize as bernoulli_draws
from .data import check_data
from .optim import Adam

BINARIZE = (None, "dynamic", "fixed")
DEFAULT_EPOCHS = 10
# Where training stands: the epoch in progress (1-based), its batches done (of steps_in_epoch),
# the sum of their losses times their rows, and its seconds so far; the rows, batch size and seed
# that position depends on; and the epochs since the validation ELBO last improved.
PROGRESS_KEYS = ("epoch", "step_in_epoch", "steps_in_epoch", "loss_sum", "seconds", "rows",
                 "batch_size", "seed", "bad_epochs")


class TrainingDiverged(FloatingPointError):
    """The loss, a gradient or an updated parameter became NaN/Inf; the model keeps the
    parameters and optimizer state of the last good step (the failing update is never applied)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary, after the checkpoint (if any) was
    written. signal_name: "SIGINT" or "SIGTERM"; checkpoint: the path written, or None;
    epoch: the 1-based epoch in progress; step_in_epoch: batches of it already done."""

    def __init__(self, message, signal_name, checkpoint, epoch, step_in_epoch):
        super().__init__(message)
        self.signal_name, self.checkpoint = signal_name, checkpoint
        self.epoch, self.step_in_epoch = epoch, step_in_epoch


class CheckpointNotWritten(OSError):
    """The checkpoint could not be written (unwritable folder, disk full, file size limit);
    filename is its path. Training stopped; the file there before, if any, is intact."""


def fit(model, x, epochs=None, batch_size=128, lr=1e-3, validation_data=None, beta=1.0,
        warmup_epochs=0.0, binarize=None, k=1, objective="elbo", seed=None,
        early_stopping_patience=None, checkpoint=None, progress=None, *, total_epochs=None,
        checkpoint_every=None):
    """Train ``model`` on rows of ``x`` (N, D) and return its history (one dict per epoch).

    epochs: how many more epochs to train (default 10), as in Keras: calling fit again continues.
      An epoch left unfinished by an interruption counts as the first of them, and is finished
      first. total_epochs: instead, train until the history holds this many epochs (nothing if
      it already does). Give at most one of the two; 0 trains nothing.
    beta: KL weight, reached linearly over ``warmup_epochs`` (KL warm-up; 0 = none). binarize:
      None, "dynamic" (fresh Bernoulli draws of [0, 1] data each epoch) or "fixed" (one draw
      before training); Bernoulli likelihood only. k samples per example with objective "elbo"
      or "iwae". early_stopping_patience: stop after this many epochs without a better
      validation ELBO and restore the best parameters; the count carries over to the next fit
      (and through checkpoints), except after it stopped training.
    checkpoint: path of a checkpoint written atomically before the first step (OSError, before
      any training, if its folder is unwritable or lacks room for two checkpoints), after every
      epoch, every ``checkpoint_every`` steps (if given), and when training stops on an error;
      CheckpointNotWritten (an OSError) if a write fails.

    SIGINT (Ctrl-C) and SIGTERM, while fit runs in the main thread, stop training at the next
    step boundary: the checkpoint records the position inside the epoch, then
    TrainingInterrupted is raised. Fitting again with the same data, batch_size and seed (this
    model, or ``VAE.load(checkpoint)``) continues exactly as if nothing had happened. A diverging
    step raises TrainingDiverged, leaving the last good step's state (also in the checkpoint).
    """
    opts = _check_options(model, locals())
    target = _target_epochs(model, epochs, total_epochs)
    check_data(x, model.likelihood, model.input_dim, name="x")
    val = None
    if validation_data is not None:
        check_data(validation_data, model.likelihood, model.input_dim, name="validation_data")
        val = np.asarray(validation_data, dtype=model.dtype)
        val = _binarized(val, opts, epoch=-1) if binarize else val
    if binarize == "fixed":
        x = _binarized(np.asarray(x, dtype=model.dtype), opts, epoch=-2)
    if model.optimizer_state is None:
        model.optimizer_state = Adam(model.params.flat, lr)
    model.optimizer_state.lr = check.real_scalar("lr", lr, low=0.0, low_inclusive=False)
    model.optimizer_state.params_changed()   # the caller may have set parameters since
    with _signals_stop_training() as received, cpu_work(model.device):
        loop = _Loop(model, x, val, opts, received)
        loop.checkpoint(first=True)
        try:
            loop.run(target)
        except CheckpointNotWritten:
            raise
        except BaseException:
            loop.checkpoint()   # the state after the last good step
            raise
    return model.history


def _check_options(model, args):
    seed = args["seed"]
    seed = model.seed if seed is None else check.integer("seed", seed, 0, 2 ** 63 - 1)
    if args["binarize"] not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {args['binarize']!r}")
    if args["binarize"] and model.likelihood != "bernoulli":
        raise ValueError("binarize only applies to likelihood='bernoulli'")
    objective = check.choice("objective", args["objective"], ("elbo", "iwae"))
    beta = check.real_scalar("beta", args["beta"], low=0.0)
    if objective == "iwae" and (beta != 1.0 or args["warmup_epochs"]):
        raise ValueError("beta and warmup_epochs apply to objective='elbo' only")
    patience = args["early_stopping_patience"]
    if patience is not None:
        patience = check.integer("early_stopping_patience", patience, 1)
        if args["validation_data"] is None:
            raise ValueError("early_stopping_patience needs validation_data")
    every = args["checkpoint_every"]
    if every is not None:
        every = check.integer("checkpoint_every", every, 1)
    return dict(seed=seed, batch_size=check.integer("batch_size", args["batch_size"], 1),
                k=check.integer("k", args["k"], 1), objective=objective, beta=beta,
                warmup_epochs=check.real_scalar("warmup_epochs", args["warmup_epochs"], low=0.0),
                binarize=args["binarize"], patience=patience, progress=args["progress"],
                checkpoint=args["checkpoint"], checkpoint_every=every)


def _target_epochs(model, epochs, total_epochs):
    """The number of epochs the history holds when fit is done."""
    if epochs is not None and total_epochs is not None:
        raise ValueError(f"give epochs (how many more) or total_epochs (how many in all), not "
                         f"both (got epochs={epochs!r}, total_epochs={total_epochs!r})")
    if total_epochs is not None:
        return check.integer("total_epochs", total_epochs, 0)
    more = check.integer("epochs", DEFAULT_EPOCHS if epochs is None else epochs, 0)
    return len(model.history) + more


def _binarized(x, opts, epoch):
    return bernoulli_draws(x, np.random.default_rng([opts["seed"], 7, epoch + 2]))


@contextlib.contextmanager
def _signals_stop_training():
    """While the body runs, SIGINT and SIGTERM only append their name to the list it gets (read
    at step boundaries); the previous handlers are restored afterwards. A signal ignored on entry
    stays ignored; outside the main thread, where Python cannot take signals, nothing changes."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def note(signum, frame):
        received.append(signal.Signals(signum).name)

    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, note)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


class _Loop:
    """One fit call: the position inside the epoch in progress (batches done, their loss sum and
    seconds) and the early-stopping state, both saved in checkpoints."""

    def __init__(self, model, x, val, opts, received_signals):
        self.model, self.x, self.val, self.opts = model, x, val, opts
        self.signals = received_signals
        self.grads = model.params.zeros_like()
        self.opt = model.optimizer_state
        self.n = x.shape[0]
        self.steps = math.ceil(self.n / opts["batch_size"])   # batches per epoch
        saved = getattr(model, "resume_state", None) or {}
        progress = saved.get("progress")
        self.done, self.loss_sum, self.seconds = self._resumed_position(progress)
        self.best = max((h["val_elbo"] for h in model.history if h.get("val_elbo") is not None),
                        default=-math.inf)
        self.bad_epochs = progress["bad_epochs"] if progress else 0
        patience = opts["patience"]
        if patience is not None and self.bad_epochs >= patience:
            self.bad_epochs = 0   # early stopping had ended training: a fresh count
        self.best_params = None   # tracked with early stopping only
        if patience is not None:
            best = saved.get("best_params")
            self.best_params = model.kernels.xp.array(model.params.flat if best is None else best,
                                                dtype=model.dtype)

    def _resumed_position(self, progress):
        """(batches done, their loss sum, seconds) of the epoch in progress, as saved."""
        if not progress:
            return 0, 0.0, 0.0
        missing = [key for key in PROGRESS_KEYS if key not in progress]
        if missing:
            raise ValueError(f"the model's saved progress lacks {', '.join(missing)}")
        if progress["step_in_epoch"] == 0:
            return 0, 0.0, 0.0
        saved = {key: progress[key] for key in ("rows", "batch_size", "seed")}
        now = dict(rows=self.n, batch_size=self.opts["batch_size"], seed=self.opts["seed"])
        if saved != now or progress["epoch"] != len(self.model.history) + 1:
            raise ValueError(
                f"training stopped at epoch {progress['epoch']}, step "
                f"{progress['step_in_epoch']} of {progress['steps_in_epoch']}, with "
                f"{', '.join(f'{key} {value}' for key, value in saved.items())}; finish that "
                f"epoch with the same (got {', '.join(f'{k} {v}' for k, v in now.items())})")
        return progress["step_in_epoch"], float(progress["loss_sum"]), float(progress["seconds"])

    def progress(self):
        """The position and early-stopping count as saved (the keys of PROGRESS_KEYS)."""
        return dict(epoch=len(self.model.history) + 1, step_in_epoch=self.done,
                    steps_in_epoch=self.steps, loss_sum=self.loss_sum, seconds=self.seconds,
                    rows=self.n, batch_size=self.opts["batch_size"], seed=self.opts["seed"],
                    bad_epochs=self.bad_epochs)

    def resume_state(self):
        """What a later fit needs to continue exactly; None at an epoch boundary without early
        stopping."""
        if self.done == 0 and self.best_params is None:
            return None
        return {"progress": self.progress(), "best_params": self.best_params}

    def checkpoint(self, first=False):
        """Record the state in model.resume_state and write the checkpoint, if fit has a path;
        first: also check that its folder has room for two (the probe before step 1)."""
        self.model.resume_state = self.resume_state()
        path = self.opts["checkpoint"]
        if path is None:
            return
        try:
            if first:
                check_room(self.model, path)
            save(self.model, path)
        except OSError as e:
            raise CheckpointNotWritten(e.errno, e.strerror or str(e), os.fspath(path)) from e

    def run(self, target):
        """Train until the history holds target epochs, early stopping ends it or a signal
        interrupts it; then, with early stopping, restore the best parameters."""
        history = self.model.history
        while len(history) < target:
            history.append(self.epoch(target))
            stop = self.should_stop(history[-1])
            self.checkpoint()
            if stop:
                break
        if self.best_params is not None and self.best > -math.inf:
            self.model.params.flat[...] = self.best_params
            self.checkpoint()
        self.stop_if_signalled()

    def should_stop(self, record):
        if self.val is None:
            return False
        if record["val_elbo"] > self.best:
            self.best, self.bad_epochs = record["val_elbo"], 0
            if self.best_params is not None:
                self.best_params[...] = self.model.params.flat
            return False
        self.bad_epochs += 1
        return self.opts["patience"] is not None and self.bad_epochs >= self.opts["patience"]

    def stop_if_signalled(self):
        if not self.signals:
            return
        name, epoch, path = self.signals[0], len(self.model.history) + 1, self.opts["checkpoint"]
        raise TrainingInterrupted(
            f"{name}: training stopped at epoch {epoch}, step {self.done} of {self.steps}" +
            (f"; checkpoint {os.fspath(path)}" if path is not None else ""),
            name, path, epoch, self.done)

    def epoch(self, target):
        """Run the epoch in progress from batch self.done on; -> its history record."""
        opts, n, e, size = self.opts, self.n, len(self.model.history), self.opts["batch_size"]
        order = np.random.default_rng([opts["seed"], 5, e]).permutation(n)
        start = time.perf_counter() - self.seconds
        with tqdm(total=self.steps, initial=self.done, desc=f"epoch {e + 1}/{target}",
                  unit="batch", leave=False,
                  disable=None if opts["progress"] is None else not opts["progress"]) as bar:
            for b in range(self.done, self.steps):
                self.stop_if_signalled()
                rows = order[b * size:(b + 1) * size]
                loss = self.step(self._batch(rows, e, b), e + b * size / n)
                self.done, self.loss_sum = b + 1, self.loss_sum + loss * len(rows)
                self.seconds = time.perf_counter() - start
                if opts["checkpoint_every"] and self.opt.step % opts["checkpoint_every"] == 0:
                    self.checkpoint()
                bar.update()
                if self.done % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.2f}",
                                    samples_s=f"{min(n, self.done * size) / self.seconds:.0f}")
        record = dict(epoch=e + 1, loss=self.loss_sum / n, seconds=self.seconds,
                      samples_per_s=n / self.seconds, beta=self.beta(e + 1), val_elbo=None)
        if self.val is not None:
            record["val_elbo"] = float(np.mean(self.model.elbo(self.val, seed=opts["seed"] + 3)))
        self.done, self.loss_sum, self.seconds = 0, 0.0, 0.0
        return record

    def _batch(self, rows, epoch, b):
        if isinstance(self.x, np.memmap):   # read rows in file order, then restore the order
            in_file_order = np.sort(rows)
            xb = np.asarray(self.x[in_file_order])[np.searchsorted(in_file_order, rows)]
        else:
            xb = self.x[rows]
        xb = np.ascontiguousarray(xb, dtype=self.model.dtype)
        if self.opts["binarize"] == "dynamic":
            xb = bernoulli_draws(xb, np.random.default_rng([self.opts["seed"], 6, epoch, b]))
        return self.model.kernels.xp.asarray(xb)   # the one host-to-device copy of a step (GPU)

    def beta(self, epoch_progress):
        warm = self.opts["warmup_epochs"]
        return self.opts["beta"] * (min(1.0, epoch_progress / warm) if warm else 1.0)

    def step(self, xb, epoch_progress):
        """One Adam step on the batch; raises TrainingDiverged, leaving the state as it was."""
        opts = self.opts
        return train_step(self.model, self.opt, xb, self.grads, seed=opts["seed"],
                          batch_size=opts["batch_size"], k=opts["k"], objective=opts["objective"],
                          beta=self.beta(epoch_progress), epoch=int(epoch_progress) + 1)


def train_step(model, opt, xb, grads, *, seed, batch_size, k=1, objective="elbo", beta=1.0,
               epoch=None):
    """One training step exactly as ``fit`` runs it (the benchmarks time this function);
    -> the loss (a float).

    On the CPU every part of the step runs on fastvae's pool (fastvae/_threads.py): each
    layer's GEMMs as fixed tiles with their fused epilogues, the fused ELBO by row blocks, the
    gradient guard and Adam by chunks. (Tried before and dropped: one shard of the batch per
    worker, gradients combined before Adam: batch 32 7.10k vs 5.16k samples/s whole vs sharded,
    benchmarks/dev/threading_ab.py at the parent of bfe28f4.)

    xb (B, D) on the model's device; grads a ParamStore like model.params (overwritten).
    The noise of step t is Philox(seed) at offset t * batch_size * k * L. Call it inside
    ``fastvae._threads.cpu_work(model.device)``. Raises TrainingDiverged if the loss or a
    gradient is NaN/Inf, or if the update would make a parameter NaN/Inf (``Adam.update``
    checks before it writes): params, m, v and step are then those of step t.
    """
    t = opt.step
    shape = (len(xb), k, model.latent_dim)
    offset = t * batch_size * k * model.latent_dim
    eps = model.kernels.random.normal(shape, seed, offset, model.dtype)
    loss = model.loss_and_grads_into(xb, eps, grads, objective, beta)
    where = f"step {t + 1}" + ("" if epoch is None else f" (epoch {epoch})")
    grad_abs_sum = model.kernels.adam.abs_sum(grads.flat)   # NaN/Inf if any gradient is
    if not (math.isfinite(loss) and math.isfinite(grad_abs_sum)):
        raise TrainingDiverged(
            f"training diverged at {where}: loss = {loss}, gradient sum = "
            f"{float(grads.flat.sum())}; the parameters of step {t} are kept. Try a smaller lr "
            f"or check the data.")
    if not opt.update(grads.flat, grad_abs_sum):
        raise TrainingDiverged(
            f"training diverged at {where}: the Adam update with lr = {opt.lr:g} would make "
            f"parameters NaN/Inf; it was not applied, the parameters of step {t} are kept. Try a "
            f"smaller lr.")
    return float(loss)
