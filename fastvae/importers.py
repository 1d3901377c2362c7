"""Import MLP VAEs trained elsewhere (PyTorch modules, or the weight arrays of JAX/Flax, NumPy or
any other framework) into a fastvae model, so that fastvae can compute their ELBO and
importance-weighted log-likelihood.

``fastvae.VAE.from_torch`` and ``fastvae.VAE.from_arrays`` call ``from_torch(cls, ...)`` and
``from_arrays(cls, ...)`` here with the class to build; this module imports neither
fastvae.model nor torch at its top (torch is imported by ``from_torch`` when it runs).

What can be imported is exactly what fastvae computes (fastvae/network.py):

    encoder   x (B, D) -> act(x @ W + b) per hidden layer -> h -> mu = h @ W_mu + b_mu,
              logvar = h @ W_lv + b_lv, each (B, L); or one head h @ W + b (B, 2L) split in
              halves (torch's ``chunk(2, dim=1)``: mu first, then logvar)
    decoder   z (B, L) -> act(. @ W + b) per hidden layer -> . @ W_out + b_out (B, D): Bernoulli
              logits, or Gaussian means with a per-dimension log-variance dec_logvar (D,)

Every hidden layer has one of the activations identity, relu, tanh, softplus, sigmoid; the
heads and the output layer have none. Anything else is refused with a ValueError that names the
module or argument, rather than imported as a model that computes something else.
"""
from collections.abc import Mapping

import numpy as np

from ._reference import LIKELIHOODS

LAYOUTS = ("in_out", "out_in")
LAYOUT_SHAPES = {"in_out": "(in, out)", "out_in": "(out, in)"}
# torch.nn activation class name -> fastvae activation name (nn.Identity is a no-op: skipped)
_TORCH_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Softplus": "softplus",
                      "Sigmoid": "sigmoid"}
# torch's Softplus returns its input above this threshold instead of log(1 + e^x); fastvae's is
# exact. From 20 on the two differ by at most log(1 + e^-20) = 2.1e-9, below that by more.
_SOFTPLUS_MIN_THRESHOLD = 20.0


class _Layer:
    """One dense layer being imported: W (in, out) and b (out,) as float64 host arrays, the
    activation that follows it (a fastvae name, or None where nothing follows), and the labels
    that name the layer and its activation in error messages."""

    def __init__(self, W, b, label):
        self.W, self.b, self.label = W, b, label
        self.activation, self.act_label = None, None

    @property
    def n_in(self):
        return self.W.shape[0]

    @property
    def n_out(self):
        return self.W.shape[1]


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
def from_torch(cls, encoder, mu, logvar, decoder, likelihood="bernoulli", dec_logvar=None,
               dtype="float32", seed=0):
    """A ``cls`` model (fastvae.VAE) computing what the PyTorch modules compute.

    encoder: a ``torch.nn.Sequential`` (or a list, tuple or ``nn.ModuleList``) of ``nn.Linear``
        and activation modules (``nn.ReLU``, ``nn.Tanh``, ``nn.Softplus`` with beta=1,
        ``nn.Sigmoid``, ``nn.Identity``), mapping x (B, D) to the last hidden layer h (B, H).
        Nested ``nn.Sequential``s are read in order; a lone ``nn.Linear`` is a sequence of one.
    mu, logvar: ``nn.Linear`` heads H -> L; or both None, and then the encoder's last module
        is an ``nn.Linear`` with 2L outputs, split as ``chunk(2, dim=1)`` (mu = the first L,
        logvar = the last L).
    decoder: the same kind of sequence, z (B, L) -> (B, D), ending with an ``nn.Linear`` that
        outputs the Bernoulli logits or the Gaussian means. For the Bernoulli likelihood it may
        be followed by an ``nn.Sigmoid``, which is dropped: fastvae's decoder outputs logits
        (``model.decode`` returns probabilities).
    likelihood: "bernoulli" or "gaussian".
    dec_logvar: the Gaussian decoder's per-dimension log-variance (D,): a tensor, an
        ``nn.Parameter`` or any array-like. Required for "gaussian", refused for "bernoulli".
    dtype, seed: the model's ("float32" or "float64"; the seed only seeds its random streams,
        since every parameter is copied).

    Mapping: every Linear is one fastvae layer, with its weight (out, in) transposed to (in, out)
    and its bias, read with ``detach().cpu().double()`` and cast to ``dtype``. The activation
    module after a hidden Linear is that layer's activation; a hidden Linear with no activation
    after it (the next module is another Linear, or the encoder ends there before the mu/logvar
    heads) gets the "identity" activation, which computes exactly what torch does. nn.Identity
    modules are no-ops and are skipped wherever they are.

    Refused (ValueError naming the module: its part, index and repr): any other module type
    (Dropout, BatchNorm, LayerNorm, LeakyReLU, ..., or a subclass of a supported module), a
    Linear without bias, two activations in a row, an activation before the first Linear, a
    Softplus with beta != 1 or threshold < 20, widths that do not chain, an encoder that ends
    in an activation when mu/logvar are None (the activation would apply to mu and logvar), a
    2L head of odd width, heads of different shapes or not reading the last hidden layer, a
    decoder that does not start at L or end at D, an activation after the decoder's output
    Linear (other than a Bernoulli model's Sigmoid), NaN/Inf weights (also after the cast to
    ``dtype``), and a missing, extra or misshaped ``dec_logvar``.

    -> ``cls(input_dim, latent_dim=L, likelihood=likelihood, activation=[...],
    encoder_dims=(...), decoder_dims=(...), dtype=dtype, seed=seed)`` with the parameters
    copied in.
    """
    import torch.nn as nn

    likelihood = _likelihood(likelihood)
    if (mu is None) != (logvar is None):
        raise ValueError("give both mu and logvar heads (nn.Linear), or neither (then the "
                         "encoder's last Linear outputs 2L features: mu, then logvar)")
    enc = _torch_layers(nn, encoder, "encoder")
    dec = _torch_layers(nn, decoder, "decoder")
    heads = None if mu is None else (_torch_head(nn, mu, "mu"), _torch_head(nn, logvar, "logvar"))
    if heads is None and enc and enc[-1].activation is not None:
        raise ValueError(
            f"{enc[-1].act_label}: the encoder ends in an activation, but with mu=logvar=None "
            f"its last Linear must output the 2L features of mu and logvar as they are (fastvae's "
            f"heads have no activation)")
    out = dec[-1] if dec else None
    if out is not None and out.activation is not None:
        if out.activation != "sigmoid":
            raise ValueError(f"{out.act_label}: the decoder's output Linear must not be followed "
                             f"by an activation (it outputs Bernoulli logits or Gaussian means); "
                             f"only a Bernoulli decoder may end in nn.Sigmoid")
        if likelihood == "gaussian":
            raise ValueError(f"{out.act_label}: a Gaussian decoder ends with the Linear that "
                             f"outputs the means; a Sigmoid after it is not part of fastvae's "
                             f"Gaussian model (use likelihood='bernoulli' for probabilities)")
        out.activation = None   # a Bernoulli decoder's Sigmoid: fastvae works in logits
    if dec_logvar is not None:
        dec_logvar = _host_array(dec_logvar, "dec_logvar")
    return _assemble(cls, enc, heads, dec, likelihood, dec_logvar, dtype, seed)


def _torch_flatten(nn, modules, label):
    """[(label, module)] in forward order, nested nn.Sequentials opened."""
    if type(modules) is nn.Linear:
        return [(f"{label}", modules)]
    if isinstance(modules, nn.Sequential):
        if type(modules).forward is not nn.Sequential.forward:
            raise ValueError(f"{label} {type(modules).__name__}: a Sequential subclass with its "
                             f"own forward cannot be read module by module")
    elif not isinstance(modules, (list, tuple, nn.ModuleList)):
        raise ValueError(f"{label} must be a torch.nn.Sequential or a list of modules "
                         f"(nn.Linear and activations), got {type(modules).__name__}")
    flat = []
    for i, module in enumerate(modules):
        where = f"{label}[{i}]"
        if isinstance(module, nn.Sequential):
            flat += _torch_flatten(nn, module, where)
        else:
            flat.append((where, module))
    return flat


def _torch_layers(nn, modules, part):
    """The _Layers of a torch sequence ``part`` ("encoder" or "decoder"), with the activation
    that follows each (None where none does)."""
    layers = []
    for where, module in _torch_flatten(nn, modules, part):
        label = f"{where} {module!r}"
        kind = type(module).__name__
        if type(module) is nn.Identity:
            continue
        if type(module) is nn.Linear:
            layers.append(_torch_linear(module, label))
        elif kind in _TORCH_ACTIVATIONS and type(module) is getattr(nn, kind):
            if not layers:
                raise ValueError(f"{label}: an activation before the first Linear of the {part} "
                                 f"(fastvae's {part} starts with a Linear layer)")
            if layers[-1].activation is not None:
                raise ValueError(f"{label}: two activations in a row (after "
                                 f"{layers[-1].act_label}); a fastvae layer is one Linear and "
                                 f"at most one activation")
            if kind == "Softplus" and (module.beta != 1 or
                                       module.threshold < _SOFTPLUS_MIN_THRESHOLD):
                raise ValueError(f"{label}: fastvae's softplus is log(1 + e^x), torch's Softplus "
                                 f"with beta=1 and threshold >= {_SOFTPLUS_MIN_THRESHOLD:g}; "
                                 f"this one computes something else")
            layers[-1].activation, layers[-1].act_label = _TORCH_ACTIVATIONS[kind], label
        else:
            raise ValueError(f"{label}: fastvae cannot represent this module; the {part} must "
                             f"be nn.Linear layers, each followed by at most one of nn.ReLU, "
                             f"nn.Tanh, nn.Softplus, nn.Sigmoid (or nn.Identity)")
    return layers


def _torch_linear(module, label):
    if module.bias is None:
        raise ValueError(f"{label}: a Linear without bias; fastvae's layers all have one (copy "
                         f"the model with bias=True and a zero bias)")
    W = _host_array(module.weight, f"{label} weight")
    b = _host_array(module.bias, f"{label} bias")
    return _layer(W.T, b, label)


def _torch_head(nn, module, name):
    label = f"{name} {module!r}"
    if type(module) is not nn.Linear:
        raise ValueError(f"{label}: the {name} head must be an nn.Linear (or give mu=logvar=None "
                         f"with an encoder ending in a Linear of 2L outputs)")
    return _torch_linear(module, label)


# ---------------------------------------------------------------------------------------------
# arrays (JAX/Flax, NumPy, torch tensors, ...)
# ---------------------------------------------------------------------------------------------
def from_arrays(cls, encoder, decoder, mu=None, logvar=None, activation="relu",
                likelihood="bernoulli", dec_logvar=None, layout="in_out", dtype="float32",
                seed=0):
    """A ``cls`` model (fastvae.VAE) from the weights of an MLP VAE as arrays.

    encoder: a list of (W, b) pairs, the hidden encoder layers in forward order (x (B, D) ->
        ... -> h (B, H)). With mu=logvar=None its last pair is instead the head H -> 2L, split
        in halves along its outputs (mu = the first L, logvar = the last L).
    decoder: a list of (W, b) pairs in forward order, z (B, L) -> ... -> (B, D), the last being
        the output layer (Bernoulli logits or Gaussian means; no activation).
    mu, logvar: the (W, b) pairs of the two heads H -> L, or both None.
    A pair may also be a mapping {"kernel": W, "bias": b}, as a Flax ``nn.Dense`` stores it.
    activation: one name for every hidden layer, or one name per hidden layer, encoder's first,
        in forward order; names from ("identity", "relu", "tanh", "softplus", "sigmoid").
    likelihood: "bernoulli" or "gaussian"; dec_logvar: the Gaussian decoder's log-variance (D,),
        required for "gaussian", refused for "bernoulli".
    layout: "in_out", W is (in, out) and a layer computes act(x @ W + b) (Flax's nn.Dense
        kernel, fastvae's own); or "out_in", W is (out, in), act(x @ W.T + b) (PyTorch's
        nn.Linear weight).
    Arrays may be NumPy or JAX arrays, torch tensors (detached, read on the CPU in float64) or
    anything ``np.asarray`` takes; they are copied, cast to ``dtype``.

    Refused with a ValueError naming the argument (``encoder[i]``, ``decoder[i]``, ``mu``,
    ``logvar``, ``dec_logvar``): a layer that is not a (W, b) pair, a W that is not 2-D, a b
    whose shape is not (out,), widths that do not chain (each layer's in = the previous out,
    heads reading the last hidden layer, the decoder from L to D), heads of different shapes,
    an odd 2L head, NaN/Inf values (also after the cast to ``dtype``), an unknown layout or
    likelihood, and a missing, extra or misshaped ``dec_logvar``; a non-real dtype (boolean,
    complex, object) is a TypeError. The activation list is checked by ``cls`` (its length and
    names). -> a ``cls`` model with the parameters copied in.
    """
    likelihood = _likelihood(likelihood)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} (W (in, out) as Flax's Dense kernel, "
                         f"or (out, in) as torch's Linear weight), got {layout!r}")
    if (mu is None) != (logvar is None):
        raise ValueError("give both mu and logvar heads as (W, b) pairs, or neither (then the "
                         "encoder's last pair outputs 2L features: mu, then logvar)")
    enc = _array_layers(encoder, "encoder", layout)
    dec = _array_layers(decoder, "decoder", layout)
    heads = None if mu is None else (_array_layer(mu, "mu", layout),
                                     _array_layer(logvar, "logvar", layout))
    # one name per hidden layer (``cls`` checks the names and their number)
    n_hidden = len(enc) - (heads is None) + len(dec) - 1
    names = [activation] * n_hidden if isinstance(activation, str) else list(activation)
    if dec_logvar is not None:
        dec_logvar = _host_array(dec_logvar, "dec_logvar")
    return _assemble(cls, enc, heads, dec, likelihood, dec_logvar, dtype, seed,
                     activation=names)


def _array_layers(pairs, part, layout):
    if isinstance(pairs, Mapping) or not hasattr(pairs, "__len__"):
        raise ValueError(f"{part} must be a list of (W, b) pairs in forward order, got "
                         f"{type(pairs).__name__}")
    return [_array_layer(pair, f"{part}[{i}]", layout) for i, pair in enumerate(pairs)]


def _array_layer(pair, label, layout):
    if isinstance(pair, Mapping):
        if set(pair) != {"kernel", "bias"}:
            raise ValueError(f"{label} must be a (W, b) pair or a mapping with the keys 'kernel' "
                             f"and 'bias' (a Flax Dense layer), got the keys {sorted(pair)}")
        pair = (pair["kernel"], pair["bias"])
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(f"{label} must be a (W, b) pair, got {type(pair).__name__}"
                         + (f" of length {len(pair)}" if hasattr(pair, "__len__") else ""))
    W = _host_array(pair[0], f"{label} W")
    b = _host_array(pair[1], f"{label} b")
    if W.ndim != 2:
        raise ValueError(f"{label} W must be 2-D, {LAYOUT_SHAPES[layout]} with layout={layout!r}"
                         f", got shape {W.shape}")
    return _layer(W if layout == "in_out" else W.T, b, label)


# ---------------------------------------------------------------------------------------------
# shared: checks, then the model
# ---------------------------------------------------------------------------------------------
def _likelihood(likelihood):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return likelihood


def _host_array(a, name):
    """A float64 NumPy copy of a torch tensor / Parameter (detached, on the CPU), a JAX or
    NumPy array, or any array-like."""
    if hasattr(a, "detach") and hasattr(a, "double"):   # torch: also bfloat16, CUDA, grad
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return np.array(a, dtype=np.float64)


def _layer(W, b, label):
    """A _Layer from W (in, out) and b, checking b's shape and the widths."""
    if min(W.shape) < 1:
        raise ValueError(f"{label}: a layer needs at least one input and one output feature, got "
                         f"(in, out) = {W.shape}")
    if b.shape != (W.shape[1],):
        raise ValueError(f"{label}: the bias must have shape ({W.shape[1]},) (one per output), "
                         f"got {b.shape}")
    return _Layer(W, b, label)


def _chain(layers, n_in, part, start):
    """Each layer reads n_in features from the one before; ``start`` describes the first input."""
    for layer in layers:
        if layer.n_in != n_in:
            raise ValueError(f"{layer.label}: takes {layer.n_in} input features, but {start} "
                             f"outputs {n_in}; the {part}'s widths do not chain")
        n_in, start = layer.n_out, layer.label
    return n_in


def _assemble(cls, enc, heads, dec, likelihood, dec_logvar, dtype, seed, activation=None):
    """Check the widths, build ``cls`` and copy the parameters in.

    enc: the encoder's _Layers (hidden layers, then the 2L head if heads is None); heads: the
    (mu, logvar) _Layers or None; dec: the decoder's _Layers, the output layer last.
    activation: the names to pass to ``cls`` (from_arrays), else each hidden layer's own."""
    if heads is None:
        if not enc:
            raise ValueError("the encoder is empty, and without mu and logvar heads its last "
                             "layer must be the head with 2L outputs (mu, then logvar)")
        *hidden, head = enc
        if head.n_out % 2:
            raise ValueError(f"{head.label}: with mu=logvar=None the encoder's last layer "
                             f"outputs mu and logvar (2L features), but it has {head.n_out}, "
                             f"an odd number")
        latent = head.n_out // 2
        split = [_Layer(head.W[:, :latent], head.b[:latent], f"{head.label} (mu half)"),
                 _Layer(head.W[:, latent:], head.b[latent:], f"{head.label} (logvar half)")]
        input_dim = hidden[0].n_in if hidden else head.n_in
        _chain(hidden + [head], input_dim, "encoder", "the input x")
    else:
        hidden = enc
        mu, lv = heads
        input_dim = hidden[0].n_in if hidden else mu.n_in
        h = _chain(hidden, input_dim, "encoder", "the input x")
        last = hidden[-1].label if hidden else "the input x"
        for head in heads:
            if head.n_in != h:
                raise ValueError(f"{head.label}: takes {head.n_in} input features, but the heads "
                                 f"read the encoder's last hidden layer, {last}, with {h}")
        if lv.n_out != mu.n_out:
            raise ValueError(f"{lv.label}: outputs {lv.n_out} features, but the mu head outputs "
                             f"{mu.n_out}; both heads output the L latent dimensions")
        latent, split = mu.n_out, [mu, lv]
    if not dec:
        raise ValueError("the decoder is empty; it needs at least its output layer (z or the "
                         "last hidden layer -> the D outputs)")
    out = _chain(dec, latent, "decoder", f"the latent z (L = {latent})")
    if out != input_dim:
        raise ValueError(f"{dec[-1].label}: the decoder outputs {out} features, but the encoder "
                         f"reads {input_dim} (input_dim); the output layer must give one per "
                         f"input dimension")
    if likelihood == "gaussian":
        if dec_logvar is None:
            raise ValueError(f"dec_logvar is required for likelihood='gaussian': the decoder's "
                             f"log-variance, one per input dimension ({input_dim},)")
        if dec_logvar.shape != (input_dim,):
            raise ValueError(f"dec_logvar must have shape ({input_dim},) (one log-variance per "
                             f"input dimension), got {dec_logvar.shape}")
    elif dec_logvar is not None:
        raise ValueError("dec_logvar is only for likelihood='gaussian'; a Bernoulli decoder has "
                         "no log-variance")

    if activation is None:
        activation = [layer.activation or "identity" for layer in hidden + dec[:-1]]
    model = cls(input_dim, latent_dim=latent, likelihood=likelihood, activation=activation,
                encoder_dims=tuple(layer.n_out for layer in hidden),
                decoder_dims=tuple(layer.n_out for layer in dec[:-1]), dtype=dtype, seed=seed)

    names = [f"enc{i}" for i in range(len(hidden))] + ["enc_mu", "enc_logvar"] + \
        [f"dec{i}" for i in range(len(dec) - 1)] + ["dec_out"]
    values = {}
    for name, layer in zip(names, hidden + split + dec):
        values[f"{name}.W"] = (layer.W, f"{layer.label}: weight")
        values[f"{name}.b"] = (layer.b, f"{layer.label}: bias")
    if likelihood == "gaussian":
        values["dec_out.logvar"] = (dec_logvar, "dec_logvar")
    for name, (value, what) in values.items():
        _check_finite(value, model.dtype, what)
    for name, (value, _) in values.items():
        model.params[name] = value
    return model


def _check_finite(a, dtype, what):
    """Refuse NaN/Inf in a, and values that overflow ``dtype``."""
    with np.errstate(over="ignore"):   # reported below
        cast = a.astype(dtype)
    if not np.isfinite(cast).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(cast))[0])
        value = float(a[idx])
        why = (f"is {value!r}" if not np.isfinite(value) else
               f"is {value!r}, which overflows {np.dtype(dtype).name}")
        raise ValueError(f"{what} at index {idx} {why}; a model with NaN/Inf parameters "
                         f"computes no likelihood")
