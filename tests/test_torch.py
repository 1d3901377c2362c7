"""fastvae.torch: the fused ELBO and IWAE losses and the reparameterization, against PyTorch's
own autograd of the same formulas (values and gradients, every reduction), gradcheck and
gradgradcheck, gradient penalties (double backward), torch.func (grad, vjp, vmap), opcheck of the
custom ops, bfloat16/float16 and autocast, the stateful sampler, threads, argument errors, and a
tiny VAE trained with either loss. torch.compile: tests/test_torch_compile.py.

float32 checks use the three-way tolerance of tests/helpers.py: fastvae in float32 against
torch's autograd in float64, allowed twice the error of torch's own autograd in float32.
"""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install "
                                            "'fastvae[torch]'")
import fastvae.torch as fvt  # noqa: E402
from fastvae import random as frandom  # noqa: E402

from .helpers import assert_close3  # noqa: E402

# torch.func's first use scripts a helper with the deprecated torch.jit.script (torch's own code)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script")

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


# ---------------------------------------------------------------------------------------------
# reductions, argument types and errors
# ---------------------------------------------------------------------------------------------
def torch_elbo_rows(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """-ELBO_n (N,) in plain torch ops."""
    if likelihood == "bernoulli":
        ll = (x * dec_out - torch.logaddexp(torch.zeros_like(dec_out), dec_out)).sum(1)
    else:
        ll = -0.5 * (LOG_2PI + dec_logvar + (x - dec_out) ** 2 * torch.exp(-dec_logvar)).sum(1)
    return -(ll - beta * 0.5 * (mu ** 2 + torch.exp(logvar) - 1 - logvar).sum(1))


def _reduced(rows, reduction):
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


def _reduction_run(loss_fn, arrays, dtype, likelihood, reduction, upstream):
    tensors = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    x, dec_out, mu, logvar, *dec_logvar = tensors
    loss = loss_fn(x, dec_out, mu, logvar, likelihood, dec_logvar[0] if dec_logvar else None,
                   0.6, reduction)
    loss.backward(torch.as_tensor(upstream, dtype=dtype))
    return [loss.detach().numpy()] + [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n,d,l", [(37, 131, 7), (1, 3, 1)])
def test_elbo_loss_reductions_match_torch_autograd(reduction, likelihood, n, d, l):
    arrays = _inputs(n, d, l, likelihood)
    upstream = RNG.normal(0, 1, n) if reduction == "none" else 1.3

    def ref(x, dec_out, mu, logvar, lik, dec_logvar, beta, red):
        return _reduced(torch_elbo_rows(x, dec_out, mu, logvar, lik, dec_logvar, beta), red)

    def fast(x, dec_out, mu, logvar, lik, dec_logvar, beta, red):
        return fvt.elbo_loss(x, dec_out, mu, logvar, likelihood=lik, dec_logvar=dec_logvar,
                             beta=beta, reduction=red)

    r64, r32 = (_reduction_run(ref, arrays, dt, likelihood, reduction, upstream)
                for dt in (torch.float64, torch.float32))
    o64, o32 = (_reduction_run(fast, arrays, dt, likelihood, reduction, upstream)
                for dt in (torch.float64, torch.float32))
    assert o32[0].shape == ((n,) if reduction == "none" else ())
    names = ["loss", "dx", "ddec_out", "dmu", "dlogvar", "ddec_logvar"]
    for i, name in enumerate(names[:len(o32)]):
        scale = max(1.0, float(np.abs(r64[i]).max()))
        assert_close3(o32[i], r32[i], r64[i], atol=1e-6 * scale, name=f"{name} float32")
        assert_close3(o64[i], r64[i], r64[i], atol=1e-12 * scale, name=f"{name} float64")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_loss_without_autograd_matches_with_autograd(reduction):
    x, dec_out, mu, logvar, dec_logvar = (torch.tensor(a) for a in _inputs(9, 13, 3, "gaussian"))
    kwargs = dict(likelihood="gaussian", dec_logvar=dec_logvar, beta=0.4, reduction=reduction)
    with torch.no_grad():
        without = fvt.elbo_loss(x, dec_out, mu, logvar, **kwargs)
    with_grad = fvt.elbo_loss(x, dec_out.requires_grad_(), mu, logvar, **kwargs)
    np.testing.assert_allclose(without.numpy(), with_grad.detach().numpy(), rtol=1e-13)
    ref = _reduced(torch_elbo_rows(x, dec_out, mu, logvar, "gaussian", dec_logvar, 0.4),
                   reduction)
    np.testing.assert_allclose(without.numpy(), ref.detach().numpy(), rtol=1e-12)


def test_elbo_loss_module_takes_the_reduction():
    x, dec_out, mu, logvar = (torch.tensor(a) for a in _inputs(4, 5, 2, "bernoulli"))
    module = fvt.ELBOLoss(reduction="sum")
    assert "'sum'" in repr(module)
    assert module(x, dec_out, mu, logvar).item() == pytest.approx(
        fvt.elbo_loss(x, dec_out, mu, logvar).item() * 4, rel=1e-13)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fvt.ELBOLoss(reduction="batchmean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        fvt.elbo_loss(x, dec_out, mu, logvar, reduction="avg")


def test_zero_dim_tensor_beta_seed_and_offset_work_like_numbers():
    x, dec_out, mu, logvar = (torch.tensor(a) for a in _inputs(6, 7, 3, "bernoulli"))
    assert fvt.elbo_loss(x, dec_out, mu, logvar, beta=torch.tensor(0.3, dtype=torch.float64)
                         ).item() == fvt.elbo_loss(x, dec_out, mu, logvar, beta=0.3).item()
    beta32 = torch.tensor(0.3)             # float32: its value is not exactly 0.3
    assert fvt.elbo_loss(x, dec_out, mu, logvar, beta=beta32).item() == \
        fvt.elbo_loss(x, dec_out, mu, logvar, beta=float(beta32)).item()
    assert torch.equal(fvt.reparameterize(mu, logvar, torch.tensor(9), torch.tensor(21)),
                       fvt.reparameterize(mu, logvar, 9, 21))
    assert torch.equal(fvt.reparameterize(mu, logvar, np.uint64(2 ** 64 - 1), np.int64(4)),
                       fvt.reparameterize(mu, logvar, 2 ** 64 - 1, 4))


def test_errors_name_the_type_the_caller_passed():
    x, dec_out, mu, logvar = (torch.tensor(a) for a in _inputs(3, 4, 2, "bernoulli"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        fvt.elbo_loss(x.numpy(), dec_out, mu, logvar)
    with pytest.raises(TypeError, match=r"beta must be a real number or a 0-d real tensor, got a "
                                        r"Tensor of shape \(2,\)"):
        fvt.elbo_loss(x, dec_out, mu, logvar, beta=torch.ones(2))
    with pytest.raises(TypeError, match="beta must be a real number, got ndarray"):
        fvt.elbo_loss(x, dec_out, mu, logvar, beta=np.ones(1))
    with pytest.raises(TypeError, match="beta must be a real number, got str"):
        fvt.elbo_loss(x, dec_out, mu, logvar, beta="1")
    with pytest.raises(ValueError, match="beta"):
        fvt.elbo_loss(x, dec_out, mu, logvar, beta=-1.0)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        fvt.reparameterize(mu, logvar, 1.5)
    with pytest.raises(TypeError, match="seed must be an int or a 0-d integer tensor, got a "
                                        "Tensor of shape"):
        fvt.reparameterize(mu, logvar, torch.tensor(1.0))
    with pytest.raises(TypeError, match="offset must be an int, got list"):
        fvt.reparameterize(mu, logvar, 1, [0])
    with pytest.raises(ValueError, match="seed must be in"):
        fvt.reparameterize(mu, logvar, -1)
    with pytest.raises(ValueError, match="offset must be in"):
        fvt.reparameterize(mu, logvar, 1, 2 ** 62 - 3)
    with pytest.raises(TypeError, match="mu must be a torch.Tensor, got ndarray"):
        fvt.reparameterize(mu.numpy(), logvar, 1)
    with pytest.raises(TypeError, match="logvar must be a floating tensor"):
        fvt.reparameterize(mu, logvar.long(), 1)
    with pytest.raises(ValueError, match="same shape"):
        fvt.reparameterize(mu, logvar[:, :1], 1)
    with pytest.raises(ValueError, match="dec_out must be 3-D"):
        fvt.iwae_loss(x, dec_out, mu, logvar, torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="likelihood must be one of"):
        fvt.elbo_loss(x, dec_out, mu, logvar, likelihood="poisson")


# ---------------------------------------------------------------------------------------------
# iwae_loss against torch's autograd of the formula (fastvae/_reference.py::log_weight_forward)
# ---------------------------------------------------------------------------------------------
def torch_iwae_rows(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None):
    """-(logsumexp_k log w_nk - log K) (N,)."""
    logw = torch_log_weights(x, dec_out, mu, logvar, eps, likelihood, dec_logvar)
    return -(torch.logsumexp(logw, dim=1) - math.log(dec_out.shape[1]))


def torch_log_weights(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None):
    """log w = log p(x|z) + log N(z; 0, I) - log q(z|x) (N, K), z = mu + exp(logvar/2) eps."""
    xk = x[:, None, :]
    if likelihood == "bernoulli":
        ll = (xk * dec_out - torch.logaddexp(torch.zeros_like(dec_out), dec_out)).sum(2)
    else:
        ll = -0.5 * (LOG_2PI + dec_logvar + (xk - dec_out) ** 2 * torch.exp(-dec_logvar)).sum(2)
    z = mu[:, None, :] + torch.exp(logvar / 2)[:, None, :] * eps
    log_pz = -0.5 * (z * z + LOG_2PI).sum(2)
    log_qz = -0.5 * (LOG_2PI + logvar[:, None, :] + eps * eps).sum(2)
    return ll + log_pz - log_qz


def _iwae_inputs(n, k, d, l, likelihood):
    """float64 arrays, extreme-ish but never zero: logits up to +-30, logvar in [-6, 3]."""
    x = RNG.uniform(0.01, 0.99, (n, d)) if likelihood == "bernoulli" else RNG.normal(0, 3, (n, d))
    dec_out = RNG.normal(0, 10, (n, k, d)).clip(-30, 30)
    mu, logvar = RNG.normal(0, 2, (n, l)), RNG.uniform(-6, 3, (n, l))
    eps = RNG.normal(0, 1.5, (n, k, l))
    arrays = [x, dec_out, mu, logvar, eps]
    return arrays + ([RNG.uniform(-3, 2, d)] if likelihood == "gaussian" else [])


def _iwae_run(loss_fn, arrays, dtype, likelihood, reduction, upstream):
    tensors = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    x, dec_out, mu, logvar, eps, *dec_logvar = tensors
    rows_or_loss = loss_fn(x, dec_out, mu, logvar, eps, likelihood,
                           dec_logvar[0] if dec_logvar else None, reduction)
    rows_or_loss.backward(torch.as_tensor(upstream, dtype=dtype))
    return [rows_or_loss.detach().numpy()] + [t.grad.numpy() for t in tensors]


def _torch_iwae(x, dec_out, mu, logvar, eps, likelihood, dec_logvar, reduction):
    return _reduced(torch_iwae_rows(x, dec_out, mu, logvar, eps, likelihood, dec_logvar),
                    reduction)


def _fast_iwae(x, dec_out, mu, logvar, eps, likelihood, dec_logvar, reduction):
    return fvt.iwae_loss(x, dec_out, mu, logvar, eps, likelihood=likelihood,
                         dec_logvar=dec_logvar, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n,k,d,l", [(3, 5, 131, 7), (1, 1, 2, 1), (4, 33, 17, 3)])
def test_iwae_loss_matches_torch_autograd(reduction, likelihood, n, k, d, l):
    arrays = _iwae_inputs(n, k, d, l, likelihood)
    upstream = RNG.normal(0, 1, n) if reduction == "none" else 0.7
    r64, r32 = (_iwae_run(_torch_iwae, arrays, dt, likelihood, reduction, upstream)
                for dt in (torch.float64, torch.float32))
    o64, o32 = (_iwae_run(_fast_iwae, arrays, dt, likelihood, reduction, upstream)
                for dt in (torch.float64, torch.float32))
    assert o32[0].dtype == np.float32 and o64[0].dtype == np.float64
    # float32 log-weights carry |logw| 2^-24 each (the kernel rounds them once before the
    # softmax; here |logw| reaches ~1e3), a relative error of every weight and so of every
    # gradient: allowed on top of the three-way tolerance
    logw = torch_log_weights(*(torch.tensor(a) for a in arrays[:5]), likelihood,
                             torch.tensor(arrays[5]) if len(arrays) > 5 else None)
    weight_rtol = 2.0 ** -24 * float(logw.abs().max())
    names = ["loss", "dx", "ddec_out", "dmu", "dlogvar", "deps", "ddec_logvar"]
    for i, name in enumerate(names[:len(o32)]):
        scale = max(1.0, float(np.abs(r64[i]).max()))
        atol = (2e-6 + (2 * weight_rtol if i else 0.0)) * scale
        assert_close3(o32[i], r32[i], r64[i], atol=atol, name=f"{name} float32")
        assert_close3(o64[i], r64[i], r64[i], atol=1e-11 * scale, name=f"{name} float64")


def test_iwae_loss_without_autograd_and_k1_is_the_elbo_sample():
    x, dec_out, mu, logvar, eps = (torch.tensor(a) for a in _iwae_inputs(5, 1, 9, 2,
                                                                          "bernoulli"))
    with torch.no_grad():
        rows = fvt.iwae_loss(x, dec_out, mu, logvar, eps, reduction="none")
        mean = fvt.iwae_loss(x, dec_out, mu, logvar, eps)
    ref = torch_iwae_rows(x, dec_out, mu, logvar, eps)
    np.testing.assert_allclose(rows.numpy(), ref.numpy(), rtol=1e-12)
    np.testing.assert_allclose(mean.item(), ref.mean().item(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# double backward: gradient penalties through the losses are exact, never silently wrong
# ---------------------------------------------------------------------------------------------
def _penalty_grads(sample_and_loss, seed=3):
    """A tiny encoder/decoder; loss, then ||dloss/d dec.weight||^2 backpropagated to every
    parameter (the WGAN-GP style penalty of issue 13). -> {name: grad}."""
    torch.manual_seed(seed)
    enc, dec = torch.nn.Linear(6, 4).double(), torch.nn.Linear(2, 6).double()
    x = torch.tensor(np.random.default_rng(seed).uniform(0.05, 0.95, (5, 6)))
    mu, logvar = enc(x).chunk(2, dim=1)
    loss = sample_and_loss(x, mu, logvar, dec)
    (gw,) = torch.autograd.grad(loss, dec.weight, create_graph=True)
    (loss + gw.pow(2).sum()).backward()
    return {f"{m}.{n}": p.grad for m, mod in (("enc", enc), ("dec", dec))
            for n, p in mod.named_parameters()}


def _eps(shape, seed=11, offset=0):
    return torch.tensor(frandom.normal(shape, seed, offset, dtype=np.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_penalty_through_elbo_and_reparameterize_matches_torch(reduction):
    def fast(x, mu, logvar, dec):
        z = fvt.reparameterize(mu, logvar, 11)
        return fvt.elbo_loss(x, dec(z), mu, logvar, beta=0.5, reduction=reduction).sum()

    def ref(x, mu, logvar, dec):
        z = mu + torch.exp(logvar / 2) * _eps(mu.shape)
        return _reduced(torch_elbo_rows(x, dec(z), mu, logvar, beta=0.5), reduction).sum()

    got, want = _penalty_grads(fast), _penalty_grads(ref)
    for name in want:
        assert got[name] is not None, f"{name}: no gradient"
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def test_gradient_penalty_through_gaussian_elbo_and_iwae_matches_torch():
    dec_logvar = torch.tensor(RNG.uniform(-1, 1, 6), requires_grad=True)

    def fast(x, mu, logvar, dec):
        z = mu[:, None, :] + torch.exp(logvar / 2)[:, None, :] * _eps((5, 3, 2))
        iw = fvt.iwae_loss(x, dec(z), mu, logvar, _eps((5, 3, 2)))
        e = fvt.elbo_loss(x, dec(z[:, 0]), mu, logvar, "gaussian", dec_logvar, reduction="sum")
        return iw + e

    def ref(x, mu, logvar, dec):
        z = mu[:, None, :] + torch.exp(logvar / 2)[:, None, :] * _eps((5, 3, 2))
        iw = torch_iwae_rows(x, dec(z), mu, logvar, _eps((5, 3, 2))).mean()
        return iw + torch_elbo_rows(x, dec(z[:, 0]), mu, logvar, "gaussian", dec_logvar).sum()

    got, want = _penalty_grads(fast), _penalty_grads(ref)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)


def _hvp(f, arrays, v):
    """Hessian-vector products by double backward: d/dx <grad f(x), v>, every input."""
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    grads = torch.autograd.grad(f(*leaves), leaves, create_graph=True)
    return torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v)), leaves,
                               allow_unused=True)


@pytest.mark.parametrize("op,reduction", [("reparameterize", None)] + [
    (op, r) for op in ("elbo_loss", "iwae_loss") for r in ("mean", "sum", "none")])
def test_second_derivatives_match_torch(op, reduction):
    """Hessian-vector products of each op (in a nonlinear scalar function) against torch's
    autograd of the formula: the double-backward path differentiates exactly."""
    weights = torch.tensor(RNG.normal(0, 1, 4))
    if op == "reparameterize":
        arrays = [RNG.normal(0, 1, (4, 3)) for _ in range(2)]
        eps = _eps((4, 3), seed=8, offset=5)
        fast = lambda m, lv: fvt.reparameterize(m, lv, 8, 5)                     # noqa: E731
        ref = lambda m, lv: m + torch.exp(lv / 2) * eps                          # noqa: E731
    elif op == "elbo_loss":
        arrays = _inputs(4, 5, 3, "gaussian")
        fast = lambda *t: fvt.elbo_loss(*t[:4], "gaussian", t[4], 0.6, reduction)  # noqa: E731
        ref = lambda *t: _reduced(torch_elbo_rows(*t[:4], "gaussian", t[4], 0.6),  # noqa: E731
                                  reduction)
    else:
        arrays = _iwae_inputs(4, 3, 5, 2, "gaussian")
        fast = lambda *t: fvt.iwae_loss(*t[:5], "gaussian", t[5], reduction)     # noqa: E731
        ref = lambda *t: _reduced(torch_iwae_rows(*t[:5], "gaussian", t[5]),    # noqa: E731
                                  reduction)

    def scalar(fn):
        def f(*ts):
            out = fn(*ts)
            out = out if out.ndim < 2 else (out ** 2).sum(1)     # nonlinear in z
            return (out * (weights[:out.shape[0]] if out.ndim else 1)).sum() ** 2 / 2
        return f

    v = [torch.tensor(RNG.normal(0, 1, np.shape(a))) for a in arrays]
    for name, got, want in zip(range(len(arrays)), _hvp(scalar(fast), arrays, v),
                               _hvp(scalar(ref), arrays, v)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=f"input {name}")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradgradcheck_of_every_op(reduction):
    elbo_in = [torch.tensor(a, requires_grad=True) for a in _inputs(3, 4, 2, "gaussian")]
    iwae_in = [torch.tensor(a, requires_grad=True) for a in _iwae_inputs(2, 3, 4, 2,
                                                                         "gaussian")]
    for t in iwae_in[1:2]:
        t.data.clamp_(-3, 3)
    assert torch.autograd.gradgradcheck(
        lambda *ts: fvt.elbo_loss(*ts[:4], "gaussian", ts[4], 0.7, reduction), elbo_in)
    assert torch.autograd.gradgradcheck(
        lambda *ts: fvt.iwae_loss(*ts[:5], "gaussian", ts[5], reduction), iwae_in)
    assert torch.autograd.gradgradcheck(
        lambda m, lv: fvt.reparameterize(m, lv, 5, 3), elbo_in[2:4])


# ---------------------------------------------------------------------------------------------
# torch.func: grad and vmap over the custom ops
# ---------------------------------------------------------------------------------------------
def _vae_loss(loss_kind):
    """f(dec_out, mu, logvar) of a fixed x: a sample, then a loss (elbo or iwae, K = 1)."""
    x = torch.tensor(RNG.uniform(0.05, 0.95, (4, 6)))
    eps = _eps((4, 1, 2), seed=2)

    def f(dec_out, mu, logvar):
        z = fvt.reparameterize(mu, logvar, 2, 0)
        logits = dec_out + z.sum(1, keepdim=True)
        if loss_kind == "elbo":
            return fvt.elbo_loss(x, logits, mu, logvar, beta=0.8)
        return fvt.iwae_loss(x, logits[:, None, :], mu, logvar, eps)
    return f


@pytest.mark.parametrize("loss_kind", ["elbo", "iwae"])
def test_torch_func_grad_matches_autograd(loss_kind):
    f = _vae_loss(loss_kind)
    args = [torch.tensor(RNG.normal(0, 1, s)) for s in ((4, 6), (4, 2), (4, 2))]
    leaves = [a.clone().requires_grad_() for a in args]
    want = torch.autograd.grad(f(*leaves), leaves)
    got = torch.func.grad(f, argnums=(0, 1, 2))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-14)
    # and a second order: a Hessian-vector product (reverse over reverse) against autograd's
    v = [torch.tensor(RNG.normal(0, 1, a.shape)) for a in args]
    _, pullback = torch.func.vjp(torch.func.grad(f, argnums=(0, 1, 2)), *args)
    hvp = pullback(tuple(v))
    grads = torch.autograd.grad(f(*leaves), leaves, create_graph=True)
    want_hvp = torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(grads, v)), leaves)
    for g, w in zip(hvp, want_hvp):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError, match="forward mode"):   # refused, not zero
        torch.func.jvp(f, tuple(args), tuple(v))
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(args[1], v[1])
        with pytest.raises(NotImplementedError, match="forward mode"):
            f(args[0], dual, args[2])


def test_vmap_over_the_losses_and_per_sample_gradients():
    x, dec_out, mu, logvar, dec_logvar = (torch.tensor(a) for a in _inputs(6, 5, 3, "gaussian"))
    batched = [t.reshape(2, 3, *t.shape[1:]) for t in (x, dec_out, mu, logvar)]

    def loss(x, dec_out, mu, logvar):
        return fvt.elbo_loss(x, dec_out, mu, logvar, "gaussian", dec_logvar, reduction="sum")

    got = torch.func.vmap(loss)(*batched)
    want = torch.stack([loss(*(b[i] for b in batched)) for i in range(2)])
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13)

    def one_row(dec_row, mu_row, logvar_row, x_row):       # per-sample gradients
        z = fvt.reparameterize(mu_row[None], logvar_row[None], 4)
        return fvt.elbo_loss(x_row[None], dec_row[None] + z.mean(), mu_row[None],
                             logvar_row[None], "gaussian", dec_logvar)

    per_sample = torch.func.vmap(torch.func.grad(one_row, argnums=(0, 1, 2)))(dec_out, mu,
                                                                              logvar, x)
    for i in range(6):
        leaves = [t[i].clone().requires_grad_() for t in (dec_out, mu, logvar)]
        want_i = torch.autograd.grad(one_row(*leaves, x[i]), leaves)
        for g, w in zip(per_sample, want_i):
            np.testing.assert_allclose(g[i].numpy(), w.numpy(), rtol=1e-12, atol=1e-14)


def test_the_custom_ops_pass_opcheck():
    x, dec_out, mu, logvar, dec_logvar = (torch.tensor(a) for a in _inputs(3, 4, 2, "gaussian"))
    xi, dec_k, _, _, eps = (torch.tensor(a) for a in _iwae_inputs(3, 2, 4, 2, "bernoulli"))
    seed, offset = torch.tensor(3), torch.tensor(8)
    rg = [t.clone().requires_grad_() for t in (dec_out, mu, logvar, dec_logvar)]
    cases = [
        (torch.ops.fastvae.reparam, (rg[1], rg[2], seed, offset)),
        (torch.ops.fastvae.reparam_dlogvar, (mu, logvar, torch.stack([seed, offset]))),
        (torch.ops.fastvae.normal_like, (mu, torch.stack([seed, offset]))),
        (torch.ops.fastvae.elbo_rows, (x, *rg, "gaussian", 0.5)),
        (torch.ops.fastvae.elbo_fused, (x, *rg, "gaussian", 0.5, True)),
        (torch.ops.fastvae.elbo_rows_backward, (x[:, 0], x, dec_out, mu, logvar, dec_logvar,
                                                "gaussian", 0.5)),
        (torch.ops.fastvae.iwae_rows, (xi, dec_k.requires_grad_(), rg[1], rg[2], eps, None,
                                       "bernoulli")),
        (torch.ops.fastvae.iwae_fused, (xi, dec_k, rg[1], rg[2], eps, None, "bernoulli",
                                        False)),
        (torch.ops.fastvae.iwae_rows_backward, (xi[:, 0], xi, dec_k.detach(), mu, logvar, eps,
                                                None, "bernoulli")),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args, test_utils=(
            "test_schema", "test_autograd_registration", "test_faketensor"))
        assert set(result.values()) == {"SUCCESS"}, (op, result)


# ---------------------------------------------------------------------------------------------
# dtypes: bfloat16 and float16 in and out; autocast
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["reparameterize", "elbo_loss", "iwae_loss"])
def test_low_precision_inputs_compute_in_float32_and_keep_their_dtype(dtype, op):
    """Each op on bfloat16/float16 inputs == the op on the same values in float32, rounded to
    the input dtype once; every gradient has its input's dtype."""
    arrays = {"reparameterize": lambda: [RNG.normal(0, 1, (8, 3)) for _ in range(2)],
              "elbo_loss": lambda: _inputs(8, 11, 3, "bernoulli"),
              "iwae_loss": lambda: _iwae_inputs(3, 4, 11, 2, "bernoulli")}[op]()
    fn = {"reparameterize": lambda mu, lv: fvt.reparameterize(mu, lv, 1, 5),
          "elbo_loss": lambda *ts: fvt.elbo_loss(*ts, reduction="none"),
          "iwae_loss": lambda *ts: fvt.iwae_loss(*ts, reduction="sum")}[op]
    low = [torch.tensor(a).to(dtype).requires_grad_() for a in arrays]
    wide = [t.detach().float().requires_grad_() for t in low]    # the same values, float32
    upstream = torch.tensor(RNG.normal(0, 1, fn(*wide).shape))
    out_low, out_wide = fn(*low), fn(*wide)
    assert out_low.dtype == dtype and out_wide.dtype == torch.float32
    assert torch.equal(out_low, out_wide.to(dtype))
    out_low.backward(upstream.to(dtype))
    out_wide.backward(upstream.to(dtype).float())
    for t, w in zip(low, wide):
        assert t.grad.dtype == dtype and torch.equal(t.grad, w.grad.to(dtype))
    if op == "elbo_loss":        # float32 data with low-precision decoder outputs: float32
        assert fn(low[0].float(), *low[1:]).dtype == torch.float32


def test_autocast_bfloat16_training_step():
    torch.manual_seed(1)
    n, d, h, l = 16, 12, 8, 3
    model = TinyVAE(d, h, l)
    x = torch.tensor(RNG.uniform(0, 1, (n, d)), dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sample = fvt.Reparameterize(seed=4)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mu, logvar = model.encode(x)
            assert mu.dtype == torch.bfloat16
            z = sample(mu, logvar)
            loss = fvt.elbo_loss(x, model.decode(z), mu, logvar)
        assert z.dtype == torch.bfloat16 and loss.dtype == torch.float32
        opt.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


# ---------------------------------------------------------------------------------------------
# the stateful sampler
# ---------------------------------------------------------------------------------------------
def _mu_logvar(n, l=3, dtype=torch.float64):
    return (torch.tensor(RNG.normal(0, 1, (n, l)), dtype=dtype, requires_grad=True),
            torch.tensor(RNG.normal(0, 1, (n, l)), dtype=dtype, requires_grad=True))


def test_reparameterize_module_advances_its_offset_fresh_noise_every_call():
    sample = fvt.Reparameterize(seed=12, offset=5)
    sizes = [4, 4, 3, 4, 4, 3]        # two epochs of 11 rows with a partial last batch
    noises, offset = [], 5
    for n in sizes:
        mu, logvar = _mu_logvar(n)
        z = sample(mu, logvar)
        eps = ((z - mu) / torch.exp(logvar / 2)).detach().numpy()
        np.testing.assert_allclose(eps, frandom.normal((n, 3), 12, offset, dtype=np.float64),
                                   rtol=1e-10, atol=1e-12)
        offset += n * 3
        assert int(sample.offset) == offset
        noises.append(eps)
    flat = np.concatenate([e.ravel() for e in noises])
    assert len(np.unique(flat)) == flat.size       # no draw reused: epochs and partial batches


def test_reparameterize_module_gradients_and_state_dict_round_trip():
    sample = fvt.Reparameterize(seed=2 ** 63 - 5)
    mu, logvar = _mu_logvar(6)
    sample(mu, logvar).sum().backward()
    np.testing.assert_allclose(mu.grad.numpy(), np.ones((6, 3)))
    state = sample.state_dict()
    assert set(state) == {"seed", "offset"} and int(state["offset"]) == 18
    resumed = fvt.Reparameterize(seed=0)
    resumed.load_state_dict(state)
    mu2, logvar2 = _mu_logvar(6)
    assert torch.equal(resumed(mu2, logvar2), sample(mu2, logvar2))
    assert int(resumed.offset) == int(sample.offset) == 36
    assert "seed=9223372036854775803, offset=36" in repr(resumed)
    with pytest.raises(ValueError, match="seed must be in"):
        fvt.Reparameterize(seed=2 ** 63)


def test_reparameterize_module_seed_follows_torch_manual_seed():
    torch.manual_seed(123)
    a = fvt.Reparameterize()
    torch.manual_seed(123)
    b = fvt.Reparameterize()
    c = fvt.Reparameterize()
    assert int(a.seed) == int(b.seed) != int(c.seed)
    mu, logvar = _mu_logvar(5)
    assert torch.equal(a(mu, logvar), b(mu, logvar))
    assert not torch.equal(a(mu, logvar), c(mu, logvar))


def test_reparameterize_module_eval_mode():
    sample = fvt.Reparameterize(seed=1).eval()
    mu, logvar = _mu_logvar(4)
    assert sample(mu, logvar) is mu and int(sample.offset) == 0
    keep = fvt.Reparameterize(seed=1, sample_in_eval=True).eval()
    z = keep(mu, logvar)
    assert int(keep.offset) == 12 and torch.equal(z, fvt.reparameterize(mu, logvar, 1, 0))


# ---------------------------------------------------------------------------------------------
# threads, Bernoulli data checks
# ---------------------------------------------------------------------------------------------
def test_fastvae_follows_torch_set_num_threads_unless_set_itself():
    import fastvae
    before = torch.get_num_threads()
    mu, logvar = _mu_logvar(3)
    try:
        fastvae.set_num_threads(None)
        torch.set_num_threads(1)
        fvt.reparameterize(mu, logvar, 1)
        assert fastvae.num_threads() == 1
        torch.set_num_threads(3)
        fvt.elbo_loss(torch.rand(3, 2, dtype=torch.float64), mu[:, :2], mu, logvar)
        assert fastvae.num_threads() == 3
        fastvae.set_num_threads(2)                   # the user's own choice wins from now on
        torch.set_num_threads(1)
        fvt.reparameterize(mu, logvar, 1)
        assert fastvae.num_threads() == 2
        torch.set_num_threads(3)
        fastvae.set_num_threads(3)                   # even when it equals torch's count
        torch.set_num_threads(1)
        fvt.reparameterize(mu, logvar, 1)
        assert fastvae.num_threads() == 3
    finally:
        torch.set_num_threads(before)
        fastvae.set_num_threads(None)
        fvt.reparameterize(mu, logvar, 1)


def _bernoulli_range_is_checked():
    try:
        fvt.ops.elbo_forward(np.full((1, 1), 2.0), np.zeros((1, 1)), np.zeros((1, 1)),
                             np.zeros((1, 1)))
    except ValueError:
        return True
    return False


def test_bernoulli_x_outside_unit_interval_or_swapped_arguments_raise():
    x, dec_out, mu, logvar = (torch.tensor(a) for a in _inputs(5, 6, 2, "bernoulli"))
    if not _bernoulli_range_is_checked():
        pytest.xfail("the kernel's check of Bernoulli x in [0, 1] has not landed in fastvae.ops")
    dec_out = dec_out * 3                                # logits well outside [0, 1]
    for fn in (lambda: fvt.elbo_loss(dec_out, x, mu, logvar),            # swapped
               lambda: fvt.elbo_loss(dec_out.requires_grad_(), x, mu, logvar),
               lambda: fvt.elbo_loss(dec_out, x, mu, logvar, reduction="none"),
               lambda: fvt.iwae_loss(dec_out, x[:, None, :], mu, logvar, mu[:, None, :])):
        with pytest.raises(ValueError, match=r"x has .* outside \[0, 1\]"):
            fn()
