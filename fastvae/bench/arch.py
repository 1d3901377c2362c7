"""The benchmarked architectures and their FLOP counts; NumPy only, so that the subprocess
scripts (startup, memory) and the peers can import it without loading fastvae's kernels."""
from dataclasses import dataclass

import numpy as np

LR = 1e-3
SEED = 0


@dataclass(frozen=True)
class Arch:
    """A Bernoulli VAE input_dim-hidden..-latent (decoder mirrored), relu, float32."""
    input_dim: int
    hidden: tuple
    latent: int

    @property
    def name(self):
        return "-".join(str(d) for d in (self.input_dim,) + self.hidden + (self.latent,))

    def layers(self):
        """[(name, n_in, n_out)] in forward order, as ``fastvae.VAE.layers`` lays them out."""
        enc = (self.input_dim,) + self.hidden
        dec = (self.latent,) + self.hidden[::-1]
        out = [(f"enc{i}", enc[i], enc[i + 1]) for i in range(len(enc) - 1)]
        out += [("enc_mu", enc[-1], self.latent), ("enc_logvar", enc[-1], self.latent)]
        out += [(f"dec{i}", dec[i], dec[i + 1]) for i in range(len(dec) - 1)]
        return out + [("dec_out", dec[-1], self.input_dim)]

    @property
    def n_params(self):
        return sum(i * o + o for _, i, o in self.layers())

    def step_flops(self, batch):
        """Matrix-product FLOPs of one training step (elementwise work left out):
        forward F = 2 B sum(in * out) over every layer; backward dW = x.T @ dy and dx = dy @ W.T
        per layer (2F) minus the first layer's dx, which nothing needs: F + 2F - 2 B D H1."""
        fwd = 2 * batch * sum(i * o for _, i, o in self.layers())
        first = self.layers()[0]
        return fwd + 2 * fwd - 2 * batch * first[1] * first[2]

    def decoder_flops_per_pair(self):
        """Decoder FLOPs of one (x, z) pair in the log-likelihood: 2 sum(in * out) over the
        decoder layers (the encoder runs once per row and is left out: < 1/K of the work)."""
        return 2 * sum(i * o for name, i, o in self.layers() if name.startswith("dec"))


CANONICAL = Arch(784, (400,), 20)
DEEP = Arch(784, (512, 256), 32)
MODELS = {"canonical": CANONICAL, "deep": DEEP}


def binary_data(n, d, seed=0, density=0.3):
    """(n, d) float32 0/1 rows: the synthetic binary dataset every contender trains on."""
    return (np.random.default_rng(seed).random((n, d)) < density).astype(np.float32)
