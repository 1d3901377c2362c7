"""The VAE's network: its layers, their parameters on one device, and the explicit forward and
backward passes that training (fastvae/train.py), evaluation (fastvae/eval.py) and the ELBO all
run. It imports none of them; fastvae/model.py's ``VAE`` adds training, evaluation and
checkpoints on top.

Architecture (hidden_dims=(400,), latent_dim=20, input_dim=784 is the canonical 784-400-20-400-784):

    encoder   x (B, D) -> enc0 .. enc{n-1} (act) -> h (B, H) -> enc_mu, enc_logvar -> mu, logvar (B, L)
    sample    z = mu + exp(logvar / 2) * eps,   eps (B, k, L)  ->  z (B*k, L)
    decoder   z -> dec0 .. dec{m-1} (act) -> dec_out -> out (B*k, D)
              (logits for "bernoulli"; means for "gaussian", with a learned dec_out.logvar (D,))

The hidden widths are ``encoder_dims`` (enc0..) and ``decoder_dims`` (dec0.., from the latent side),
or ``hidden_dims`` for the mirrored pair (decoder_dims = hidden_dims reversed); one activation for
every hidden layer, or one per hidden layer (encoder first, in forward order).

Every W is (in, out) and a layer computes ``act(x @ W + b)``. No autograd: ``backward`` walks the
layers in reverse, calling each kernel's explicit backward on what ``forward`` kept in its tape.
"""
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _device
from . import _validate as check
from ._reference import ACTIVATIONS, LIKELIHOODS, activation_code
from ._threads import cpu_work
from .params import ParamStore

OBJECTIVES = ("elbo", "iwae")


class Layer(NamedTuple):
    """One dense layer ``y = act(x @ W + b)``: parameters ``<name>.W`` (n_in, n_out) and
    ``<name>.b`` (n_out,)."""
    name: str
    n_in: int
    n_out: int
    activation: str


@dataclass
class Tape:
    """What ``forward`` keeps for ``backward``: every layer's input by layer name (a reference,
    no copy), the sampling's cache, and the samples per example."""
    inputs: dict = field(default_factory=dict)
    reparam: Any = None
    samples: int = 1


@dataclass
class LossGrads:
    """A loss and its gradients with respect to the network's outputs: dout (B*k, D) the
    decoder output's, dmu and dlogvar (B, L) the encoder heads' direct terms (KL or log q),
    ddec_logvar (D,) the Gaussian decoder's log-variance's (None for Bernoulli)."""
    loss: float
    dout: Any
    dmu: Any
    dlogvar: Any
    ddec_logvar: Any = None


class VAENetwork:
    """A diagonal Gaussian encoder and a Bernoulli or Gaussian decoder on one device."""

    def __init__(self, input_dim, hidden_dims=None, latent_dim=20, likelihood="bernoulli",
                 activation="relu", seed=0, dtype="float32", device="cpu", *, encoder_dims=None,
                 decoder_dims=None):
        self.input_dim = check.integer("input_dim", input_dim, 1)
        self.encoder_dims, self.decoder_dims = hidden_widths(hidden_dims, encoder_dims,
                                                             decoder_dims)
        mirrored = self.decoder_dims == self.encoder_dims[::-1]
        self.hidden_dims = self.encoder_dims if mirrored else None   # the mirrored shorthand
        self.latent_dim = check.integer("latent_dim", latent_dim, 1)
        self.likelihood = check.choice("likelihood", likelihood, LIKELIHOODS)
        self.activations = hidden_activations(
            activation, len(self.encoder_dims) + len(self.decoder_dims))
        one = isinstance(activation, str) or len(set(self.activations)) == 1
        self.activation = (activation if isinstance(activation, str) else self.activations[0]) \
            if one else None   # the one activation of every hidden layer, if there is one
        self.seed = check.integer("seed", seed, 0, 2 ** 63 - 1)
        self.dtype = np.dtype(check.choice("dtype", np.dtype(dtype).name, ("float32", "float64")))
        self.device = device
        self.kernels = _device.kernels(device)
        self.encoder, self.heads, self.decoder = _architecture(
            self.input_dim, self.encoder_dims, self.decoder_dims, self.latent_dim, self.activations)
        self.params = ParamStore(self._param_shapes(), self.dtype, self.kernels.xp)
        self._init_params(np.random.default_rng(self.seed))

    # -----------------------------------------------------------------------------------------
    # architecture
    # -----------------------------------------------------------------------------------------
    def layers(self):
        """Every Layer in forward order: encoder, the mu and logvar heads, decoder."""
        return list(self.encoder) + list(self.heads) + list(self.decoder)

    def _param_shapes(self):
        return param_shapes(self.input_dim, None, self.latent_dim, self.likelihood,
                            encoder_dims=self.encoder_dims, decoder_dims=self.decoder_dims)

    def _init_params(self, rng):
        """Glorot-uniform W (He-uniform before relu), zero b, zero decoder log-variance."""
        for layer in self.layers():
            gain = np.sqrt(2.0) if layer.activation == "relu" else 1.0
            limit = gain * np.sqrt(6.0 / (layer.n_in + layer.n_out))
            self.params[f"{layer.name}.W"] = rng.uniform(-limit, limit, (layer.n_in, layer.n_out))
        # enc_logvar starts near log(1) = 0, but a small scale keeps early KL terms modest.
        self.params["enc_logvar.W"] = self.params["enc_logvar.W"] * 0.1

    @property
    def n_params(self):
        return int(self.params.flat.size)

    @property
    def decoder_logvar(self):
        """The Gaussian decoder's per-dimension log-variance (D,), None for Bernoulli."""
        return self.params["dec_out.logvar"] if self.likelihood == "gaussian" else None

    def __repr__(self):
        half = (self.input_dim,) + self.encoder_dims + (self.latent_dim,)
        dims = half if self.hidden_dims is not None else half + self.decoder_dims + \
            (self.input_dim,)
        act = self.activation if self.activation is not None else list(self.activations)
        return (f"{type(self).__name__}({'-'.join(map(str, dims))}, "
                f"likelihood={self.likelihood!r}, activation={act!r}, {self.n_params} params, "
                f"{self.dtype.name}, device={self.device!r})")

    def config(self):
        """The constructor's keyword arguments (JSON types), as checkpoints record them: the
        mirrored form (hidden_dims, one activation) where it applies, as before encoder_dims
        and decoder_dims existed, so that such checkpoints read the same everywhere."""
        config = dict(input_dim=self.input_dim, latent_dim=self.latent_dim,
                      likelihood=self.likelihood, seed=self.seed, dtype=self.dtype.name)
        if self.hidden_dims is not None and self.activation is not None:
            return dict(config, hidden_dims=list(self.hidden_dims), activation=self.activation)
        return dict(config, encoder_dims=list(self.encoder_dims),
                    decoder_dims=list(self.decoder_dims), activation=list(self.activations))

    def to(self, device):
        """Move the parameters to ``device`` ("cpu" or "cuda"); returns self."""
        kernels = _device.kernels(device)
        flat = kernels.xp.asarray(_device.to_host(self.params.flat))
        self.device, self.kernels = device, kernels
        self.params = ParamStore(self.params.shapes, self.dtype, kernels.xp)
        self.params.flat[...] = flat
        return self

    # -----------------------------------------------------------------------------------------
    # forward (device arrays in and out; a tape, if given, records what backward reads)
    # -----------------------------------------------------------------------------------------
    def _dense(self, layer, x, tape):
        if tape is not None:
            tape.inputs[layer.name] = x
        y, _ = self.kernels.dense.dense_forward(x, self.params[f"{layer.name}.W"],
                                                self.params[f"{layer.name}.b"], layer.activation)
        return y

    def encoder_forward(self, x, tape=None):
        """x (B, D) -> mu, logvar (B, L)."""
        h = x
        for layer in self.encoder:
            h = self._dense(layer, h, tape)
        mu_head, logvar_head = self.heads
        return self._dense(mu_head, h, tape), self._dense(logvar_head, h, tape)

    def decoder_forward(self, z, tape=None):
        """z (M, L) -> the decoder output (M, D): logits ("bernoulli") or means ("gaussian")."""
        h = z
        for layer in self.decoder:
            h = self._dense(layer, h, tape)
        return h

    def samples_forward(self, mu, logvar, eps, tape=None):
        """mu, logvar (B, L), eps (B, k, L) -> out (B*k, D): z = mu + exp(logvar / 2) * eps for
        every sample (row n*k + j is sample j of example n), then the decoder."""
        b, k, latent = eps.shape
        z, reparam_cache = self.kernels.reparam.reparam_forward(
            repeat_rows(mu, k), repeat_rows(logvar, k), eps.reshape(b * k, latent))
        if tape is not None:
            tape.reparam, tape.samples = reparam_cache, k
        return self.decoder_forward(z, tape)

    def forward(self, x, eps):
        """x (B, D), eps (B, k, L) -> (out (B*k, D), mu (B, L), logvar (B, L), tape)."""
        tape = Tape()
        mu, logvar = self.encoder_forward(x, tape)
        return self.samples_forward(mu, logvar, eps, tape), mu, logvar, tape

    # -----------------------------------------------------------------------------------------
    # backward: one flat reverse sequence over the tape
    # -----------------------------------------------------------------------------------------
    def backward(self, tape, head, grads):
        """Write every parameter's gradient into ``grads`` (a ParamStore like params) from the
        loss's gradients ``head`` (a LossGrads) and the tape of the forward that made them."""
        if head.ddec_logvar is not None:
            grads["dec_out.logvar"][...] = head.ddec_logvar
        # decoder, dec_out first (no activation: dout is its da); each layer's dx comes out as
        # the da of the layer before, already times that layer's activation derivative
        da = head.dout
        for i in range(len(self.decoder) - 1, -1, -1):
            dx = self.kernels.xp.empty_like(tape.inputs[self.decoder[i].name])
            before = self.decoder[i - 1].activation if i > 0 else "identity"
            self._layer_backward(self.decoder[i], da, tape, grads, dx, before)
            da = dx
        # sampling: z's gradient reaches mu and logvar, summed over each example's k samples
        dmu_z, dlogvar_z = self.kernels.reparam.reparam_backward(da, tape.reparam)
        b, k = head.dmu.shape[0], tape.samples
        dmu = head.dmu + sum_samples(dmu_z, b, k)
        dlogvar = head.dlogvar + sum_samples(dlogvar_z, b, k)
        # both heads read the last hidden layer: one backward over the two adds their dx terms
        mu_head, logvar_head = self.heads
        h = tape.inputs[mu_head.name]
        da = self.kernels.xp.empty_like(h) if self.encoder else None
        before = self.encoder[-1].activation if self.encoder else "identity"
        self._layer_backward(mu_head, dmu, tape, grads, da, before, second=(logvar_head, dlogvar))
        for i in range(len(self.encoder) - 1, -1, -1):
            dx = self.kernels.xp.empty_like(tape.inputs[self.encoder[i].name]) if i > 0 else None
            before = self.encoder[i - 1].activation if i > 0 else "identity"
            self._layer_backward(self.encoder[i], da, tape, grads, dx, before)
            da = dx

    def _layer_backward(self, layer, da, tape, grads, dx=None, x_act="identity", second=None):
        """Gradients of ``layer`` from da = dy * act'(a) (N, O), written into grads; and, if dx
        (N, I) is given, dx = (da @ W^T) * x_act'(x): the da of the layer before, whose
        activation x_act produced this layer's input x. second: (layer2, da2), a second layer
        reading the same input (the logvar head)."""
        extra = None
        if second is not None:
            layer2, da2 = second
            extra = (da2, self.params[f"{layer2.name}.W"], grads[f"{layer2.name}.W"],
                     grads[f"{layer2.name}.b"])
        self.kernels.dense.layer_backward(
            da, tape.inputs[layer.name], self.params[f"{layer.name}.W"],
            grads[f"{layer.name}.W"], grads[f"{layer.name}.b"], dx, activation_code(x_act), extra)

    # -----------------------------------------------------------------------------------------
    # one training step's loss and gradients
    # -----------------------------------------------------------------------------------------
    def loss_and_grads_into(self, x, eps, grads, objective="elbo", beta=1.0):
        """x (B, D), eps (B, k, L) on the device -> loss (float); gradients written into
        ``grads`` (a ParamStore like params).

        "elbo": loss = mean_{n,k} [-log p(x_n | z_nk)] + beta * mean_n KL_n (analytic KL).
        "iwae": loss = -mean_n [logsumexp_k log w_nk - log k] (Burda et al. 2015).
        """
        out, mu, logvar, tape = self.forward(x, eps)
        head = (self._elbo_head(x, out, mu, logvar, tape.samples, beta) if objective == "elbo"
                else self._iwae_head(x, out, mu, logvar, eps))
        self.backward(tape, head, grads)
        return head.loss

    def _elbo_head(self, x, out, mu, logvar, k, beta):
        """The fused ELBO kernel over the B*k (x, z) pairs; gradients of the mean loss."""
        b = x.shape[0]
        loss, grads = self.kernels.elbo.elbo_loss_and_grads(
            repeat_rows(x, k), out, repeat_rows(mu, k), repeat_rows(logvar, k), self.likelihood,
            self.decoder_logvar, beta)
        dout, dmu_rep, dlogvar_rep, *ddec_logvar = grads
        return LossGrads(loss, dout, sum_samples(dmu_rep, b, k), sum_samples(dlogvar_rep, b, k),
                         *ddec_logvar)

    def _iwae_head(self, x, out, mu, logvar, eps):
        """The importance-weighted bound: fused log weights, log-sum-exp and their backward."""
        b, k, _ = eps.shape
        iwae = self.kernels.iwae
        logw, lw_cache = iwae.log_weight_forward(x, out.reshape(b, k, -1), mu, logvar, eps,
                                                 self.likelihood, self.decoder_logvar)
        estimate, iw_cache = iwae.iwae_forward(logw)
        dlogw = iwae.iwae_backward(self.kernels.xp.full(b, -1.0 / b, dtype=self.dtype), iw_cache)
        dout, dmu, dlogvar, *ddec_logvar = iwae.log_weight_backward(dlogw, lw_cache)
        return LossGrads(-float(estimate.mean()), dout.reshape(b * k, -1), dmu, dlogvar,
                         *ddec_logvar)

    def loss_and_grads(self, x, eps, objective="elbo", beta=1.0):
        """One explicit forward and backward pass.

        x (B, D); eps (B, L) for one sample per example, or (B, k, L) for k samples.
        -> (loss, grads): loss the mean negative ELBO (objective="elbo") or negative IWAE bound
        (objective="iwae"); grads a dict with the keys of ``params`` (new host arrays).
        """
        x, eps = (self.kernels.xp.asarray(a) for a in self._batch_inputs(x, eps))
        check.choice("objective", objective, OBJECTIVES)
        beta = check.real_scalar("beta", beta, low=0.0)
        grads = self.params.zeros_like()
        with cpu_work(self.device):
            loss = self.loss_and_grads_into(x, eps, grads, objective, beta)
        return loss, {name: _device.to_host(grads[name]).copy() for name in grads}

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


def hidden_widths(hidden_dims=None, encoder_dims=None, decoder_dims=None):
    """-> (encoder_dims, decoder_dims), tuples of ints >= 1: hidden_dims mirrored (default
    (400,)), or encoder_dims and decoder_dims as given (both, and not with hidden_dims)."""
    if encoder_dims is None and decoder_dims is None:
        widths = tuple(check.integer("hidden_dims[i]", h, 1)
                       for h in ((400,) if hidden_dims is None else hidden_dims))
        return widths, widths[::-1]
    if hidden_dims is not None:
        raise ValueError("give hidden_dims (the mirrored shorthand) or encoder_dims and "
                         "decoder_dims, not both")
    if encoder_dims is None or decoder_dims is None:
        raise ValueError("encoder_dims and decoder_dims go together (give both; () for no "
                         "hidden layer)")
    return (tuple(check.integer("encoder_dims[i]", h, 1) for h in encoder_dims),
            tuple(check.integer("decoder_dims[i]", h, 1) for h in decoder_dims))


def hidden_activations(activation, n_hidden):
    """One activation name per hidden layer (encoder first, forward order) from one name or a
    sequence of n_hidden names."""
    names = (activation,) * n_hidden if isinstance(activation, str) else tuple(activation)
    if len(names) != n_hidden:
        raise ValueError(f"activation must be one name or {n_hidden} names (one per hidden "
                         f"layer: the encoder's, then the decoder's), got {len(names)}")
    return tuple(check.choice("activation", name, ACTIVATIONS) for name in names)


def _architecture(input_dim, encoder_dims, decoder_dims, latent_dim, activations):
    """(encoder layers, (mu head, logvar head), decoder layers ending in dec_out)."""
    enc = (input_dim,) + tuple(encoder_dims)
    dec = (latent_dim,) + tuple(decoder_dims)
    enc_act, dec_act = activations[:len(encoder_dims)], activations[len(encoder_dims):]
    encoder = tuple(Layer(f"enc{i}", enc[i], enc[i + 1], enc_act[i]) for i in range(len(enc) - 1))
    heads = (Layer("enc_mu", enc[-1], latent_dim, "identity"),
             Layer("enc_logvar", enc[-1], latent_dim, "identity"))
    decoder = tuple(Layer(f"dec{i}", dec[i], dec[i + 1], dec_act[i]) for i in range(len(dec) - 1))
    return encoder, heads, decoder + (Layer("dec_out", dec[-1], input_dim, "identity"),)


def param_shapes(input_dim, hidden_dims, latent_dim, likelihood, activation=None, *,
                 encoder_dims=None, decoder_dims=None):
    """{name: shape} of the parameters of an architecture, in buffer order, computed without
    allocating anything (the checkpoint loader checks a file against it before building).
    activation does not change the shapes (accepted for the constructor's argument order)."""
    shapes = {}
    encoder_dims, decoder_dims = hidden_widths(hidden_dims, encoder_dims, decoder_dims)
    identity = ("identity",) * (len(encoder_dims) + len(decoder_dims))
    for part in _architecture(input_dim, encoder_dims, decoder_dims, latent_dim, identity):
        for layer in part:
            shapes[f"{layer.name}.W"], shapes[f"{layer.name}.b"] = (layer.n_in, layer.n_out), \
                (layer.n_out,)
    if likelihood == "gaussian":
        shapes["dec_out.logvar"] = (input_dim,)
    return shapes


def repeat_rows(a, k):
    """(B, C) -> (B*k, C), each row k times in a row; no copy for k = 1."""
    return a if k == 1 else a.repeat(k, axis=0)


def sum_samples(a, b, k):
    """(B*k, C) -> (B, C), summing each example's k rows."""
    return a if k == 1 else a.reshape(b, k, -1).sum(axis=1)
