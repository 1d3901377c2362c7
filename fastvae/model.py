"""``fastvae.VAE``: the network of fastvae/network.py with what a user does with it: training
(fastvae/train.py), evaluation (fastvae/eval.py), inference on any number of rows, and
checkpoints (fastvae/checkpoint.py). Those modules take a network; this one assembles them."""
import numpy as np

from . import _device
from . import _validate as check
from . import checkpoint
from . import eval as evaluation
from . import importers
from . import train
from ._reference import LIKELIHOODS   # noqa: F401 - the public name fastvae.model.LIKELIHOODS
from .data import raise_first_bad
from .network import VAENetwork, param_shapes   # noqa: F401 - param_shapes: public here too


class VAE(VAENetwork):
    """A variational autoencoder with a diagonal Gaussian encoder and a Bernoulli or Gaussian
    decoder.

    >>> model = VAE(input_dim=784, hidden_dims=(400,), latent_dim=20, seed=0)
    >>> history = model.fit(x_train, epochs=10, batch_size=128, lr=1e-3, validation_data=x_test)
    """

    def __init__(self, input_dim, hidden_dims=None, latent_dim=20, likelihood="bernoulli",
                 activation="relu", seed=0, dtype="float32", device="cpu", *, encoder_dims=None,
                 decoder_dims=None):
        super().__init__(input_dim, hidden_dims, latent_dim, likelihood, activation, seed, dtype,
                         device, encoder_dims=encoder_dims, decoder_dims=decoder_dims)
        self.optimizer_state = None   # an Adam over params.flat, set by fit; saved with checkpoints
        self.history = []
        self.resume_state = None      # where an interrupted fit stands (fastvae/train.py)

    def to(self, device):
        """Move the parameters and optimizer state to ``device`` ("cpu" or "cuda"); returns
        self. Training and evaluation then run entirely there."""
        super().to(device)
        if self.optimizer_state is not None:
            self.optimizer_state.move_to(self.params.flat)
        return self

    # -----------------------------------------------------------------------------------------
    # inference on any number of rows (host arrays in and out)
    # -----------------------------------------------------------------------------------------
    def encode(self, x):
        """x (N, D) -> (mu, logvar), each (N, L). x is checked chunk by chunk as it is read:
        NaN/Inf, and for a Bernoulli model values outside [0, 1], raise ValueError naming the
        row, column and value (``fastvae.eval.map_rows``)."""
        return evaluation.map_rows(self, x, self.encoder_forward)

    def decode(self, z):
        """z (N, L) -> (N, D): Bernoulli probabilities, or the Gaussian means.
        NaN/Inf in z raise ValueError naming the row and column (a sigmoid would hide them)."""
        (z,) = check.float_arrays({"z": (z, ("N", "L"))}, dtype=self.dtype)
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have latent_dim = {self.latent_dim} columns, got {z.shape}")
        if not np.isfinite(float(z.min())) or not np.isfinite(float(z.max())):   # NaN propagates
            raise_first_bad(_device.to_host(z), "gaussian", "z")
        out = self.decoder_forward(self.kernels.xp.asarray(z))
        out = _sigmoid(out) if self.likelihood == "bernoulli" else out
        return _device.to_host(out).astype(self.dtype, copy=False)

    def reconstruct(self, x):
        """x (N, D) -> decode(mu(x)) (N, D). x is checked as in ``encode``."""
        return self.decode(self.encode(x)[0])

    def sample(self, n, seed=None):
        """n samples from the model: decode(z) with z ~ N(0, I) from Philox (seed, offset 0).
        n: an integer >= 1; seed: an integer in [0, 2^64) (default: the model's seed + 1)."""
        n = check.integer("n", n, 1)
        seed = self.seed + 1 if seed is None else check.integer("seed", seed, 0, 2 ** 64 - 1)
        return self.decode(self.kernels.random.normal((n, self.latent_dim), seed, 0, self.dtype))

    # -----------------------------------------------------------------------------------------
    # training, evaluation, persistence
    # -----------------------------------------------------------------------------------------
    def fit(self, x, **options):
        """Train with Adam; see ``fastvae.train.fit`` for the options. Returns the history."""
        return train.fit(self, x, **options)

    def elbo(self, x, k=1, seed=None, batch_size=1024):
        """(N,) per-example ELBO in nats (k-sample Monte Carlo of the reconstruction term);
        x is checked as in ``encode``."""
        return evaluation.elbo(self, x, k=k, seed=seed, batch_size=batch_size)

    def log_likelihood(self, x, K=5000, seed=None, **options):
        """(N,) importance-weighted estimate of log p(x) in nats; see ``fastvae.eval``.
        x is checked as in ``encode``. ``out=path`` writes the values to a .npy file as they
        finish; ``stats=True`` returns a ``fastvae.eval.Estimate`` (standard error, effective
        sample size per example, active latent units)."""
        return evaluation.log_likelihood(self, x, K=K, seed=seed, **options)

    def save(self, path):
        """Write the checkpoint (parameters, optimizer state, history) to path atomically."""
        checkpoint.save(self, path)

    @classmethod
    def from_torch(cls, encoder, mu, logvar, decoder, likelihood="bernoulli", dec_logvar=None,
                   dtype="float32", seed=0):
        """A VAE with the weights of a PyTorch MLP VAE (``nn.Sequential``s of ``nn.Linear`` and
        activations, mu/logvar heads or a chunk(2) head); see ``fastvae.importers.from_torch``
        for what is accepted and what is refused."""
        return importers.from_torch(cls, encoder, mu, logvar, decoder, likelihood, dec_logvar,
                                    dtype, seed)

    @classmethod
    def from_arrays(cls, encoder, decoder, mu=None, logvar=None, activation="relu",
                    likelihood="bernoulli", dec_logvar=None, layout="in_out", dtype="float32",
                    seed=0):
        """A VAE from plain (W, b) arrays per layer (NumPy, JAX/Flax, torch), W (in, out) or
        (out, in) by ``layout``; see ``fastvae.importers.from_arrays``."""
        return importers.from_arrays(cls, encoder, decoder, mu, logvar, activation, likelihood,
                                     dec_logvar, layout, dtype, seed)

    @classmethod
    def load(cls, path, device="cpu"):
        """The model of checkpoint ``path``, with its optimizer state and history, on ``device``.
        A malformed or inconsistent file raises CheckpointError naming it, before anything is
        built (``fastvae.checkpoint.read``)."""
        saved = checkpoint.read(path)
        model = cls(**saved.config, device=device)
        checkpoint.restore(model, saved)
        return model


def _sigmoid(a):
    """Stable sigmoid on either device: e / (1 + e) with e = exp(-|a|) for a < 0."""
    e = abs(a)
    e *= -1
    xp = _device.array_module(a)
    xp.exp(e, out=e)
    return xp.where(a >= 0, 1, e) / (1 + e)
