"""The VAE: parameters, a forward pass that keeps its caches, and the backward in reverse order.

Architecture (hidden_dims=(400,), latent_dim=20, input_dim=784 is the canonical 784-400-20-400-784):

    encoder   x (B, D) -> enc0 .. enc{n-1} (act) -> h (B, H) -> enc_mu, enc_logvar -> mu, logvar (B, L)
    sample    z = mu + exp(logvar / 2) * eps,   eps (B, k, L)  ->  z (B*k, L)
    decoder   z -> dec0 .. dec{n-1} (act, hidden_dims reversed) -> dec_out -> out (B*k, D)
              (logits for "bernoulli"; means for "gaussian", with a learned dec_out.logvar (D,))

Every W is (in, out) and a layer computes ``act(x @ W + b)``. No autograd: ``_backward`` walks the
layers in reverse, calling each kernel's explicit backward.
"""
import numpy as np

from . import _backend
from . import _validate as check
from ._reference import ACTIVATIONS, activation_code
from ._threads import cpu_work
from .params import ParamStore

LIKELIHOODS = ("bernoulli", "gaussian")
OBJECTIVES = ("elbo", "iwae")


class VAE:
    """A variational autoencoder with a diagonal Gaussian encoder and a Bernoulli or Gaussian decoder.

    >>> model = VAE(input_dim=784, hidden_dims=(400,), latent_dim=20, seed=0)
    >>> history = model.fit(x_train, epochs=10, batch_size=128, lr=1e-3, validation_data=x_test)
    """

    def __init__(self, input_dim, hidden_dims=(400,), latent_dim=20, likelihood="bernoulli",
                 activation="relu", seed=0, dtype="float32", device="cpu"):
        self.input_dim = check.integer("input_dim", input_dim, 1)
        self.hidden_dims = tuple(check.integer("hidden_dims[i]", h, 1) for h in hidden_dims)
        self.latent_dim = check.integer("latent_dim", latent_dim, 1)
        self.likelihood = check.choice("likelihood", likelihood, LIKELIHOODS)
        self.activation = check.choice("activation", activation, ACTIVATIONS)
        self.seed = check.integer("seed", seed, 0, 2 ** 63 - 1)
        self.dtype = np.dtype(check.choice("dtype", np.dtype(dtype).name, ("float32", "float64")))
        self.device = device
        self.k = _backend.kernels(device)
        self.params = ParamStore(self._param_shapes(), self.dtype, self.k.xp)
        self._init_params(np.random.default_rng(self.seed))
        self.optimizer_state = None   # set by fit(); saved with checkpoints
        self.history = []
        self.resume_state = None      # where an interrupted fit stands (fastvae/train.py)

    # -----------------------------------------------------------------------------------------
    # architecture
    # -----------------------------------------------------------------------------------------
    def layers(self):
        """[(name, in_dim, out_dim, activation)] in forward order; the mu/logvar heads both read
        the last encoder layer."""
        return _layers(self.input_dim, self.hidden_dims, self.latent_dim, self.activation)

    def _param_shapes(self):
        return param_shapes(self.input_dim, self.hidden_dims, self.latent_dim, self.likelihood,
                            self.activation)

    def _init_params(self, rng):
        """Glorot-uniform W (He-uniform before relu), zero b, zero decoder log-variance."""
        for name, n_in, n_out, act in self.layers():
            gain = np.sqrt(2.0) if act == "relu" else 1.0
            limit = gain * np.sqrt(6.0 / (n_in + n_out))
            self.params[f"{name}.W"] = rng.uniform(-limit, limit, (n_in, n_out))
        # enc_logvar starts near log(1) = 0, but a small scale keeps early KL terms modest.
        self.params["enc_logvar.W"] = self.params["enc_logvar.W"] * 0.1

    @property
    def n_params(self):
        return int(self.params.flat.size)

    def __repr__(self):
        dims = "-".join(str(d) for d in (self.input_dim,) + self.hidden_dims + (self.latent_dim,))
        return (f"VAE({dims}, likelihood={self.likelihood!r}, activation={self.activation!r}, "
                f"{self.n_params} params, {self.dtype.name}, device={self.device!r})")

    # -----------------------------------------------------------------------------------------
    # forward pieces (caches kept for the backward)
    # -----------------------------------------------------------------------------------------
    def _dense(self, name, h, act):
        return self.k.dense.dense_forward(h, self.params[f"{name}.W"], self.params[f"{name}.b"],
                                          act)

    def _encode(self, x):
        """x (B, D) -> mu, logvar (B, L) and the caches [enc0.., enc_mu, enc_logvar]."""
        h, caches = x, []
        for name, _, _, act in self.layers():
            if name.startswith("enc") and name not in ("enc_mu", "enc_logvar"):
                h, cache = self._dense(name, h, act)
                caches.append((name, cache))
        mu, mu_cache = self._dense("enc_mu", h, "identity")
        logvar, logvar_cache = self._dense("enc_logvar", h, "identity")
        return mu, logvar, caches + [("enc_mu", mu_cache), ("enc_logvar", logvar_cache)]

    def _decode(self, z):
        """z (M, L) -> decoder output (M, D) (logits or means) and the caches [dec0.., dec_out]."""
        h, caches = z, []
        for name, _, _, act in self.layers():
            if name.startswith("dec"):
                h, cache = self._dense(name, h, act)
                caches.append((name, cache))
        return h, caches

    def _decoder_logvar(self):
        return self.params["dec_out.logvar"] if self.likelihood == "gaussian" else None

    # -----------------------------------------------------------------------------------------
    # backward pieces (reverse order)
    # -----------------------------------------------------------------------------------------
    def _layer_backward(self, da, name, cache, grads, dx=None, x_act="identity", second=None):
        """Gradients of layer ``name`` from da = dy * act'(a) (N, O), written into grads; and,
        if dx (N, I) is given, dx = (da @ W^T) * x_act'(x): the da of the layer before, whose
        activation x_act produced this layer's input x. second: the logvar head's (da, cache)."""
        x_in, W = cache[0], cache[1]
        extra = None
        if second is not None:
            (da2, (_, W2, _, _)), head = second, "enc_logvar"
            extra = (da2, W2, grads[f"{head}.W"], grads[f"{head}.b"])
        self.k.dense.layer_backward(da, x_in, W, grads[f"{name}.W"], grads[f"{name}.b"], dx,
                                    activation_code(x_act), extra)

    def _decode_backward(self, dout, caches, grads):
        """dout (M, D) -> dz (M, L); writes the decoder's gradients into grads. dec_out has no
        activation, so dout is its da; each layer's dx comes out as the da of the one before."""
        da = dout
        for i in range(len(caches) - 1, -1, -1):
            name, cache = caches[i]
            dx = self.k.xp.empty_like(cache[0])
            self._layer_backward(da, name, cache, grads, dx,
                                 caches[i - 1][1][3] if i > 0 else "identity")
            da = dx
        return da

    def _encode_backward(self, dmu, dlogvar, caches, grads):
        """dmu, dlogvar (B, L) -> writes the encoder's gradients into grads. Both heads read the
        last hidden layer: one backward over them adds their dx terms."""
        hidden = caches[:-2]
        h = caches[-2][1][0]
        da = self.k.xp.empty_like(h) if hidden else None
        self._layer_backward(dmu, "enc_mu", caches[-2][1], grads, da,
                             hidden[-1][1][3] if hidden else "identity",
                             second=(dlogvar, caches[-1][1]))
        for i in range(len(hidden) - 1, -1, -1):
            name, cache = hidden[i]
            dx = self.k.xp.empty_like(cache[0]) if i > 0 else None
            self._layer_backward(da, name, cache, grads, dx,
                                 hidden[i - 1][1][3] if i > 0 else "identity")
            da = dx

    # -----------------------------------------------------------------------------------------
    # one training step's loss and gradients
    # -----------------------------------------------------------------------------------------
    def _loss_and_grads_into(self, x, eps, grads, objective="elbo", beta=1.0):
        """x (B, D), eps (B, k, L) -> loss (float); gradients written into ``grads`` (ParamStore).

        "elbo": loss = mean_{n,k} [-log p(x_n | z_nk)] + beta * mean_n KL_n (analytic KL).
        "iwae": loss = -mean_n [logsumexp_k log w_nk - log k] (Burda et al. 2015).
        """
        b, k_samples, latent = eps.shape
        mu, logvar, enc_caches = self._encode(x)
        mu_rep, logvar_rep = _repeat_rows(mu, k_samples), _repeat_rows(logvar, k_samples)
        z, reparam_cache = self.k.reparam.reparam_forward(mu_rep, logvar_rep,
                                                          eps.reshape(b * k_samples, latent))
        out, dec_caches = self._decode(z)
        if objective == "elbo":
            loss, dout, dmu, dlogvar, ddec_logvar = self._elbo_head(
                x, out, mu_rep, logvar_rep, k_samples, beta)
        else:
            loss, dout, dmu, dlogvar, ddec_logvar = self._iwae_head(x, out, mu, logvar, eps)
        if ddec_logvar is not None:
            grads["dec_out.logvar"][...] = ddec_logvar
        dz = self._decode_backward(dout, dec_caches, grads)
        dmu_z, dlogvar_z = self.k.reparam.reparam_backward(dz, reparam_cache)
        dmu = dmu + _sum_samples(dmu_z, b, k_samples)
        dlogvar = dlogvar + _sum_samples(dlogvar_z, b, k_samples)
        self._encode_backward(dmu, dlogvar, enc_caches, grads)
        return loss

    def _elbo_head(self, x, out, mu_rep, logvar_rep, k_samples, beta):
        """The fused ELBO kernel over the B*k (x, z) pairs; gradients of the mean loss."""
        loss, grads = self.k.elbo.elbo_loss_and_grads(
            _repeat_rows(x, k_samples), out, mu_rep, logvar_rep, self.likelihood,
            self._decoder_logvar(), beta)
        dout, dmu_rep, dlogvar_rep = grads[:3]
        b = x.shape[0]
        return (loss, dout, _sum_samples(dmu_rep, b, k_samples),
                _sum_samples(dlogvar_rep, b, k_samples), grads[3] if len(grads) > 3 else None)

    def _iwae_head(self, x, out, mu, logvar, eps):
        b, k_samples, _ = eps.shape
        logw, lw_cache = self.k.iwae.log_weight_forward(
            x, out.reshape(b, k_samples, -1), mu, logvar, eps, self.likelihood,
            self._decoder_logvar())
        estimate, iw_cache = self.k.iwae.iwae_forward(logw)
        dlogw = self.k.iwae.iwae_backward(self.k.xp.full(b, -1.0 / b, dtype=self.dtype),
                                          iw_cache)
        grads = self.k.iwae.log_weight_backward(dlogw, lw_cache)
        dout = grads[0].reshape(b * k_samples, -1)
        return (-float(estimate.mean()), dout, grads[1], grads[2],
                grads[3] if len(grads) > 3 else None)

    def loss_and_grads(self, x, eps, objective="elbo", beta=1.0):
        """One explicit forward and backward pass.

        x (B, D); eps (B, L) for one sample per example, or (B, k, L) for k samples.
        -> (loss, grads): loss the mean negative ELBO (objective="elbo") or negative IWAE bound
        (objective="iwae"); grads a dict with the keys of ``params`` (new arrays).
        """
        x, eps = (self.k.xp.asarray(a) for a in self._batch_inputs(x, eps))
        check.choice("objective", objective, OBJECTIVES)
        beta = check.real_scalar("beta", beta, low=0.0)
        grads = self.params.zeros_like()
        with cpu_work(self.device):
            loss = self._loss_and_grads_into(x, eps, grads, objective, beta)
        return loss, {name: _backend.to_host(grads[name]).copy() for name in grads}

    def _batch_inputs(self, x, eps):
        (x,) = check.float_arrays({"x": (x, ("B", "D"))}, dtype=self.dtype)
        eps = check.float_arrays({"eps": (eps, ("B", "L") if np.ndim(eps) == 2 else
                                          ("B", "k", "L"))}, dtype=self.dtype)[0]
        eps = eps.reshape(eps.shape[0], -1, eps.shape[-1])
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x must have {self.input_dim} columns (input_dim), got {x.shape[1]}")
        if eps.shape[0] != x.shape[0] or eps.shape[2] != self.latent_dim:
            raise ValueError(f"eps must be (B, L) or (B, k, L) with B = {x.shape[0]} rows of x and "
                             f"L = latent_dim = {self.latent_dim}, got {eps.shape}")
        return x, eps

    # -----------------------------------------------------------------------------------------
    # inference
    # -----------------------------------------------------------------------------------------
    def encode(self, x):
        """x (N, D) -> (mu, logvar), each (N, L). x is checked chunk by chunk as it is read:
        NaN/Inf, and for a Bernoulli model values outside [0, 1], raise ValueError naming the
        row, column and value (``fastvae.eval.map_rows``)."""
        from .eval import map_rows
        return map_rows(self, x, lambda chunk: self._encode(chunk)[:2])

    def decode(self, z):
        """z (N, L) -> (N, D): Bernoulli probabilities, or the Gaussian means.
        NaN/Inf in z raise ValueError naming the row and column (a sigmoid would hide them)."""
        (z,) = check.float_arrays({"z": (z, ("N", "L"))}, dtype=self.dtype)
        if z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have latent_dim = {self.latent_dim} columns, got {z.shape}")
        if not np.isfinite(float(z.min())) or not np.isfinite(float(z.max())):   # NaN propagates
            from .data import raise_first_bad
            raise_first_bad(_backend.to_host(z), "gaussian", "z")
        z = self.k.xp.asarray(z)
        out, _ = self._decode(z)
        out = _sigmoid(out) if self.likelihood == "bernoulli" else out
        return _backend.to_host(out).astype(self.dtype, copy=False)

    def reconstruct(self, x):
        """x (N, D) -> decode(mu(x)) (N, D). x is checked as in ``encode``."""
        return self.decode(self.encode(x)[0])

    def sample(self, n, seed=None):
        """n samples from the model: decode(z) with z ~ N(0, I) from Philox (seed, offset 0).
        n: an integer >= 1; seed: an integer in [0, 2^64) (default: the model's seed + 1)."""
        n = check.integer("n", n, 1)
        seed = self.seed + 1 if seed is None else check.integer("seed", seed, 0, 2 ** 64 - 1)
        return self.decode(self.k.random.normal((n, self.latent_dim), seed, 0, self.dtype))

    def to(self, device):
        """Move the parameters (and optimizer state) to ``device`` ("cpu" or "cuda"); returns self.
        Training and evaluation then run entirely there."""
        kernels = _backend.kernels(device)
        flat = kernels.xp.asarray(_backend.to_host(self.params.flat))
        self.device, self.k = device, kernels
        self.params = ParamStore(self.params.shapes, self.dtype, kernels.xp)
        self.params.flat[...] = flat
        if self.optimizer_state is not None:
            self.optimizer_state.move_to(self)
        return self

    # -----------------------------------------------------------------------------------------
    # training, evaluation, persistence (in their own modules)
    # -----------------------------------------------------------------------------------------
    def fit(self, x, **options):
        """Train with Adam; see ``fastvae.train.fit`` for the options. Returns the history."""
        from .train import fit
        return fit(self, x, **options)

    def elbo(self, x, k=1, seed=None, batch_size=1024):
        """(N,) per-example ELBO in nats (k-sample Monte Carlo of the reconstruction term);
        x is checked as in ``encode``."""
        from .eval import elbo
        return elbo(self, x, k=k, seed=seed, batch_size=batch_size)

    def log_likelihood(self, x, K=5000, seed=None, **options):
        """(N,) importance-weighted estimate of log p(x) in nats; see ``fastvae.eval``.
        x is checked as in ``encode``."""
        from .eval import log_likelihood
        return log_likelihood(self, x, K=K, seed=seed, **options)

    def save(self, path):
        from .checkpoint import save
        save(self, path)

    @classmethod
    def load(cls, path, device="cpu"):
        """The model of checkpoint ``path``, with its optimizer state, on ``device``."""
        from .checkpoint import load
        return load(path, device=device)

    def config(self):
        return dict(input_dim=self.input_dim, hidden_dims=list(self.hidden_dims),
                    latent_dim=self.latent_dim, likelihood=self.likelihood,
                    activation=self.activation, seed=self.seed, dtype=self.dtype.name)


def _layers(input_dim, hidden_dims, latent_dim, activation):
    """``VAE.layers`` of an architecture, without building a model."""
    enc = (input_dim,) + tuple(hidden_dims)
    dec = (latent_dim,) + tuple(hidden_dims)[::-1]
    out = [(f"enc{i}", enc[i], enc[i + 1], activation) for i in range(len(enc) - 1)]
    out += [("enc_mu", enc[-1], latent_dim, "identity"),
            ("enc_logvar", enc[-1], latent_dim, "identity")]
    out += [(f"dec{i}", dec[i], dec[i + 1], activation) for i in range(len(dec) - 1)]
    return out + [("dec_out", dec[-1], input_dim, "identity")]


def param_shapes(input_dim, hidden_dims, latent_dim, likelihood, activation="relu"):
    """{name: shape} of the parameters of an architecture, in buffer order, computed without
    allocating anything (the checkpoint loader checks a file against it before building)."""
    shapes = {}
    for name, n_in, n_out, _ in _layers(input_dim, hidden_dims, latent_dim, activation):
        shapes[f"{name}.W"], shapes[f"{name}.b"] = (n_in, n_out), (n_out,)
    if likelihood == "gaussian":
        shapes["dec_out.logvar"] = (input_dim,)
    return shapes


def _repeat_rows(a, k):
    """(B, C) -> (B*k, C), each row k times in a row; no copy for k = 1."""
    return a if k == 1 else a.repeat(k, axis=0)


def _sum_samples(a, b, k):
    """(B*k, C) -> (B, C), summing each example's k rows."""
    return a if k == 1 else a.reshape(b, k, -1).sum(axis=1)


def _sigmoid(a):
    """Stable sigmoid on either device: e / (1 + e) with e = exp(-|a|) for a < 0."""
    e = abs(a)
    e *= -1
    xp = np if isinstance(a, np.ndarray) else __import__("cupy")
    xp.exp(e, out=e)
    return xp.where(a >= 0, 1, e) / (1 + e)
