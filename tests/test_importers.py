"""fastvae.importers: PyTorch modules and Flax/NumPy/JAX weight arrays imported into fastvae.VAE.

Every imported model is compared with the framework's own computation on the same noise: the
loss of ``model.loss_and_grads(x, eps)`` with PyTorch's negative ELBO (the pytorch/examples VAE's
own ``loss_function`` too), its gradients with torch's autograd, ``encode`` and ``decode`` with
the torch modules' outputs (or a NumPy forward pass for arrays): float64 to 1e-10 relative,
float32 to 1e-5. Then every refusal: a ValueError naming the module or argument.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install "
                                            "'fastvae[torch]'")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastvae as fv  # noqa: E402
from fastvae import importers  # noqa: E402

LOG_2PI = math.log(2 * math.pi)
B = 6   # rows per batch


def _seeded(seed):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _randomize_biases(*modules):
    """torch's default biases are small; make them visibly nonzero so a dropped bias shows."""
    with torch.no_grad():
        for module in modules:
            for m in module.modules() if isinstance(module, nn.Module) else module:
                if isinstance(m, nn.Linear):
                    m.bias.normal_(0, 0.3)


def torch_neg_elbo(x, out, mu, logvar, likelihood="bernoulli", dec_logvar=None):
    """-mean_n ELBO_n in torch: BCE-with-logits (or the Gaussian NLL) summed over D, plus the
    analytic KL, averaged over the batch."""
    if likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
    else:
        rec = 0.5 * (LOG_2PI + dec_logvar + (x - out) ** 2 * torch.exp(-dec_logvar)).sum(1)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    return (rec + kl).mean()


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def _bernoulli_data(rng, d):
    """x (B, d) with zeros, ones and values in between; eps (B, L) drawn by the caller."""
    x = rng.uniform(0, 1, (B, d))
    x[:, ::3] = (x[:, ::3] > 0.5)
    return x


# ---------------------------------------------------------------------------------------------
# the pytorch/examples VAE (examples/vae/main.py), at 30-16-4 instead of 784-400-20
# ---------------------------------------------------------------------------------------------
class ExampleVAE(nn.Module):
    """pytorch/examples' VAE with its widths as arguments and the noise passed in."""

    def __init__(self, d=30, h=16, latent=4):
        super().__init__()
        self.d = d
        self.fc1 = nn.Linear(d, h)
        self.fc21 = nn.Linear(h, latent)
        self.fc22 = nn.Linear(h, latent)
        self.fc3 = nn.Linear(latent, h)
        self.fc4 = nn.Linear(h, d)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar, eps):
        std = torch.exp(0.5 * logvar)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x, eps):
        mu, logvar = self.encode(x.view(-1, self.d))
        z = self.reparameterize(mu, logvar, eps)
        return self.decode(z), mu, logvar


def example_loss_function(recon_x, x, mu, logvar, d):
    """pytorch/examples' loss: summed over the batch."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, d), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def _import_example(m, dtype):
    return importers.from_torch(fv.VAE, [m.fc1, nn.ReLU()], m.fc21, m.fc22,
                                nn.Sequential(m.fc3, nn.ReLU(), m.fc4, nn.Sigmoid()),
                                dtype=dtype)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_pytorch_example_vae(dtype, rtol):
    rng = _seeded(1)
    m = ExampleVAE().double()
    _randomize_biases(m)
    model = _import_example(m, dtype)
    assert (model.input_dim, model.encoder_dims, model.decoder_dims, model.latent_dim) == \
        (30, (16,), (16,), 4)
    assert model.activations == ("relu", "relu") and model.likelihood == "bernoulli"
    x, eps = _bernoulli_data(rng, 30), rng.standard_normal((B, 4))
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)

    loss, _ = model.loss_and_grads(x, eps)
    with torch.no_grad():
        recon, mu, logvar = m(tx, teps)
        own = float(example_loss_function(recon, tx, mu, logvar, 30)) / B
        z = m.reparameterize(mu, logvar, teps)
        logits = m.fc4(F.relu(m.fc3(z)))
        ref = float(torch_neg_elbo(tx, logits, mu, logvar))
    assert _rel(loss, ref) < rtol, (loss, ref)
    assert _rel(loss, own) < max(rtol, 1e-12), (loss, own)   # the example's BCE on sigmoids

    got_mu, got_logvar = model.encode(x)
    np.testing.assert_allclose(got_mu, mu.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got_logvar, logvar.numpy(), rtol=rtol, atol=rtol)
    zs = rng.standard_normal((5, 4))
    with torch.no_grad():
        probs = m.decode(torch.from_numpy(zs)).numpy()
    np.testing.assert_allclose(model.decode(zs), probs, rtol=rtol, atol=rtol)


def test_pytorch_example_vae_float32_module():
    """A float32 torch model (the usual case) read into float64: the same numbers as torch's
    float64 computation of that float32 model."""
    rng = _seeded(2)
    m = ExampleVAE()
    model = _import_example(m, "float64")
    x, eps = _bernoulli_data(rng, 30), rng.standard_normal((B, 4))
    m = m.double()
    with torch.no_grad():
        recon, mu, logvar = m(torch.from_numpy(x), torch.from_numpy(eps))
        own = float(example_loss_function(recon, torch.from_numpy(x), mu, logvar, 30)) / B
    assert _rel(model.loss_and_grads(x, eps)[0], own) < 1e-10


# ---------------------------------------------------------------------------------------------
# an asymmetric model: two encoder layers with different activations, a chunk(2) head,
# one decoder layer; and its gradients against torch's autograd
# ---------------------------------------------------------------------------------------------
def _asymmetric(seed=3):
    _seeded(seed)
    encoder = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 7), nn.Softplus(),
                            nn.Linear(7, 2 * 3)).double()
    decoder = nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 12)).double()
    _randomize_biases(encoder, decoder)
    return encoder, decoder


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_asymmetric_chunk_head(dtype, rtol):
    encoder, decoder = _asymmetric()
    model = importers.from_torch(fv.VAE, encoder, None, None, decoder, dtype=dtype, seed=5)
    assert (model.input_dim, model.encoder_dims, model.decoder_dims, model.latent_dim) == \
        (12, (9, 7), (8,), 3)
    assert model.activations == ("tanh", "softplus", "sigmoid")
    assert model.seed == 5 and model.dtype == np.dtype(dtype)
    rng = np.random.default_rng(4)
    x, eps = _bernoulli_data(rng, 12), rng.standard_normal((B, 3))
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)
    mu, logvar = encoder(tx).chunk(2, dim=1)
    ref = torch_neg_elbo(tx, decoder(mu + torch.exp(logvar / 2) * teps), mu, logvar)
    ref.backward()
    ref = ref.item()

    loss, grads = model.loss_and_grads(x, eps)
    assert _rel(loss, ref) < rtol, (loss, ref)
    np.testing.assert_allclose(model.encode(x)[0], mu.detach().numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(model.encode(x)[1], logvar.detach().numpy(), rtol=rtol,
                               atol=rtol)
    zs = rng.standard_normal((4, 3))
    probs = torch.sigmoid(decoder(torch.from_numpy(zs))).detach().numpy()
    np.testing.assert_allclose(model.decode(zs), probs, rtol=rtol, atol=rtol)

    # fastvae's explicit backward against torch's autograd, parameter by parameter
    head = encoder[4]
    expected = {"enc0": encoder[0], "enc1": encoder[2], "dec0": decoder[0],
                "dec_out": decoder[2]}
    for name, lin in expected.items():
        np.testing.assert_allclose(grads[f"{name}.W"], lin.weight.grad.numpy().T, rtol=rtol,
                                   atol=rtol, err_msg=name)
        np.testing.assert_allclose(grads[f"{name}.b"], lin.bias.grad.numpy(), rtol=rtol,
                                   atol=rtol, err_msg=name)
    for name, rows in (("enc_mu", slice(0, 3)), ("enc_logvar", slice(3, 6))):
        np.testing.assert_allclose(grads[f"{name}.W"], head.weight.grad.numpy()[rows].T,
                                   rtol=rtol, atol=rtol, err_msg=name)
        np.testing.assert_allclose(grads[f"{name}.b"], head.bias.grad.numpy()[rows], rtol=rtol,
                                   atol=rtol, err_msg=name)


def test_identity_nested_sequential_and_linear_without_activation():
    """nn.Identity is skipped; a nested Sequential is read in order; a hidden Linear with no
    activation after it (here enc0, and enc1 right before the heads) becomes "identity"; an
    encoder with no hidden layer works too (dec side)."""
    _seeded(6)
    encoder = nn.Sequential(nn.Identity(), nn.Linear(5, 6),
                            nn.Sequential(nn.Linear(6, 4), nn.Identity())).double()
    mu, logvar = nn.Linear(4, 2).double(), nn.Linear(4, 2).double()
    decoder = nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), nn.Identity(),
                            nn.Linear(3, 5)).double()
    _randomize_biases(encoder, mu, logvar, decoder)
    model = importers.from_torch(fv.VAE, encoder, mu, logvar, decoder, dtype="float64")
    assert model.activations == ("identity", "identity", "relu")
    assert (model.encoder_dims, model.decoder_dims) == ((6, 4), (3,))
    rng = np.random.default_rng(7)
    x, eps = _bernoulli_data(rng, 5), rng.standard_normal((B, 2))
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)
    with torch.no_grad():
        h = encoder(tx)
        tmu, tlv = mu(h), logvar(h)
        ref = float(torch_neg_elbo(tx, decoder(tmu + torch.exp(tlv / 2) * teps), tmu, tlv))
    assert _rel(model.loss_and_grads(x, eps)[0], ref) < 1e-10

    # no hidden layer at all: heads read x, the decoder is its output Linear
    bare = importers.from_torch(fv.VAE, [], mu, logvar, nn.Linear(2, 4).double(),
                                dtype="float64")
    assert (bare.input_dim, bare.encoder_dims, bare.decoder_dims) == (4, (), ())


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_gaussian_decoder(dtype, rtol):
    _seeded(8)
    encoder = nn.Sequential(nn.Linear(10, 8), nn.ReLU()).double()
    mu, logvar = nn.Linear(8, 3).double(), nn.Linear(8, 3).double()
    decoder = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    dec_logvar = nn.Parameter(0.3 * torch.randn(10, dtype=torch.float64))
    _randomize_biases(encoder, mu, logvar, decoder)
    model = importers.from_torch(fv.VAE, encoder, mu, logvar, decoder, likelihood="gaussian",
                                 dec_logvar=dec_logvar, dtype=dtype)
    np.testing.assert_allclose(model.params["dec_out.logvar"], dec_logvar.detach().numpy(),
                               rtol=rtol)
    rng = np.random.default_rng(9)
    x, eps = rng.normal(0, 2, (B, 10)), rng.standard_normal((B, 3))
    tx, teps = torch.from_numpy(x), torch.from_numpy(eps)
    with torch.no_grad():
        h = encoder(tx)
        tmu, tlv = mu(h), logvar(h)
        out = decoder(tmu + torch.exp(tlv / 2) * teps)
        ref = float(torch_neg_elbo(tx, out, tmu, tlv, "gaussian", dec_logvar))
        # torch's own Gaussian NLL (full=True adds log(2 pi)/2) gives the same reconstruction
        nll = F.gaussian_nll_loss(out, tx, dec_logvar.exp().expand(B, 10), full=True,
                                  reduction="sum") / B
        kl = float((-0.5 * (1 + tlv - tmu ** 2 - tlv.exp()).sum(1)).mean())
    assert _rel(float(nll) + kl, ref) < 1e-12
    assert _rel(model.loss_and_grads(x, eps)[0], ref) < rtol
    got_mu, _ = model.encode(x)
    np.testing.assert_allclose(got_mu, tmu.numpy(), rtol=rtol, atol=rtol)
    zs = rng.standard_normal((4, 3))
    with torch.no_grad():
        means = decoder(torch.from_numpy(zs)).numpy()
    np.testing.assert_allclose(model.decode(zs), means, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------------
# arrays: a Flax-style parameter dict (JAX arrays), and torch's (out, in) layout
# ---------------------------------------------------------------------------------------------
def _np_act(a, name):
    return {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
            "softplus": lambda v: np.logaddexp(0, v), "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            "identity": lambda v: v}[name](a)


def _flax_params(rng, widths):
    """{"params": {"Dense_i": {"kernel": (in, out), "bias": (out,)}}}, as flax.linen.Dense
    layers store them, for consecutive widths."""
    return {"params": {f"Dense_{i}": {"kernel": rng.normal(0, 0.5, (a, b)),
                                      "bias": rng.normal(0, 0.3, b)}
                       for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}}


def test_flax_style_arrays_chunk_head():
    """Flax encoder x -> Dense_0 relu -> Dense_1 tanh -> Dense_2 (2L, split), decoder z ->
    Dense_3 softplus -> Dense_4; as JAX arrays, one layer as a {"kernel", "bias"} mapping."""
    jnp = pytest.importorskip("jax.numpy")
    import jax
    rng = np.random.default_rng(10)
    enc = _flax_params(rng, [9, 7, 5, 2 * 2])["params"]
    dec = _flax_params(rng, [2, 6, 9])["params"]
    p = {"Dense_0": enc["Dense_0"], "Dense_1": enc["Dense_1"], "Dense_2": enc["Dense_2"],
         "Dense_3": dec["Dense_0"], "Dense_4": dec["Dense_1"]}
    # float32, JAX's default; the float64 model and the NumPy pass below use these values
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a.astype(np.float32)), p)
    assert isinstance(p["Dense_0"]["kernel"], jax.Array)
    pairs = lambda *names: [(p[n]["kernel"], p[n]["bias"]) for n in names]   # noqa: E731
    acts = ["relu", "tanh", "softplus"]
    model = importers.from_arrays(fv.VAE, pairs("Dense_0", "Dense_1") + [p["Dense_2"]],
                                  pairs("Dense_3", "Dense_4"), activation=acts,
                                  dtype="float64")
    assert (model.encoder_dims, model.decoder_dims, model.activations) == ((7, 5), (6,),
                                                                          tuple(acts))

    q = {name: (np.asarray(v["kernel"], np.float64), np.asarray(v["bias"], np.float64))
         for name, v in p.items()}

    def np_encode(x):
        h = _np_act(x @ q["Dense_0"][0] + q["Dense_0"][1], "relu")
        h = _np_act(h @ q["Dense_1"][0] + q["Dense_1"][1], "tanh")
        out = h @ q["Dense_2"][0] + q["Dense_2"][1]
        return out[:, :2], out[:, 2:]

    def np_logits(z):
        h = _np_act(z @ q["Dense_3"][0] + q["Dense_3"][1], "softplus")
        return h @ q["Dense_4"][0] + q["Dense_4"][1]

    x, eps = _bernoulli_data(rng, 9), rng.standard_normal((B, 2))
    mu, logvar = np_encode(x)
    logits = np_logits(mu + np.exp(logvar / 2) * eps)
    rec = np.sum(np.logaddexp(0, logits) - x * logits, axis=1)
    kl = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar, axis=1)
    ref = float(np.mean(rec + kl))
    assert _rel(model.loss_and_grads(x, eps)[0], ref) < 1e-10
    got_mu, got_logvar = model.encode(x)
    np.testing.assert_allclose(got_mu, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_logvar, logvar, rtol=1e-10, atol=1e-12)
    zs = rng.standard_normal((3, 2))
    np.testing.assert_allclose(model.decode(zs), 1 / (1 + np.exp(-np_logits(zs))), rtol=1e-10,
                               atol=1e-12)


def test_arrays_heads_gaussian_and_float32_cast():
    """mu/logvar heads as pairs, one activation for all, Gaussian with dec_logvar, float32."""
    rng = np.random.default_rng(11)
    W = lambda a, b: rng.normal(0, 0.5, (a, b))   # noqa: E731
    bias = lambda b: rng.normal(0, 0.3, b)        # noqa: E731
    enc = [(W(6, 5), bias(5))]
    mu, logvar = (W(5, 2), bias(2)), (W(5, 2), bias(2))
    dec = [(W(2, 4), bias(4)), (W(4, 6), bias(6))]
    dec_logvar = rng.normal(0, 0.3, 6)
    model = importers.from_arrays(fv.VAE, enc, dec, mu=mu, logvar=logvar, activation="tanh",
                                  likelihood="gaussian", dec_logvar=dec_logvar)
    assert model.dtype == np.float32 and model.activations == ("tanh", "tanh")
    x, eps = rng.normal(0, 1, (B, 6)), rng.standard_normal((B, 2))
    h = np.tanh(x @ enc[0][0] + enc[0][1])
    m, lv = h @ mu[0] + mu[1], h @ logvar[0] + logvar[1]
    z = m + np.exp(lv / 2) * eps
    mean = np.tanh(z @ dec[0][0] + dec[0][1]) @ dec[1][0] + dec[1][1]
    ll = -0.5 * np.sum(LOG_2PI + dec_logvar + (x - mean) ** 2 * np.exp(-dec_logvar), axis=1)
    kl = 0.5 * np.sum(m ** 2 + np.exp(lv) - 1 - lv, axis=1)
    ref = float(np.mean(kl - ll))
    assert _rel(model.loss_and_grads(x, eps)[0], ref) < 1e-5


def test_arrays_out_in_layout_matches_from_torch():
    """torch weights (out, in) through from_arrays(layout="out_in") give the parameters of
    from_torch, bit for bit; torch tensors (with requires_grad) are accepted as arrays."""
    encoder, decoder = _asymmetric(seed=12)
    via_torch = importers.from_torch(fv.VAE, encoder, None, None, decoder, dtype="float64")
    lin = lambda m: (m.weight, m.bias)   # noqa: E731
    via_arrays = importers.from_arrays(
        fv.VAE, [lin(encoder[0]), lin(encoder[2]), lin(encoder[4])],
        [lin(decoder[0]), lin(decoder[2])], activation=("tanh", "softplus", "sigmoid"),
        layout="out_in", dtype="float64")
    assert list(via_arrays.params) == list(via_torch.params)
    for name in via_torch.params:
        np.testing.assert_array_equal(via_arrays.params[name], via_torch.params[name], name)


# ---------------------------------------------------------------------------------------------
# refusals: PyTorch
# ---------------------------------------------------------------------------------------------
class MyLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _heads(h=5, latent=3):
    return nn.Linear(h, latent), nn.Linear(h, latent)


def _dec(latent=3, d=6):
    return nn.Sequential(nn.Linear(latent, 4), nn.ReLU(), nn.Linear(4, d))


def _enc():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU())


def _nan_linear():
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight[2, 1] = float("nan")
    return lin


def _big_linear():
    lin = nn.Linear(6, 5).double()
    with torch.no_grad():
        lin.weight[0, 3] = 1e39
    return lin


TORCH_REFUSALS = {
    "dropout": (dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.1), nn.ReLU())),
                r"encoder\[1\] Dropout\(p=0\.1.*cannot represent this module"),
    "batchnorm": (dict(decoder=nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(),
                                             nn.Linear(4, 6))),
                  r"decoder\[1\] BatchNorm1d\(4.*cannot represent"),
    "leaky_relu": (dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU())),
                   r"encoder\[1\] LeakyReLU"),
    "linear_subclass": (dict(encoder=nn.Sequential(MyLinear(6, 5), nn.ReLU())),
                        r"encoder\[0\] MyLinear\(in_features=6.*cannot represent"),
    "custom_module": (dict(encoder=nn.Sequential(Block())), r"encoder\[0\] Block\("),
    "not_a_sequence": (dict(encoder=Block()), r"encoder must be a torch\.nn\.Sequential"),
    "no_bias": (dict(encoder=nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU())),
                r"encoder\[0\] Linear\(in_features=6, out_features=5, bias=False\): a Linear "
                r"without bias"),
    "two_activations": (dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Tanh())),
                        r"encoder\[2\] Tanh\(\): two activations in a row \(after "
                        r"encoder\[1\] ReLU\(\)\)"),
    "activation_first": (dict(decoder=nn.Sequential(nn.ReLU(), nn.Linear(3, 6))),
                         r"decoder\[0\] ReLU\(\): an activation before the first Linear"),
    "softplus_beta": (dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.Softplus(beta=2))),
                      r"encoder\[1\] Softplus\(beta=2.*computes something else"),
    "softplus_threshold": (dict(encoder=nn.Sequential(nn.Linear(6, 5),
                                                      nn.Softplus(threshold=5))),
                           r"encoder\[1\] Softplus\(.*threshold=5"),
    "encoder_widths": (dict(encoder=nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(5, 5),
                                                  nn.ReLU())),
                       r"encoder\[2\] Linear\(in_features=5.*takes 5 input features, but "
                       r"encoder\[0\] Linear\(in_features=6, out_features=4.* outputs 4"),
    "chunk_encoder_ends_in_activation": (
        dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU()),
             mu=None, logvar=None),
        r"encoder\[3\] ReLU\(\): the encoder ends in an activation"),
    "chunk_odd_head": (dict(encoder=nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7)),
                            mu=None, logvar=None),
                       r"encoder\[2\] Linear\(in_features=5, out_features=7.*an odd number"),
    "chunk_empty_encoder": (dict(encoder=[], mu=None, logvar=None), r"the encoder is empty"),
    "only_mu": (dict(logvar=None), r"give both mu and logvar heads"),
    "head_widths": (dict(logvar=nn.Linear(5, 2)),
                    r"logvar Linear\(in_features=5, out_features=2.*outputs 2 features, but the "
                    r"mu head outputs 3"),
    "head_input": (dict(mu=nn.Linear(4, 3)),
                   r"mu Linear\(in_features=4.*takes 4 input features, but the heads read the "
                   r"encoder's last hidden layer, encoder\[0\] Linear\(in_features=6, "
                   r"out_features=5.*with 5"),
    "head_not_linear": (dict(mu=nn.Sequential(nn.Linear(5, 3))),
                        r"(?s)mu Sequential\(.*the mu head must be an nn\.Linear"),
    "head_without_bias": (dict(logvar=nn.Linear(5, 3, bias=False)),
                          r"logvar Linear\(.*bias=False\): a Linear without bias"),
    "decoder_input": (dict(decoder=nn.Sequential(nn.Linear(4, 6))),
                      r"decoder\[0\] Linear\(in_features=4.*takes 4 input features, but the "
                      r"latent z \(L = 3\) outputs 3"),
    "decoder_output": (dict(decoder=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 7))),
                       r"decoder\[2\] Linear\(in_features=4, out_features=7.*the decoder "
                       r"outputs 7 features, but the encoder reads 6 \(input_dim\)"),
    "decoder_empty": (dict(decoder=[nn.Identity()]), r"the decoder is empty"),
    "activation_after_output": (dict(decoder=nn.Sequential(nn.Linear(3, 6), nn.ReLU())),
                                r"decoder\[1\] ReLU\(\): the decoder's output Linear must not be "
                                r"followed by an activation"),
    "gaussian_sigmoid": (dict(decoder=nn.Sequential(nn.Linear(3, 6), nn.Sigmoid()),
                              likelihood="gaussian", dec_logvar=torch.zeros(6)),
                         r"decoder\[1\] Sigmoid\(\): a Gaussian decoder ends with the Linear"),
    "gaussian_without_dec_logvar": (dict(likelihood="gaussian"),
                                    r"dec_logvar is required for likelihood='gaussian'.*\(6,\)"),
    "dec_logvar_shape": (dict(likelihood="gaussian", dec_logvar=torch.zeros(5)),
                         r"dec_logvar must have shape \(6,\).*got \(5,\)"),
    "bernoulli_dec_logvar": (dict(dec_logvar=torch.zeros(6)),
                             r"dec_logvar is only for likelihood='gaussian'"),
    "dec_logvar_inf": (dict(likelihood="gaussian",
                            dec_logvar=torch.tensor([0.0] * 5 + [math.inf])),
                       r"dec_logvar at index \(5,\) is inf"),
    "likelihood": (dict(likelihood="poisson"), r"likelihood must be one of"),
    "nan_weight": (dict(encoder=nn.Sequential(_nan_linear(), nn.ReLU())),
                   r"encoder\[0\] Linear\(in_features=6, out_features=5.*: weight at index "
                   r"\(1, 2\) is nan"),
    "float32_overflow": (dict(encoder=nn.Sequential(_big_linear(), nn.ReLU())),
                         r"encoder\[0\] Linear\(.*: weight at index \(3, 0\) is 1e\+39, which "
                         r"overflows float32"),
}


@pytest.mark.parametrize("case", list(TORCH_REFUSALS))
def test_from_torch_refuses(case):
    changes, message = TORCH_REFUSALS[case]
    mu, logvar = _heads()
    kwargs = dict(encoder=_enc(), mu=mu, logvar=logvar, decoder=_dec())
    kwargs.update(changes)
    with pytest.raises(ValueError, match=message):
        importers.from_torch(fv.VAE, **kwargs)


def test_from_torch_accepts_the_refusal_baseline():
    """The unchanged arguments of the refusal cases import (so each refusal is its change's);
    a Bernoulli decoder's final Sigmoid is dropped (decode still returns probabilities)."""
    mu, logvar = _heads()
    model = importers.from_torch(fv.VAE, _enc(), mu, logvar, _dec())
    assert (model.input_dim, model.latent_dim, model.activations) == (6, 3, ("relu", "relu"))
    dec = nn.Sequential(nn.Linear(3, 6), nn.Sigmoid())
    model = importers.from_torch(fv.VAE, _enc(), mu, logvar, dec, dtype="float64")
    z = np.random.default_rng(13).standard_normal((2, 3))
    with torch.no_grad():
        expected = dec.double()(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(model.decode(z), expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# refusals: arrays
# ---------------------------------------------------------------------------------------------
def _pairs(*widths):
    rng = np.random.default_rng(14)
    return [(rng.normal(size=(a, b)), rng.normal(size=b)) for a, b in zip(widths, widths[1:])]


def _with(pairs, i, W=None, b=None):
    pairs = list(pairs)
    pairs[i] = (pairs[i][0] if W is None else W, pairs[i][1] if b is None else b)
    return pairs


_NAN_W = np.ones((2, 4))
_NAN_W[1, 2] = np.nan

ARRAY_REFUSALS = {
    "bias_shape": (dict(encoder=_with(_pairs(6, 5, 6), 0, b=np.zeros(4))),
                   r"encoder\[0\]: the bias must have shape \(5,\).*got \(4,\)"),
    "bias_2d": (dict(decoder=_with(_pairs(2, 4, 6), 1, b=np.zeros((1, 6)))),
                r"decoder\[1\]: the bias must have shape \(6,\)"),
    "W_1d": (dict(decoder=_with(_pairs(2, 4, 6), 1, W=np.zeros(4))),
             r"decoder\[1\] W must be 2-D, \(in, out\) with layout='in_out', got shape \(4,\)"),
    "zero_width": (dict(encoder=_with(_pairs(6, 5, 6), 1, W=np.zeros((5, 0)), b=np.zeros(0))),
                   r"encoder\[1\]: a layer needs at least one input and one output"),
    "widths": (dict(encoder=_pairs(6, 5)[:1] + _pairs(4, 6)),
               r"encoder\[1\]: takes 4 input features, but encoder\[0\] outputs 5"),
    "decoder_output": (dict(decoder=_pairs(2, 4, 7)),
                       r"decoder\[1\]: the decoder outputs 7 features, but the encoder reads 6"),
    "odd_head": (dict(encoder=_pairs(6, 5, 5)), r"encoder\[1\]: .*an odd number"),
    "nan": (dict(decoder=_with(_pairs(2, 4, 6), 0, W=_NAN_W)),
            r"decoder\[0\]: weight at index \(1, 2\) is nan"),
    "inf_bias": (dict(decoder=_with(_pairs(2, 4, 6), 0, b=np.array([0, 0, -np.inf, 0]))),
                 r"decoder\[0\]: bias at index \(2,\) is -inf"),
    "not_a_pair": (dict(encoder=[np.zeros((6, 5))]), r"encoder\[0\] must be a \(W, b\) pair"),
    "triple": (dict(encoder=[(np.zeros((6, 5)), np.zeros(5), None)]),
               r"encoder\[0\] must be a \(W, b\) pair, got tuple of length 3"),
    "mapping_keys": (dict(encoder=[{"kernel": np.zeros((6, 5)), "b": np.zeros(5)}]),
                     r"encoder\[0\] must be a \(W, b\) pair or a mapping with the keys 'kernel'"),
    "encoder_dict": (dict(encoder={"Dense_0": {}}), r"encoder must be a list of \(W, b\) pairs"),
    "layout": (dict(layout="io"), r"layout must be one of \('in_out', 'out_in'\)"),
    "out_in_given_in_out": (dict(layout="out_in"),   # W (6, 5) read as (out, in): 6 outputs
                            r"encoder\[0\]: the bias must have shape \(6,\)"),
    "only_logvar": (dict(mu=None, logvar=_pairs(5, 4)[0]), r"give both mu and logvar heads"),
    "heads_shape": (dict(encoder=_pairs(6, 5), mu=_pairs(5, 2)[0], logvar=_pairs(5, 3)[0]),
                    r"logvar: outputs 3 features, but the mu head outputs 2"),
    "activation_count": (dict(activation=["relu", "tanh", "relu"]),
                         r"activation must be one name or 2 names"),
    "activation_name": (dict(activation="gelu"), r"activation must be one of"),
    "gaussian_without_dec_logvar": (dict(likelihood="gaussian"), r"dec_logvar is required"),
    "dec_logvar_shape": (dict(likelihood="gaussian", dec_logvar=np.zeros((6, 1))),
                         r"dec_logvar must have shape \(6,\)"),
}


@pytest.mark.parametrize("case", list(ARRAY_REFUSALS))
def test_from_arrays_refuses(case):
    changes, message = ARRAY_REFUSALS[case]
    kwargs = dict(encoder=_pairs(6, 5, 4), decoder=_pairs(2, 4, 6))   # 6-5-(4 = 2L) / 2-4-6
    kwargs.update(changes)
    with pytest.raises(ValueError, match=message):
        importers.from_arrays(fv.VAE, **kwargs)


def test_from_arrays_accepts_the_refusal_baseline_and_refuses_non_real_dtypes():
    model = importers.from_arrays(fv.VAE, _pairs(6, 5, 4), _pairs(2, 4, 6))
    assert (model.encoder_dims, model.decoder_dims, model.latent_dim) == ((5,), (4,), 2)
    bad = _with(_pairs(6, 5, 4), 0, W=np.zeros((6, 5), complex))
    with pytest.raises(TypeError, match=r"encoder\[0\] W must hold real numbers, got dtype "
                                        r"complex128"):
        importers.from_arrays(fv.VAE, bad, _pairs(2, 4, 6))


def test_the_classmethods_import_and_the_import_round_trips_through_a_checkpoint(tmp_path):
    VAE = fv.VAE
    """VAE.from_torch / VAE.from_arrays are the importers; an imported asymmetric model saved
    and loaded gives the same parameters and the same log-likelihood."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 7), nn.Softplus())
    heads = nn.Linear(7, 3), nn.Linear(7, 3)
    dec = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 12), nn.Sigmoid())
    model = VAE.from_torch(enc, *heads, dec, dtype="float64")
    assert (model.encoder_dims, model.decoder_dims) == ((9, 7), (5,))
    same = VAE.from_arrays([(m.weight, m.bias) for m in enc if isinstance(m, nn.Linear)],
                           [(m.weight, m.bias) for m in dec if isinstance(m, nn.Linear)],
                           mu=(heads[0].weight, heads[0].bias),
                           logvar=(heads[1].weight, heads[1].bias),
                           activation=["tanh", "softplus", "relu"], layout="out_in",
                           dtype="float64")
    np.testing.assert_array_equal(same.params.flat, model.params.flat)
    model.save(tmp_path / "imported.npz")
    back = VAE.load(tmp_path / "imported.npz")
    np.testing.assert_array_equal(back.params.flat, model.params.flat)
    x = np.random.default_rng(1).random((6, 12))
    np.testing.assert_array_equal(back.log_likelihood(x, K=9, progress=False),
                                  model.log_likelihood(x, K=9, progress=False))
