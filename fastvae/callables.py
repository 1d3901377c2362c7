"""Any encoder and decoder, as a model fastvae's estimator streams (fastvae/eval.py).

``CallableVAE(encode, decode, ...)`` wraps the user's functions: ``encode(x) -> (mu, logvar)``
on a chunk of rows (n, D) and ``decode(z) -> out`` on a chunk of latent samples (m, L) (logits
for the Bernoulli likelihood, means for the Gaussian one), over NumPy arrays, torch tensors or JAX
arrays (``inputs=``). fastvae draws the noise, forms z = mu + exp(logvar / 2) eps with its
reparameterization kernel, and reduces the decoder output with its fused log-weight kernel and
streaming log-sum-exp, exactly as for a ``fastvae.VAE``; only the two networks are the user's.

    import torch, fastvae
    ll = fastvae.log_likelihood(lambda x: enc(x).chunk(2, dim=1), dec, x_test, K=5000,
                                inputs="torch")

The outputs come back through DLPack without copies where the dtype and layout allow
(fastvae/_interop.py); torch callables run under ``torch.no_grad()``. Outputs on a GPU are copied
to the host, where the estimator's kernels run.
"""
import functools

import numpy as np

from . import _device
from . import _validate as check
from . import eval as evaluation
from ._interop import foreign_kind, to_native
from ._reference import LIKELIHOODS
from .network import repeat_rows

INPUT_TYPES = ("numpy", "torch", "jax")


@functools.lru_cache(maxsize=None)
def _cpu_kernels():
    return _device.kernels("cpu")


class CallableVAE:
    """A VAE given by two functions; see the module docstring. ``dtype`` is the dtype the rows
    are converted to before ``encode`` and the estimator computes in (float32 or float64).
    dec_logvar (D,): the Gaussian decoder's per-dimension log-variance (any array type).
    The object pickles with cloudpickle when the functions do, so ``fastvae.distributed`` can
    ship it to Dask workers."""

    blocks_in_parallel = False   # the user's library has threads of its own (fastvae/eval.py)
    device = "cpu"
    seed = 0                     # the estimator's default noise seed is seed + 2, as for a VAE

    def __init__(self, encode, decode, input_dim=None, likelihood="bernoulli", dec_logvar=None,
                 inputs="numpy", dtype="float32"):
        for name, fn in (("encode", encode), ("decode", decode)):
            if not callable(fn):
                raise TypeError(f"{name} must be a function, got {type(fn).__name__}")
        self.encode_fn, self.decode_fn = encode, decode
        self.input_dim = None if input_dim is None else check.integer("input_dim", input_dim, 1)
        self.likelihood = check.choice("likelihood", likelihood, LIKELIHOODS)
        self.inputs = check.choice("inputs", inputs, INPUT_TYPES)
        self.dtype = np.dtype(check.choice("dtype", np.dtype(dtype).name, ("float32", "float64")))
        self.latent_dim = None    # learnt from the first encode
        self.decoder_logvar = self._dec_logvar(dec_logvar)

    @property
    def kernels(self):
        return _cpu_kernels()

    def _dec_logvar(self, dec_logvar):
        if self.likelihood == "bernoulli":
            if dec_logvar is not None:
                raise ValueError("dec_logvar is only used with likelihood='gaussian'; pass None")
            return None
        if dec_logvar is None:
            raise ValueError("likelihood='gaussian' needs dec_logvar, the decoder's "
                             "per-dimension log-variance of shape (D,)")
        a = self._host(dec_logvar, "dec_logvar")
        if a.ndim != 1 or (self.input_dim is not None and a.shape[0] != self.input_dim):
            raise ValueError(f"dec_logvar must have shape (D,) = ({self.input_dim},), got "
                             f"{a.shape}")
        return a

    # -- what the estimator calls ---------------------------------------------------------
    def encoder_forward(self, x):
        """x (n, D) host -> (mu, logvar) (n, L) host arrays of self.dtype."""
        result = self._call(self.encode_fn, x)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise TypeError(f"encode must return (mu, logvar), got {_describe(result)}")
        mu, logvar = (self._host(a, f"encode(x)[{i}]") for i, a in enumerate(result))
        self._check_latent(mu, logvar, len(x))
        return mu, logvar

    def samples_forward(self, mu, logvar, eps):
        """mu, logvar (B, L), eps (B, k, L) -> decode(z) (B*k, D); row n*k + j is sample j of
        example n (as fastvae/network.py::samples_forward)."""
        b, k, latent = eps.shape
        z, _ = self.kernels.reparam.reparam_forward(repeat_rows(mu, k), repeat_rows(logvar, k),
                                                    eps.reshape(b * k, latent))
        out = self._host(self._call(self.decode_fn, z), "decode(z)")
        if out.shape != (b * k, self.input_dim):
            raise ValueError(f"decode(z) must return shape ({b * k}, {self.input_dim}) for z of "
                             f"shape {z.shape}, got {out.shape}")
        return out

    # -- conversions ----------------------------------------------------------------------
    def _call(self, fn, a):
        """fn on the host array a, handed over as the user's array type (torch: no autograd)."""
        if self.inputs != "torch":
            return fn(self._to_user(a))
        import torch
        with torch.inference_mode():
            return fn(self._to_user(a))

    def _to_user(self, a):
        """A host array -> the type the user's functions take (no copy for torch)."""
        if self.inputs == "torch":
            import torch
            return torch.from_numpy(a)
        if self.inputs == "jax":
            import jax.numpy as jnp
            return jnp.asarray(a)
        return a

    def _host(self, a, name):
        """One of the user's outputs -> a C-contiguous host array of self.dtype (a view when
        it already is one)."""
        if foreign_kind(a) == "torch":
            a = a.detach()
        native = to_native(a, name)[0] if foreign_kind(a) else a
        if not hasattr(native, "dtype"):
            raise TypeError(f"{name} must be an array (NumPy, torch or JAX), got {_describe(a)}")
        native = _device.to_host(native)
        check.check_float_dtype(name, native)
        return np.ascontiguousarray(native, dtype=self.dtype)

    def _check_latent(self, mu, logvar, n):
        if self.latent_dim is None and mu.ndim == 2:
            self.latent_dim = mu.shape[1]
        for name, a in (("mu", mu), ("logvar", logvar)):
            if a.shape != (n, self.latent_dim):
                raise ValueError(f"encode(x) must return mu and logvar of shape (n, L) = ({n}, "
                                 f"{self.latent_dim}) for x of {n} rows, got {name} of shape "
                                 f"{a.shape}")


def _describe(value):
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" \
        else kind.__name__


def log_likelihood(encode, decode, x, K=5000, likelihood="bernoulli", dec_logvar=None, seed=None,
                   max_pairs=None, inputs="numpy", dtype="float32", **options):
    """The importance-weighted log p(x) (N,) float64 of any encoder and decoder, streamed as
    ``fastvae.VAE.log_likelihood`` (fastvae/eval.py::log_likelihood: the same noise for (seed,
    row, sample), bounded memory, ``out=``, ``stats=``, ``progress=``). ``encode``, ``decode``,
    ``inputs``, ``dtype`` and ``dec_logvar``: as ``CallableVAE``. seed: the noise seed; None
    gives 2, the default of a ``VAE`` of seed 0 (``VAE.from_torch``'s), so an imported model and
    its callables draw the same noise."""
    shape = getattr(x, "shape", None) or np.shape(x)
    model = CallableVAE(encode, decode, shape[1] if len(shape) == 2 else None, likelihood,
                        dec_logvar, inputs, dtype)
    if max_pairs is not None:
        options["max_pairs"] = max_pairs
    return evaluation.log_likelihood(model, x, K=K, seed=seed, **options)
