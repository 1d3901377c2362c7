"""Evaluation over datasets of any size: per-example ELBO and the importance-weighted
log-likelihood, streaming over rows and over the K samples with bounded memory.

Noise layout: sample k of example r uses the normals at Philox indices ``(r*K + k)*L .. + L`` of
``seed``, so the result depends on (seed, r, k) only, not on how the work is chunked (which is what
lets a cluster split the rows and still reproduce the single-machine numbers).
"""
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import _validate as check
from ._device import to_host
from ._threads import cpu_work, ordered_map
from .data import block_is_clean, raise_first_bad
from .network import repeat_rows

# Decoder work per chunk: 4096 (x, z) pairs. For 784-400-20-400-784 in float32 that is 12.8 MB of
# decoder output + 6.6 MB of hidden activations; the row state (m, s) is 16 bytes per example.
DEFAULT_MAX_PAIRS = 4096


def rows_of(model, x, name="x"):
    """Check an array-like of rows (ndarray, memmap, list) without loading it: (N, D) float."""
    a = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
    check.check_float_dtype(name, a)
    if a.ndim != 2 or a.shape[1] != (model.input_dim or a.shape[1]):
        raise ValueError(f"{name} must be (N, {model.input_dim}) (input_dim = {model.input_dim}), "
                         f"got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row")
    return a


def _chunk(model, x, start, stop, name="x", first_row=0):
    """Rows start:stop as a contiguous array of the model's dtype on the model's device, checked
    on the way: NaN/Inf, and for a Bernoulli model values outside [0, 1], raise ValueError naming
    ``name``, the row (first_row + start + i: global when x is a slice of a larger dataset), the
    column and the value. The check is fused into the conversion every chunk already takes, so
    the data is read from its source (a memmap larger than RAM, say) once.

    Its cost: one pass over the chunk (``data.block_is_clean``: one integer max for Bernoulli,
    one dot product for Gaussian; a min and max pass instead cost twice as much). Measured with
    benchmarks/dev/input_check_cost.py (VAE(784, (400,), 20) float32, 2 threads, uniform [0, 1]
    rows, 2-vCPU machine shared with other jobs, load 1.4-1.6, medians of 9-25 interleaved
    repeats; "alone" = the check on the same chunks / the whole call; "on - off" = the call minus
    the call with the check patched out, paired, noisy):
        elbo, 10000 rows (batch 1024)     call 151-160 ms, check alone 3.9-4.0 ms = 2.4-2.7%,
                                          on - off +6.0 ms (+3.7-3.9%; best - best +1.3..+4.8 ms)
        log_likelihood K=1000, 200 rows   call 1.2-2.1 s, check alone 0.26-0.38 ms = 0.02%
        log_likelihood K=100, 2000 rows   call 1.1-1.3 s, check alone 0.9-1.1 ms = 0.04-0.09%
    The check is memory-bound (~8-9 GB/s here); the ELBO at k=1 does the least work per row
    there is, so there it is above 2%. The same change dropped the chunk copy that
    ``x.repeat(1, axis=0)`` made in _elbo_chunk: the checked elbo above is ~20% faster than the
    unchecked one before (185.7 -> 147.3 ms median, paired, same run).
    """
    with np.errstate(over="ignore"):            # an overflowing cast is reported below
        host = np.ascontiguousarray(x[start:stop], dtype=model.dtype)
    if not block_is_clean(host, model.likelihood):
        _refuse(model, x, start, stop, host, name, first_row)
    return model.kernels.xp.asarray(host)


def _refuse(model, x, start, stop, converted, name, first_row):
    """Raise for the first bad value of rows start:stop, as the caller passed them (so a float64
    1e300 is reported as such, not as the inf it becomes in float32)."""
    raise_first_bad(np.asarray(x[start:stop]), model.likelihood, name, first_row + start)
    bad = ~np.isfinite(converted)                   # clean before, not after: the cast overflowed
    i, j = (int(v) for v in np.argwhere(bad)[0])
    raise ValueError(f"{name} has {x[start + i, j]} at row {first_row + start + i}, column {j}, "
                     f"which overflows the model's {model.dtype.name} (largest "
                     f"{np.finfo(model.dtype).max:g}); rescale the data")


def map_rows(model, x, fn, batch_size=4096, name="x"):
    """Apply fn to row chunks of x (converted to the model's dtype and checked as in _chunk);
    concatenate the outputs."""
    x = rows_of(model, x, name)
    parts = [fn(_chunk(model, x, i, i + batch_size, name))
             for i in range(0, x.shape[0], batch_size)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([to_host(a) for a in p]) for p in zip(*parts))
    return np.concatenate([to_host(a) for a in parts])


def _noise(model, seed, first_row, n_rows, K, first_k, n_k):
    """eps (n_rows, n_k, L) for samples first_k.. of rows first_row.. (see the module doc).
    Callers keep the block contiguous in Philox index space: n_rows == 1 or n_k == K."""
    assert n_rows == 1 or n_k == K
    L = model.latent_dim
    offset = (first_row * K + first_k) * L
    return model.kernels.random.normal((n_rows, n_k, L), seed, offset, model.dtype)


def _log_weights(model, x, mu, logvar, eps):
    """x (n, D), mu/logvar (n, L), eps (n, k, L) -> log w (n, k)."""
    n, k, _ = eps.shape
    out = model.samples_forward(mu, logvar, eps)
    logw, _ = model.kernels.iwae.log_weight_forward(x, out.reshape(n, k, -1), mu, logvar, eps,
                                                    model.likelihood, model.decoder_logvar)
    return logw


# Burda et al. (2016), "Importance Weighted Autoencoders", section 5.2: latent unit u is active
# when Cov_x(E_{z ~ q(z|x)}[z_u]) = Var_x(mu_u) exceeds 10^-2.
ACTIVE_UNIT_THRESHOLD = 1e-2


@dataclass(frozen=True)
class Estimate:
    """What ``log_likelihood(..., stats=True)`` measured over N examples with K samples each.

    log_likelihood (N,) float64: the per-example estimates in nats (the memmap of ``out=``
    when one was given). ess (N,) float64: the effective sample size of each example's K
    importance weights, ``(sum_k w_k)^2 / sum_k w_k^2`` in [1, K]; far below K says the encoder's
    q(z|x) is a poor proposal for that x and the estimate is less reliable there.
    latent_spread: the encoder means' spread over the examples (``latent_variance`` (L,)
    float64: Var over the examples of mu_u, per latent unit).
    """
    log_likelihood: np.ndarray
    ess: np.ndarray
    latent_spread: "LatentSpread"
    K: int
    seed: int

    @property
    def latent_variance(self):
        return self.latent_spread.variance()

    @property
    def mean(self):
        """The dataset's mean log p(x), nats."""
        return float(np.mean(self.log_likelihood))

    @property
    def sem(self):
        """Standard error of the mean over the examples (NaN for one example)."""
        n = len(self.log_likelihood)
        return float(np.std(self.log_likelihood, ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    @property
    def active_units(self):
        """Latent units with Var_x(mu_u) > ACTIVE_UNIT_THRESHOLD (Burda et al.)."""
        return int(np.count_nonzero(self.latent_variance > ACTIVE_UNIT_THRESHOLD))

    def summary(self):
        """The numbers a paper reports, as a dict of Python scalars."""
        ess = np.asarray(self.ess)
        return {"examples": len(self.log_likelihood), "K": self.K, "seed": self.seed,
                "log_likelihood": self.mean, "sem": self.sem,
                "ess_median": float(np.median(ess)), "ess_min": float(ess.min()),
                "ess_below_1_percent_of_K": int(np.count_nonzero(ess < 0.01 * self.K)),
                "active_units": self.active_units, "latent_dim": len(self.latent_variance)}


def log_likelihood(model, x, K=5000, seed=None, max_pairs=DEFAULT_MAX_PAIRS, progress=None,
                   first_row=0, name="x", out=None, stats=False):
    """Importance-weighted estimate ``log p(x_n) ~ logsumexp_k log w_nk - log K`` (nats), (N,).

    x: anything array-like of shape (N, D), a ``numpy.memmap`` larger than RAM included; it is
    read ``max_pairs // K`` rows at a time. The encoder runs once per example; the K samples go
    through the decoder in chunks of at most ``max_pairs`` (x, z) pairs and the log-sum-exp is
    merged chunk by chunk, so memory grows with neither N nor K. float64 result.
    progress: tqdm bar over the pairs (None: only on a terminal).
    first_row: global index of x's first row in a larger dataset: row r of x draws the noise of
    row first_row + r, so rows a:b of X with first_row=a give log_likelihood(model, X)[a:b],
    bit for bit when a is a multiple of max(1, max_pairs // K) (then the GEMM batches are the
    same), else within float rounding. ``fastvae.distributed`` splits the rows that way.
    Each chunk is checked as it is read: NaN/Inf (and values outside [0, 1] for a Bernoulli
    model) raise ValueError naming ``name``, the row (first_row + r), the column and the value.
    out: a path -> the (N,) float64 estimates are written into a ``.npy`` file there as the row
    blocks finish (rows not reached yet hold NaN, so an interrupted run keeps what it computed),
    and returned as a read-only memmap of it.
    stats: True -> an ``Estimate`` (the estimates with their standard error, the effective
    sample size per example and the active latent units) instead of the array.
    model: a ``fastvae.VAE``, or a ``fastvae.CallableVAE`` (any encoder and decoder).
    """
    x = rows_of(model, x, name)
    K = check.integer("K", K, 1)
    first_row = check.integer("first_row", first_row, 0)
    max_pairs = check.integer("max_pairs", max_pairs, 1)
    seed = model.seed + 2 if seed is None else check.integer("seed", seed, 0, 2 ** 64 - 1)
    n_rows, rows_per_chunk = x.shape[0], max(1, max_pairs // K)
    values = _output(out, n_rows)
    ess = np.empty(n_rows, dtype=np.float64)
    spread = LatentSpread()
    starts = range(0, n_rows, rows_per_chunk)
    with tqdm(total=n_rows * K, unit="pair", unit_scale=True, disable=_no_bar(progress),
              desc=f"log p(x), K={K}") as bar, cpu_work(model.device):
        def block(r0):
            rows = _log_likelihood_rows(model, x, r0, r0 + rows_per_chunk, K, seed, first_row,
                                        max_pairs, name)
            bar.update(len(rows[0]) * K)
            return r0, rows
        # Row blocks as tiles of the pool (fastvae/_threads.py), each computed on one thread
        # (its layers' tiles run inline), so the result does not depend on the thread count. A
        # single block (few rows, large K) runs here with its layers' tiles on the pool instead,
        # or one core would idle: 32 rows at K=100 (one block), 2 cores: 82.0k pairs/s with
        # the threads inside the block, 35.6k on one worker (benchmarks/dev/threading_ab.py,
        # K=100 BS=32, measured when BLAS still had its own threads). A CallableVAE's blocks
        # run here one after another: the user's library has threads of its own.
        parallel = len(starts) > 1 and getattr(model, "blocks_in_parallel", True)
        blocks = ordered_map(block, starts, model.device) if parallel else map(block, starts)
        try:
            for r0, (ll, block_ess, mu) in blocks:
                values[r0:r0 + len(ll)] = ll
                ess[r0:r0 + len(ll)] = block_ess
                spread = spread.merged(LatentSpread.of(mu))
        finally:
            if out is not None:
                values.flush()
    if out is not None:
        values = np.load(out, mmap_mode="r")
    if not stats:
        return values
    return Estimate(values, ess, spread, K, seed)


def _output(out, n_rows):
    """(N,) float64 array for the estimates: in memory, or a NaN-filled .npy file at ``out``."""
    if out is None:
        return np.empty(n_rows, dtype=np.float64)
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be None or a path for a .npy file, got {type(out).__name__}")
    values = np.lib.format.open_memmap(os.fspath(out), mode="w+", dtype=np.float64,
                                       shape=(n_rows,))
    values[...] = np.nan
    return values


@dataclass(frozen=True)
class LatentSpread:
    """Count, mean (L,) and sum of squared deviations m2 (L,) of encoder means over examples,
    merged block by block in order (Chan et al.'s pairwise update): memory (L,) whatever N."""
    count: int = 0
    mean: Any = 0.0
    m2: Any = 0.0

    @classmethod
    def of(cls, mu):
        mu = np.asarray(mu, dtype=np.float64)                       # (n, L)
        mean = mu.mean(axis=0)
        return cls(len(mu), mean, ((mu - mean) ** 2).sum(axis=0))

    def merged(self, other):
        total = self.count + other.count
        delta = other.mean - self.mean
        return LatentSpread(total, self.mean + delta * (other.count / total),
                            self.m2 + other.m2 + delta ** 2 * (self.count * other.count / total))

    def variance(self):
        """Var over the examples (ddof=0), (L,) float64."""
        return np.asarray(self.m2 / self.count, dtype=np.float64)


def _log_likelihood_rows(model, x, start, stop, K, seed, first_row, max_pairs, name="x"):
    """Rows start:stop of x -> (log p(x_r) (n,), ESS (n,), mu (n, L) on the host), float64 but
    mu. The K samples go through the decoder in chunks of at most max_pairs samples; the
    log-sum-exp states of log w and of 2 log w (for the ESS) are merged in chunk order."""
    xc = _chunk(model, x, start, stop, name, first_row)
    mu, logvar = model.encoder_forward(xc)
    lse = model.kernels.logsumexp
    m, s, m2, s2 = _empty_states(model, len(xc))
    k_per_chunk = min(K, max_pairs)
    for k0 in range(0, K, k_per_chunk):
        n_k = min(k_per_chunk, K - k0)
        eps = _noise(model, seed, first_row + start, len(xc), K, k0, n_k)
        logw = _log_weights(model, xc, mu, logvar, eps)          # (n, n_k)
        m, s = lse.logsumexp_merge(m, s, *lse.logsumexp_partial(logw))
        m2, s2 = lse.logsumexp_merge(m2, s2, *lse.logsumexp_partial(logw * 2))
    lse_w = to_host(lse.logsumexp_finalize(m, s)).astype(np.float64)
    lse_w2 = to_host(lse.logsumexp_finalize(m2, s2)).astype(np.float64)
    with np.errstate(invalid="ignore"):                         # -inf - -inf: NaN, as it should
        ess = np.exp(2 * lse_w - lse_w2)
    return lse_w - math.log(K), ess, to_host(mu)


def _empty_states(model, n):
    xp = model.kernels.xp
    return (xp.full(n, -np.inf, model.dtype), xp.zeros(n, model.dtype),
            xp.full(n, -np.inf, model.dtype), xp.zeros(n, model.dtype))


def elbo(model, x, k=1, seed=None, batch_size=1024):
    """Per-example ELBO (nats), (N,): ``mean_k log p(x | z_k) - KL(q(z | x) || N(0, I))`` with
    the analytic KL and k reparameterized samples (noise layout as log_likelihood). float64.
    Each chunk is checked as it is read, as in log_likelihood (ValueError naming row and column).
    """
    x = rows_of(model, x)
    k = check.integer("k", k, 1)
    seed = model.seed + 2 if seed is None else check.integer("seed", seed, 0, 2 ** 64 - 1)
    batch_size = max(1, check.integer("batch_size", batch_size, 1) // k)
    parts = []
    with cpu_work(model.device):
        for r0 in range(0, x.shape[0], batch_size):
            xc = _chunk(model, x, r0, r0 + batch_size)
            parts.append(_elbo_chunk(model, xc, _noise(model, seed, r0, len(xc), k, 0, k)))
    return np.concatenate(parts)


def _elbo_chunk(model, x, eps):
    n, k, _ = eps.shape
    mu, logvar = model.encoder_forward(x)
    out = model.samples_forward(mu, logvar, eps)
    # repeat_rows: no copy for k = 1 (x.repeat(1, axis=0) copied: ~40 ms of a 186 ms ELBO of
    # 10000 rows of 784, 10x the input check in _chunk; benchmarks/dev/input_check_cost.py)
    per_pair, _ = model.kernels.elbo.elbo_forward(
        repeat_rows(x, k), out, repeat_rows(mu, k), repeat_rows(logvar, k), model.likelihood,
        model.decoder_logvar, 1.0)
    return to_host(per_pair).reshape(n, k).astype(np.float64).mean(axis=1)


def _no_bar(progress):
    return None if progress is None else not progress
