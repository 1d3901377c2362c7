"""The same VAE in PyTorch (eager) and JAX (jit): training step, epoch loop, chunked
importance-weighted log-likelihood. Both build any ``workloads.Arch`` (hidden layers of relu,
mu/logvar heads reading the last hidden layer, mirrored decoder, Bernoulli logits).

Loss (all contenders): mean over the batch of [BCE-with-logits summed over D + analytic KL], one
reparameterized sample per example; Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8.
"""
import importlib

import numpy as np

from .arch import LR

PEERS = ("torch", "jax")


def load_peers():
    """{"torch": module or None, "jax": module or None} and {name: why missing}."""
    modules, missing = {}, {}
    for name in PEERS:
        try:
            modules[name] = importlib.import_module(name)
            if name == "jax":
                importlib.import_module("jax.numpy")
        except ImportError as e:
            modules[name] = None
            missing[name] = f"not installed ({e.__class__.__name__}: {e}); " \
                            f"pip install \"fastvae[bench]\""
    return modules, missing


def _chunk_size(n_rows, K, max_pairs=4096):
    """Samples per chunk for the peers' log-likelihood: the largest divisor of K with
    n_rows * chunk <= max_pairs (fastvae's chunks hold 4096 pairs), so all three work on
    about the same working set."""
    return next(c for c in range(max(1, max_pairs // n_rows), 0, -1) if K % c == 0)


# ---------------------------------------------------------------------------------------------
# PyTorch eager
# ---------------------------------------------------------------------------------------------
def torch_adam_fused_ok(torch, device="cpu"):
    """Whether torch.optim.Adam(fused=True) runs here (CPU support came in torch 2.4)."""
    try:
        m = torch.nn.Linear(2, 2).to(device)
        opt = torch.optim.Adam(m.parameters(), lr=LR, fused=True)
        m(torch.ones(1, 2, device=device)).sum().backward()
        opt.step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def torch_model(torch, arch, device="cpu"):
    nn = torch.nn
    torch.manual_seed(0)

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            enc = (arch.input_dim,) + arch.hidden
            dec = (arch.latent,) + arch.hidden[::-1]
            self.enc = nn.ModuleList(nn.Linear(enc[i], enc[i + 1]) for i in range(len(enc) - 1))
            self.enc_mu, self.enc_logvar = nn.Linear(enc[-1], arch.latent), \
                nn.Linear(enc[-1], arch.latent)
            self.dec = nn.ModuleList(nn.Linear(dec[i], dec[i + 1]) for i in range(len(dec) - 1))
            self.dec_out = nn.Linear(dec[-1], arch.input_dim)

        def encode(self, x):
            for layer in self.enc:
                x = torch.relu(layer(x))
            return self.enc_mu(x), self.enc_logvar(x)

        def decode(self, z):
            for layer in self.dec:
                z = torch.relu(layer(z))
            return self.dec_out(z)

        def loss(self, x):
            mu, logvar = self.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            rec = torch.nn.functional.binary_cross_entropy_with_logits(
                self.decode(z), x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu * mu - torch.exp(logvar))
            return (rec + kl) / x.shape[0]
    return TorchVAE().to(device)


def _torch_trainer(torch, arch, fused, device):
    model = torch_model(torch, arch, device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=bool(fused))

    def step(xb):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(xb)
        loss.backward()
        opt.step()
        return loss.item()   # the host reads the loss every step, as fastvae's fit does
    return step


def torch_train_step(torch, arch, x, fused, device="cpu"):
    """One optimizer step on x (B, D): zero_grad, forward, backward, Adam, loss.item()."""
    step = _torch_trainer(torch, arch, fused, device)
    xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    return lambda: step(xb)


def torch_epoch(torch, arch, x, batch, fused, device="cpu"):
    """One epoch: NumPy permutation (as fit), row gather by tensor indexing, one step per batch
    (the last one partial), losses summed on the host."""
    step = _torch_trainer(torch, arch, fused, device)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    n, state = len(x), {"epoch": 0}

    def epoch():
        order = torch.from_numpy(np.random.default_rng([0, 5, state["epoch"]]).permutation(n))
        state["epoch"] += 1
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch].to(device)
            total += step(xt[rows]) * len(rows)
        return total / n
    return epoch


def torch_loglik(torch, arch, x, K, device="cpu"):
    """IW log-likelihood under no_grad: encoder once, then K in chunks (see _chunk_size),
    log-sum-exp per chunk, merged at the end."""
    model = torch_model(torch, arch, device)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    n, L, D = xt.shape[0], arch.latent, arch.input_dim
    kc = _chunk_size(n, K)
    log2pi = float(np.log(2 * np.pi))
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    @torch.no_grad()
    def run():
        mu, logvar = model.encode(xt)
        std = torch.exp(0.5 * logvar)
        xr = xt.unsqueeze(1).expand(n, kc, D)
        parts = []
        for _ in range(0, K, kc):
            eps = torch.randn(n, kc, L, device=device)
            z = mu.unsqueeze(1) + std.unsqueeze(1) * eps
            logits = model.decode(z.reshape(n * kc, L)).reshape(n, kc, D)
            logpx = -bce(logits, xr, reduction="none").sum(-1)
            logpz = -0.5 * (z * z).sum(-1) - 0.5 * L * log2pi
            logq = -0.5 * (eps * eps + logvar.unsqueeze(1)).sum(-1) - 0.5 * L * log2pi
            parts.append(torch.logsumexp(logpx + logpz - logq, dim=1))
        return (torch.logsumexp(torch.stack(parts, 1), dim=1) - np.log(K)).cpu().numpy()
    return run


# ---------------------------------------------------------------------------------------------
# JAX jit
# ---------------------------------------------------------------------------------------------
def jax_params(jax, arch):
    """{"enc": [(W, b)..], "enc_mu", "enc_logvar", "dec": [..], "dec_out"}: uniform +-1/sqrt(in)
    (PyTorch's default), zero biases."""
    jnp = jax.numpy
    rng = np.random.default_rng(0)

    def lin(i, o):
        bound = 1 / np.sqrt(i)
        return (jnp.asarray(rng.uniform(-bound, bound, (i, o)).astype(np.float32)),
                jnp.zeros(o, jnp.float32))
    enc = (arch.input_dim,) + arch.hidden
    dec = (arch.latent,) + arch.hidden[::-1]
    return dict(enc=[lin(enc[i], enc[i + 1]) for i in range(len(enc) - 1)],
                enc_mu=lin(enc[-1], arch.latent), enc_logvar=lin(enc[-1], arch.latent),
                dec=[lin(dec[i], dec[i + 1]) for i in range(len(dec) - 1)],
                dec_out=lin(dec[-1], arch.input_dim))


def _jax_encode(jax, p, x):
    for w, b in p["enc"]:
        x = jax.nn.relu(x @ w + b)
    return x @ p["enc_mu"][0] + p["enc_mu"][1], x @ p["enc_logvar"][0] + p["enc_logvar"][1]


def _jax_decode(jax, p, z):
    for w, b in p["dec"]:
        z = jax.nn.relu(z @ w + b)
    return z @ p["dec_out"][0] + p["dec_out"][1]


def _bce_logits(jnp, logits, x):
    """-log p(x | logits), elementwise, stable."""
    return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _jax_step_fn(jax):
    """jit(step)(state, xb) -> (state, loss): value_and_grad of the loss and a hand-written
    Adam, one XLA program, the state buffers donated."""
    jnp = jax.numpy
    b1, b2, eps = 0.9, 0.999, 1e-8
    tree_map = jax.tree_util.tree_map

    def loss_fn(p, xb, key):
        mu, logvar = _jax_encode(jax, p, xb)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, jnp.float32)
        rec = _bce_logits(jnp, _jax_decode(jax, p, z), xb).sum()
        kl = -0.5 * jnp.sum(1 + logvar - mu * mu - jnp.exp(logvar))
        return (rec + kl) / xb.shape[0]

    def step(state, xb):
        p, m, v, t, key = state
        key, sub = jax.random.split(key)
        loss, g = jax.value_and_grad(loss_fn)(p, xb, sub)
        t = t + 1
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        lr_t = LR * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = tree_map(lambda p, m, v: p - lr_t * m / (jnp.sqrt(v) + eps), p, m, v)
        return (p, m, v, t, key), loss
    return jax.jit(step, donate_argnums=0)


def _jax_state(jax, arch):
    jnp = jax.numpy
    p = jax_params(jax, arch)
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, p)  # noqa: E731
    return (p, zeros(), zeros(), jnp.float32(0), jax.random.PRNGKey(0))


def jax_train_step(jax, arch, x):
    """One jitted step on x (B, D); returns (run, sync): run dispatches asynchronously, sync
    waits for the last loss (called at the end of each timed block)."""
    step = _jax_step_fn(jax)
    box = {"state": _jax_state(jax, arch), "loss": None}
    xb = jax.numpy.asarray(np.ascontiguousarray(x, dtype=np.float32))

    def run():
        box["state"], box["loss"] = step(box["state"], xb)
    return run, lambda: box["loss"].block_until_ready()


def jax_epoch(jax, arch, x, batch):
    """One epoch: NumPy permutation and row gather on the host (as fit), jnp.asarray per batch,
    the jitted step (a second compiled shape for the partial last batch, made in the warm-up);
    the per-step losses stay on the device and are summed once at the end of the epoch."""
    step = _jax_step_fn(jax)
    box = {"state": _jax_state(jax, arch), "epoch": 0}
    n = len(x)

    def epoch():
        order = np.random.default_rng([0, 5, box["epoch"]]).permutation(n)
        box["epoch"] += 1
        losses = []
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            box["state"], loss = step(box["state"], jax.numpy.asarray(x[rows]))
            losses.append(loss * len(rows))
        return float(sum(losses)) / n
    return epoch


def _jax_loglik_fn(jax, arch, n, K, kc):
    """jit(loglik)(p, x, key) -> (n,): chunks of kc samples one after another (lax.map), or
    all K at once when kc == K."""
    jnp = jax.numpy
    L, D = arch.latent, arch.input_dim
    log2pi = float(np.log(2 * np.pi))

    def loglik(p, xb, key):
        mu, logvar = _jax_encode(jax, p, xb)
        std = jnp.exp(0.5 * logvar)

        def chunk(k):
            eps = jax.random.normal(k, (n, kc, L), jnp.float32)
            z = mu[:, None] + std[:, None] * eps
            logits = _jax_decode(jax, p, z.reshape(n * kc, L)).reshape(n, kc, D)
            logpx = -_bce_logits(jnp, logits, xb[:, None]).sum(-1)
            logpz = -0.5 * (z * z).sum(-1) - 0.5 * L * log2pi
            logq = -0.5 * (eps * eps + logvar[:, None]).sum(-1) - 0.5 * L * log2pi
            return jax.nn.logsumexp(logpx + logpz - logq, axis=1)
        if kc == K:
            return chunk(key) - jnp.log(K)
        parts = jax.lax.map(chunk, jax.random.split(key, K // kc))   # (K/kc, n)
        return jax.nn.logsumexp(parts, axis=0) - jnp.log(K)
    return jax.jit(loglik)


def jax_loglik(jax, arch, x, K, chunked=True):
    """IW log-likelihood in one jitted call; chunked like torch_loglik (chunked=False: all K
    samples of every row at once, the straightforward version, used by the memory workload)."""
    n = x.shape[0]
    fn = _jax_loglik_fn(jax, arch, n, K, _chunk_size(n, K) if chunked else K)
    p = jax_params(jax, arch)
    xb = jax.numpy.asarray(np.ascontiguousarray(x, dtype=np.float32))
    key = jax.random.PRNGKey(1)
    return lambda: fn(p, xb, key).block_until_ready()
