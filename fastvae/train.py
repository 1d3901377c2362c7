"""The training loop: minibatch Adam on the ELBO or IWAE bound, with explicit backward passes.

Determinism: for a given seed the epoch order, the binarization draws and the reparameterization
noise depend only on (seed, epoch, step), so a run resumed from a checkpoint continues exactly as
the uninterrupted run would have. Noise for step t is the Philox stream of ``seed`` at offset
``t * batch_size * k * L`` (what fastvae.random.normal gives on every backend).
"""
import math
import time

import numpy as np
from tqdm.auto import tqdm

from . import _validate as check
from ._backend import blas_owns_the_cores
from .data import binarize as bernoulli_draws
from .data import check_data
from .optim import Adam

BINARIZE = (None, "dynamic", "fixed")


class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN/Inf; the model keeps the parameters of the last good
    step (the failing update is never applied)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training at a step boundary, after the checkpoint (if any) was
    written. signal_name: "SIGINT" or "SIGTERM"; checkpoint: the path written, or None;
    epoch: the 1-based epoch in progress; step_in_epoch: batches of it already done."""

    def __init__(self, message, signal_name, checkpoint, epoch, step_in_epoch):
        super().__init__(message)
        self.signal_name, self.checkpoint = signal_name, checkpoint
        self.epoch, self.step_in_epoch = epoch, step_in_epoch


def fit(model, x, epochs=10, batch_size=128, lr=1e-3, validation_data=None, beta=1.0,
        warmup_epochs=0.0, binarize=None, k=1, objective="elbo", seed=None,
        early_stopping_patience=None, checkpoint=None, progress=None):
    """Train ``model`` on rows of ``x`` (N, D) and return its history (one dict per epoch).

    epochs: the total number of epochs; a model loaded from a checkpoint continues from the
      epochs it already has. beta: KL weight, reached linearly over ``warmup_epochs`` (KL
      warm-up; 0 = none). binarize: None, "dynamic" (fresh Bernoulli draws of [0, 1] data each
      epoch) or "fixed" (one draw before training); Bernoulli likelihood only. k samples per
      example with objective "elbo" or "iwae". early_stopping_patience: stop after this many
      epochs without a better validation ELBO and restore the best parameters. checkpoint: path
      written (atomically) after every epoch and when training stops on an error.
    """
    opts = _check_options(model, locals())
    check_data(x, model.likelihood, model.input_dim, name="x")
    val = None
    if validation_data is not None:
        check_data(validation_data, model.likelihood, model.input_dim, name="validation_data")
        val = np.asarray(validation_data, dtype=model.dtype)
        val = _binarized(val, opts, epoch=-1) if binarize else val
    if binarize == "fixed":
        x = _binarized(np.asarray(x, dtype=model.dtype), opts, epoch=-2)
    if model.optimizer_state is None:
        model.optimizer_state = Adam(model, lr)
    model.optimizer_state.lr = check.real_scalar("lr", lr, low=0.0, low_inclusive=False)
    loop = _Loop(model, x, val, opts)
    try:
        with blas_owns_the_cores(model.device):
            loop.run(epochs)
    finally:
        if checkpoint is not None:
            model.save(checkpoint)
    return model.history


def _check_options(model, o):
    seed = model.seed if o["seed"] is None else check.integer("seed", o["seed"], 0, 2 ** 63 - 1)
    if o["binarize"] not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {o['binarize']!r}")
    if o["binarize"] and model.likelihood != "bernoulli":
        raise ValueError("binarize only applies to likelihood='bernoulli'")
    objective = check.choice("objective", o["objective"], ("elbo", "iwae"))
    beta = check.real_scalar("beta", o["beta"], low=0.0)
    if objective == "iwae" and (beta != 1.0 or o["warmup_epochs"]):
        raise ValueError("beta and warmup_epochs apply to objective='elbo' only")
    patience = o["early_stopping_patience"]
    if patience is not None:
        patience = check.integer("early_stopping_patience", patience, 1)
        if o["validation_data"] is None:
            raise ValueError("early_stopping_patience needs validation_data")
    return dict(epochs=check.integer("epochs", o["epochs"], 0), seed=seed,
                batch_size=check.integer("batch_size", o["batch_size"], 1),
                k=check.integer("k", o["k"], 1), objective=objective, beta=beta,
                warmup_epochs=check.real_scalar("warmup_epochs", o["warmup_epochs"], low=0.0),
                binarize=o["binarize"], patience=patience, progress=o["progress"])


def _binarized(x, opts, epoch):
    return bernoulli_draws(x, np.random.default_rng([opts["seed"], 7, epoch + 2]))


class _Loop:
    def __init__(self, model, x, val, opts):
        self.model, self.x, self.val, self.o = model, x, val, opts
        self.grads = model.params.zeros_like()
        self.opt = model.optimizer_state
        self.best = max((h["val_elbo"] for h in model.history if h.get("val_elbo") is not None),
                        default=-math.inf)
        self.best_params = model.params.flat.copy()
        self.bad_epochs = 0

    def run(self, epochs):
        for epoch in range(len(self.model.history), epochs):
            record = self.epoch(epoch)
            self.model.history.append(record)
            if self.should_stop(record):
                break
        if self.o["patience"] is not None and self.best > -math.inf:
            self.model.params.flat[...] = self.best_params

    def should_stop(self, record):
        if self.val is None:
            return False
        if record["val_elbo"] > self.best:
            self.best, self.bad_epochs = record["val_elbo"], 0
            self.best_params[...] = self.model.params.flat
            return False
        self.bad_epochs += 1
        return self.o["patience"] is not None and self.bad_epochs >= self.o["patience"]

    def epoch(self, epoch):
        o, n = self.o, self.x.shape[0]
        order = np.random.default_rng([o["seed"], 5, epoch]).permutation(n)
        draws = np.random.default_rng([o["seed"], 6, epoch])
        batches = range(0, n, o["batch_size"])
        t0, losses = time.perf_counter(), []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{o['epochs']}", unit="batch",
                   disable=None if o["progress"] is None else not o["progress"], leave=False)
        for start in bar:
            xb = self._batch(order[start:start + o["batch_size"]], draws)
            losses.append(self.step(xb, epoch + start / n) * len(xb))
            if len(losses) % 20 == 0:
                rate = (start + len(xb)) / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{losses[-1] / len(xb):.2f}", samples_s=f"{rate:.0f}")
        seconds = time.perf_counter() - t0
        record = dict(epoch=epoch + 1, loss=float(np.sum(losses) / n), seconds=seconds,
                      samples_per_s=n / seconds, beta=self.beta(epoch + 1), val_elbo=None)
        if self.val is not None:
            record["val_elbo"] = float(np.mean(self.model.elbo(self.val, seed=o["seed"] + 3)))
        return record

    def _batch(self, rows, draws):
        if isinstance(self.x, np.memmap):   # read rows in file order, then restore the order
            in_file_order = np.sort(rows)
            xb = np.asarray(self.x[in_file_order])[np.searchsorted(in_file_order, rows)]
        else:
            xb = self.x[rows]
        xb = np.ascontiguousarray(xb, dtype=self.model.dtype)
        if self.o["binarize"] == "dynamic":
            xb = bernoulli_draws(xb, draws)
        return self.model.k.xp.asarray(xb)   # the one host-to-device copy of a step (GPU)

    def beta(self, epoch_progress):
        warm = self.o["warmup_epochs"]
        return self.o["beta"] * (min(1.0, epoch_progress / warm) if warm else 1.0)

    def step(self, xb, epoch_progress):
        """One Adam step on the batch; raises TrainingDiverged before a bad update lands."""
        o = self.o
        return train_step(self.model, self.opt, xb, self.grads, seed=o["seed"],
                          batch_size=o["batch_size"], k=o["k"], objective=o["objective"],
                          beta=self.beta(epoch_progress), epoch=int(epoch_progress) + 1)


def train_step(model, opt, xb, grads, *, seed, batch_size, k=1, objective="elbo", beta=1.0,
               epoch=None):
    """One training step exactly as ``fit`` runs it (the benchmarks time this function).

    The whole batch runs at once, with BLAS's threads. Tried and dropped: one shard of the batch
    per worker thread (fastvae/_threads.py), one-thread BLAS each, gradients combined before Adam.
    784-400-20 float32, 2 cores, same run interleaved (benchmarks/dev/threading_ab.py at the
    parent of bfe28f4), samples/s whole vs
    sharded: batch 32 7.10k vs 5.16k, 128 13.5k vs 11.8k, 512 17.7k vs 17.9k; with other jobs
    loading the machine, batch 128: 13.5k vs 10.6k. (The log-likelihood, whose row blocks need no
    combining, does run on worker threads: fastvae/eval.py.)

    xb (B, D) on the model's device; grads a ParamStore like model.params (overwritten).
    The noise of step t is Philox(seed) at offset t * batch_size * k * L. Call it inside
    ``blas_owns_the_cores(model.device)``. Raises TrainingDiverged before a bad update lands.
    """
    t = opt.step
    shape = (len(xb), k, model.latent_dim)
    eps = model.k.random.normal(shape, seed, t * batch_size * k * model.latent_dim, model.dtype)
    loss = model._loss_and_grads_into(xb, eps, grads, objective, beta)
    if not (math.isfinite(loss) and model.k.adam.all_finite(grads.flat)):
        where = f"step {t + 1}" + ("" if epoch is None else f" (epoch {epoch})")
        raise TrainingDiverged(
            f"training diverged at {where}: loss = {loss}, gradient sum = "
            f"{float(grads.flat.sum())}; the parameters of step {t} are kept. Try a smaller lr "
            f"or check the data.")
    opt.update(grads.flat)
    return loss
