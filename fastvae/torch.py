"""fastvae's fused ELBO and reparameterization as differentiable PyTorch ops.

``torch.autograd.Function``s whose backward is fastvae's explicit backward kernel, so a PyTorch
VAE swaps them in for its loss and sampling. Tensors cross to the kernels through DLPack without
copies (fastvae/_interop.py); CPU tensors run the Numba kernels, CUDA tensors the CUDA kernels.

    import torch
    import fastvae.torch as fvt

    enc, dec = torch.nn.Linear(784, 2 * 20), torch.nn.Linear(20, 784)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    for step, x in enumerate(batches):                      # x (N, 784) in [0, 1]
        mu, logvar = enc(x).chunk(2, dim=1)                 # (N, 20) each
        z = fvt.reparameterize(mu, logvar, seed=0, offset=step * mu.numel())
        loss = fvt.elbo_loss(x, dec(z), mu, logvar)         # -mean_n ELBO_n, a 0-d tensor
        opt.zero_grad()
        loss.backward()
        opt.step()

- ``elbo_loss`` runs ``fastvae.ops.elbo_loss_and_grads``: one fused pass computes the loss and
  every gradient; the backward only scales the saved gradients by the upstream gradient. Without
  autograd (``torch.no_grad()``, or no input requiring grad) it runs the forward kernel alone.
  The gradient of ``x`` is given too when ``x`` requires grad (``-dec_out / N`` for Bernoulli,
  ``-ddec_out`` for Gaussian).
- ``reparameterize`` draws the noise inside the kernel from fastvae's Philox stream
  (``eps = fastvae.random.normal((N, L), seed, offset)``) and the backward regenerates it, so the
  noise is never stored. Advance ``offset`` (or change ``seed``) between steps for fresh noise.
- Both are once differentiable (no double backward). Saved inputs modified in place before the
  backward are detected (PyTorch's version counter) and raise.
"""
import torch

from . import ops

__all__ = ["reparameterize", "elbo_loss", "ELBOLoss"]


def reparameterize(mu, logvar, seed, offset=0):
    """``z = mu + exp(logvar / 2) * eps`` with ``eps = fastvae.random.normal((N, L), seed,
    offset)`` generated in the kernel.

    mu, logvar (N, L) tensors -> z (N, L), differentiable in mu and logvar. seed in [0, 2^64),
    offset >= 0 (Python ints).
    """
    return _Reparameterize.apply(mu, logvar, seed, offset)


class _Reparameterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, seed, offset):
        z, cache = ops.reparam_forward(mu.detach(), logvar.detach(), seed=seed, offset=offset)
        ctx.cache = cache                  # holds a view of logvar and (seed, offset): no noise
        ctx.save_for_backward(logvar)      # only for the in-place-modification check
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz):
        ctx.saved_tensors                  # raises if logvar was modified in place since
        dmu, dlogvar = ops.reparam_backward(dz.detach(), ctx.cache)
        return dmu, dlogvar, None, None


def elbo_loss(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0):
    """``loss = -mean_n ELBO_n`` with ``ELBO_n = log p(x_n | dec_out_n) - beta KL(q(z | x_n) ||
    N(0, I))``, a 0-d tensor of the computing dtype (float64 if any input is, else float32).

    x, dec_out (N, D) (dec_out: logits for "bernoulli", means for "gaussian"); mu, logvar (N, L);
    dec_logvar (D,) for "gaussian" only (the decoder's per-dimension log-variance, learnable);
    beta >= 0 a Python number. Gradients flow to dec_out, mu, logvar, dec_logvar (and x).
    """
    tensors = (x, dec_out, mu, logvar, dec_logvar)
    if not (torch.is_grad_enabled() and any(_requires_grad(t) for t in tensors)):
        return _loss_only(*tensors, likelihood, beta)
    return _ELBOLoss.apply(*tensors, likelihood, beta)


def _requires_grad(t):
    return t is not None and t.requires_grad


def _detached(*tensors):
    return [None if t is None else t.detach() for t in tensors]


def _loss_only(x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
    x, dec_out, mu, logvar, dec_logvar = _detached(x, dec_out, mu, logvar, dec_logvar)
    elbo, _ = ops.elbo_forward(x, dec_out, mu, logvar, likelihood=likelihood,
                               dec_logvar=dec_logvar, beta=beta)
    return -elbo.mean(dtype=torch.float64).to(elbo.dtype)   # (N,) -> 0-d


class _ELBOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
        x, dec_out, mu, logvar, dec_logvar = _detached(x, dec_out, mu, logvar, dec_logvar)
        loss, grads = ops.elbo_loss_and_grads(x, dec_out, mu, logvar, likelihood=likelihood,
                                              dec_logvar=dec_logvar, beta=beta)
        # grads: (ddec_out (N, D), dmu, dlogvar (N, L)[, ddec_logvar (D,)]) of the loss, as torch
        # tensors over the kernel's buffers; the backward scales them by the upstream gradient.
        ctx.grads = grads
        ctx.likelihood = likelihood
        if ctx.needs_input_grad[0] and likelihood == "bernoulli":
            ctx.save_for_backward(dec_out)   # dloss/dx = -dec_out / N
        return torch.tensor(loss, dtype=grads[0].dtype, device=grads[0].device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dloss):
        ddec_out, dmu, dlogvar, *ddec_logvar = ctx.grads
        grads = [ddec_out, dmu, dlogvar, ddec_logvar[0] if ddec_logvar else None]
        scaled = [g * dloss if g is not None and need else None
                  for g, need in zip(grads, ctx.needs_input_grad[1:5])]
        return (_x_grad(ctx, ddec_out, dloss), *scaled, None, None)


def _x_grad(ctx, ddec_out, dloss):
    """dloss/dx: the Bernoulli ELBO is linear in x with slope dec_out (per row, then -1/N); the
    Gaussian one depends on x only through x - dec_out, so dx = -ddec_out."""
    if not ctx.needs_input_grad[0]:
        return None
    if ctx.likelihood == "gaussian":
        return -ddec_out * dloss
    (dec_out,) = ctx.saved_tensors
    return dec_out * (-dloss / dec_out.shape[0])


class ELBOLoss(torch.nn.Module):
    """``elbo_loss`` as a module: ``ELBOLoss(likelihood, beta)(x, dec_out, mu, logvar,
    dec_logvar=None)`` -> the 0-d loss. The decoder's ``dec_logvar`` stays a parameter of the
    model (pass it in), so this module holds no state."""

    def __init__(self, likelihood="bernoulli", beta=1.0):
        super().__init__()
        if likelihood not in ops.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {ops.LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.beta = beta

    def forward(self, x, dec_out, mu, logvar, dec_logvar=None):
        return elbo_loss(x, dec_out, mu, logvar, likelihood=self.likelihood,
                         dec_logvar=dec_logvar, beta=self.beta)

    def extra_repr(self):
        return f"likelihood={self.likelihood!r}, beta={self.beta}"
