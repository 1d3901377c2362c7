"""fastvae.torch under torch.compile(fullgraph=True) (CPU inductor): the same losses and
gradients as eager mode, and the stateful sampler's offset bump causes no recompilation.

Compiling takes 5-60 s per function on the 2-core development machine, so the tests are few and
each compiles one small function.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional extra: pip install "
                                            "'fastvae[torch]'")
import fastvae.torch as fvt  # noqa: E402
from fastvae import random as frandom  # noqa: E402

RNG = np.random.default_rng(20261213)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script")   # torch's own internals


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class VAE(torch.nn.Module):
    def __init__(self, d=12, h=8, l=3, seed=7):
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(d, 2 * l), torch.nn.Linear(l, d)
        self.sample = fvt.Reparameterize(seed=seed)

    def forward(self, x):                               # x (N, D) in [0, 1]
        mu, logvar = self.enc(torch.tanh(x)).chunk(2, dim=1)
        z = self.sample(mu, logvar)
        return fvt.elbo_loss(x, self.dec(z), mu, logvar, beta=0.7, reduction="sum")


def _grads(model, loss):
    return [g.detach().numpy() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_compiled_training_step_matches_eager_without_recompiling():
    x = torch.tensor(RNG.uniform(0.02, 0.98, (10, 12)), dtype=torch.float32)
    eager = VAE()
    compiled = VAE()
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, fullgraph=True)

    def check(i):
        want, got = eager(x), step(x)
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
        for g, w in zip(_grads(compiled, got), _grads(eager, want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert int(compiled.sample.offset) == int(eager.sample.offset) == (i + 1) * 30

    check(0)                                      # compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        check(1)                                  # the offset bump must not compile again
        check(2)
    # the compiled sampler drew the documented stream: eps of step 0 is normal(.., seed 7, 0)
    mu, logvar = eager.enc(torch.tanh(x)).chunk(2, dim=1)
    z = fvt.reparameterize(mu, logvar, 7, 0)
    eps = torch.tensor(frandom.normal((10, 3), 7, 0))
    np.testing.assert_allclose(z.detach().numpy(), (mu + torch.exp(logvar / 2) * eps).detach(),
                               rtol=1e-5, atol=1e-6)


def test_compiled_iwae_and_gaussian_elbo_per_row_and_summed_match_eager():
    n, k, d, l = 3, 5, 131, 7
    x = torch.tensor(RNG.uniform(0.01, 0.99, (n, d)), dtype=torch.float32)
    leaves = [torch.tensor(RNG.normal(0, s, shape), dtype=torch.float32, requires_grad=True)
              for s, shape in ((3, (n, k, d)), (1, (n, l)), (1, (n, l)), (0.5, (d,)))]
    eps = torch.tensor(RNG.normal(0, 1, (n, k, l)), dtype=torch.float32)

    def loss(dec_out, mu, logvar, dec_logvar):
        weights = torch.arange(1.0, n + 1)
        iw = fvt.iwae_loss(x, dec_out, mu, logvar, eps, reduction="sum")
        iw_rows = fvt.iwae_loss(x, dec_out.flip(1), mu, logvar, eps, reduction="none")
        rows = fvt.elbo_loss(x, dec_out[:, 0], mu, logvar, "gaussian", dec_logvar,
                             reduction="none")
        return iw + (iw_rows * weights).sum() + (rows * weights).sum()

    want = loss(*leaves)
    got = torch.compile(loss, fullgraph=True)(*leaves)
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
    for g, w in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
