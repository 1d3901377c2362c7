"""fastvae.torch: the fused ELBO loss and the reparameterization as autograd Functions, against
PyTorch's own autograd of the same formulas (values and gradients), gradcheck, and a tiny VAE
trained with either loss.

float32 checks use the three-way tolerance of tests/helpers.py: fastvae in float32 against torch's autograd in
float64, allowed twice the error of torch's own autograd in float32.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install "
                                            "'fastvae[torch]'")
import fastvae.torch as fvt  # noqa: E402
from fastvae import random as frandom  # noqa: E402

from .helpers import assert_close3  # noqa: E402

RNG = np.random.default_rng(20261208)
LOG_2PI = math.log(2 * math.pi)
SIZES = [(37, 131, 7), (1, 1, 1), (5, 4099, 3)]   # (N, D, L)


def torch_elbo_loss(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """-mean_n ELBO_n written in plain torch ops (differentiated by torch's autograd)."""
    if likelihood == "bernoulli":
        # softplus as logaddexp(0, l): torch's softplus returns l itself above l = 20
        ll = (x * dec_out - torch.logaddexp(torch.zeros_like(dec_out), dec_out)).sum(1)
    else:
        ll = -0.5 * (LOG_2PI + dec_logvar + (x - dec_out) ** 2 * torch.exp(-dec_logvar)).sum(1)
    kl = 0.5 * (mu ** 2 + torch.exp(logvar) - 1 - logvar).sum(1)
    return -(ll - beta * kl).mean()


def _inputs(n, d, l, likelihood):
    """float64 NumPy inputs: x in (0, 1) (Bernoulli) or real (Gaussian), never zeros."""
    x = RNG.uniform(0.02, 0.98, (n, d)) if likelihood == "bernoulli" else RNG.normal(0, 2, (n, d))
    arrays = [x, RNG.normal(0, 2, (n, d)), RNG.normal(0, 1, (n, l)), RNG.normal(0, 1, (n, l))]
    return arrays + ([RNG.normal(0, 0.5, d)] if likelihood == "gaussian" else [])


def _loss_and_grads(loss_fn, arrays, dtype, likelihood, beta, upstream):
    """Loss value and gradients for (x, dec_out, mu, logvar[, dec_logvar]) via .backward()."""
    tensors = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    x, dec_out, mu, logvar, *dec_logvar = tensors
    loss = loss_fn(x, dec_out, mu, logvar, likelihood=likelihood,
                   dec_logvar=dec_logvar[0] if dec_logvar else None, beta=beta)
    (upstream * loss).backward()
    return [loss.detach().numpy()] + [t.grad.numpy() for t in tensors], loss.dtype


@pytest.mark.parametrize("n,d,l", SIZES)
@pytest.mark.parametrize("likelihood,beta", [("bernoulli", 1.0), ("bernoulli", 0.37),
                                             ("gaussian", 1.0), ("gaussian", 2.5)])
def test_elbo_loss_matches_torch_autograd(n, d, l, likelihood, beta):
    arrays = _inputs(n, d, l, likelihood)
    upstream = 1.7          # an upstream gradient other than one
    ref64, _ = _loss_and_grads(torch_elbo_loss, arrays, torch.float64, likelihood, beta, upstream)
    ref32, _ = _loss_and_grads(torch_elbo_loss, arrays, torch.float32, likelihood, beta, upstream)
    out32, dt32 = _loss_and_grads(fvt.elbo_loss, arrays, torch.float32, likelihood, beta, upstream)
    out64, dt64 = _loss_and_grads(fvt.elbo_loss, arrays, torch.float64, likelihood, beta, upstream)
    assert (dt32, dt64) == (torch.float32, torch.float64)
    names = ["loss", "dx", "ddec_out", "dmu", "dlogvar", "ddec_logvar"]
    for name, o32, r32, o64, r64 in zip(names, out32, ref32, out64, ref64):
        scale = max(1.0, float(np.abs(r64).max()))
        assert_close3(o32, r32, r64, atol=1e-6 * scale, name=f"{name} float32")
        assert_close3(o64, r64, r64, atol=1e-12 * scale, name=f"{name} float64")


def test_elbo_loss_without_autograd_gives_the_same_loss():
    x, dec_out, mu, logvar = (torch.tensor(a) for a in _inputs(37, 131, 7, "bernoulli"))
    dec_out.requires_grad_()
    with_grad = fvt.elbo_loss(x, dec_out, mu, logvar, beta=0.37)
    with torch.no_grad():
        without = fvt.elbo_loss(x, dec_out, mu, logvar, beta=0.37)
    assert with_grad.grad_fn is not None and without.grad_fn is None
    np.testing.assert_allclose(without.item(), with_grad.item(), rtol=1e-13)


def test_elbo_loss_module_wraps_the_function():
    x, dec_out, mu, logvar, dec_logvar = (torch.tensor(a) for a in _inputs(9, 13, 3, "gaussian"))
    module = fvt.ELBOLoss("gaussian", beta=0.5)
    assert "gaussian" in repr(module)
    assert module(x, dec_out, mu, logvar, dec_logvar).item() == fvt.elbo_loss(
        x, dec_out, mu, logvar, likelihood="gaussian", dec_logvar=dec_logvar, beta=0.5).item()
    with pytest.raises(ValueError, match="likelihood must be one of"):
        fvt.ELBOLoss("poisson")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_loss_gradcheck(likelihood):
    tensors = [torch.tensor(a, requires_grad=True) for a in _inputs(3, 5, 2, likelihood)]

    def loss(*ts):
        return fvt.elbo_loss(*ts[:4], likelihood=likelihood,
                             dec_logvar=ts[4] if len(ts) > 4 else None, beta=0.7)

    assert torch.autograd.gradcheck(loss, tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,l", [(37, 7), (1, 1), (301, 19)])
def test_reparameterize_matches_torch_autograd(dtype, n, l):
    seed, offset = 2026, 11
    mu_np, logvar_np = RNG.normal(0, 1, (n, l)), RNG.normal(0, 1, (n, l))
    dz = torch.tensor(RNG.normal(0, 1, (n, l)), dtype=dtype)

    def run(sample, as_dtype):
        mu = torch.tensor(mu_np, dtype=as_dtype, requires_grad=True)
        logvar = torch.tensor(logvar_np, dtype=as_dtype, requires_grad=True)
        z = sample(mu, logvar)
        z.backward(dz.to(as_dtype))
        return [z.detach().numpy(), mu.grad.numpy(), logvar.grad.numpy()]

    def torch_sample(mu, logvar):
        eps = torch.tensor(frandom.normal((n, l), seed, offset, dtype=np.float64),
                           dtype=mu.dtype)
        return mu + torch.exp(logvar / 2) * eps

    out = run(lambda mu, logvar: fvt.reparameterize(mu, logvar, seed, offset), dtype)
    ref32, ref64 = run(torch_sample, torch.float32), run(torch_sample, torch.float64)
    for name, o, r32, r64 in zip(["z", "dmu", "dlogvar"], out, ref32, ref64):
        assert o.dtype == (np.float32 if dtype == torch.float32 else np.float64)
        if dtype == torch.float64:
            r32 = r64
        assert_close3(o, r32, r64, atol=(1e-6 if dtype == torch.float32 else 1e-13), name=name)


def test_reparameterize_gradcheck_and_fresh_noise_per_offset():
    mu = torch.tensor(RNG.normal(0, 1, (4, 3)), requires_grad=True)
    logvar = torch.tensor(RNG.normal(0, 1, (4, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, lv: fvt.reparameterize(m, lv, 5, 8), (mu, logvar))
    z0, z1 = fvt.reparameterize(mu, logvar, 5, 0), fvt.reparameterize(mu, logvar, 5, 12)
    assert not torch.equal(z0, z1)
    assert torch.equal(z0, fvt.reparameterize(mu, logvar, 5, 0))


def test_reparameterize_detects_logvar_modified_in_place():
    mu = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    logvar_leaf = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    logvar = logvar_leaf * 1.0
    z = fvt.reparameterize(mu, logvar, 1)
    with torch.no_grad():
        logvar.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


# ---------------------------------------------------------------------------------------------
# end to end: a tiny torch VAE trained with either loss
# ---------------------------------------------------------------------------------------------
class TinyVAE(torch.nn.Module):
    def __init__(self, d, h, l):
        super().__init__()
        self.enc = torch.nn.Linear(d, h)
        self.enc_out = torch.nn.Linear(h, 2 * l)
        self.dec = torch.nn.Linear(l, h)
        self.dec_out = torch.nn.Linear(h, d)

    def encode(self, x):
        return self.enc_out(torch.tanh(self.enc(x))).chunk(2, dim=1)

    def decode(self, z):
        return self.dec_out(torch.tanh(self.dec(z)))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_training_with_fastvae_loss_matches_pure_torch(dtype, rtol):
    n, d, h, l, steps, seed = 37, 29, 13, 5, 6, 99
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = torch.tensor(RNG.uniform(0.02, 0.98, (n, d)), dtype=dtype)
    torch.manual_seed(0)
    start = TinyVAE(d, h, l).to(dtype)

    def train(use_fastvae):
        model = TinyVAE(d, h, l).to(dtype)
        model.load_state_dict(start.state_dict())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for step in range(steps):
            mu, logvar = model.encode(x)
            offset = step * n * l
            if use_fastvae:
                z = fvt.reparameterize(mu, logvar, seed, offset)
                loss = fvt.elbo_loss(x, model.decode(z), mu, logvar, beta=0.8)
            else:
                eps = torch.tensor(frandom.normal((n, l), seed, offset, dtype=np_dtype))
                z = mu + torch.exp(logvar / 2) * eps
                loss = torch_elbo_loss(x, model.decode(z), mu, logvar, beta=0.8)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, model

    fast_losses, fast = train(True)
    ref_losses, ref = train(False)
    assert fast_losses[-1] < fast_losses[0]             # it learns
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=rtol)
    moved = 0.0
    for (name, p), q, p0 in zip(fast.named_parameters(), ref.parameters(), start.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol,
                                   atol=rtol * 1e-2, err_msg=name)
        moved = max(moved, float((p - p0).abs().max().detach()))
    assert moved > 1e-2                                  # the parameters did change
