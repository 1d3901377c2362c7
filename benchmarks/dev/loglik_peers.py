"""Importance-weighted log p(x) of one PyTorch-trained VAE, three ways, in one run (issue 14):

- fastvae: the model imported with ``VAE.from_torch`` and ``VAE.log_likelihood`` (float32);
- torch batched: encode once, decode chunks of 10,000 (x, z) pairs, logsumexp (float32, eager);
- pythae: ``pythae.models.VAE.get_nll`` on the same weights (one example at a time, batches of
  100 samples).

The model is the pytorch/examples layout 784-400-20 (relu, Bernoulli), trained 2 epochs with
PyTorch on binarized Fashion-MNIST (or random binary data when it is not installed). Each
contender runs in its own process (peak RSS is that process's high-water mark, including the
model and data), rounds interleaved A B C A B C, medians of pairs/s; the sgemm rate is probed at
the start and the end. Threads: ``--threads`` for torch and fastvae alike.

    python benchmarks/dev/loglik_peers.py --K 1000 5000 --rows 200 --pythae-rows 10 --rounds 3
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _torch_model(torch, seed=0):
    nn = torch.nn
    torch.manual_seed(seed)
    return (nn.Sequential(nn.Linear(784, 400), nn.ReLU()), nn.Linear(400, 20),
            nn.Linear(400, 20), nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784)))


def _data(n_train, n_test):
    from fastvae import data as fvdata
    try:
        d = fvdata.load_dataset("fashion-mnist")
        x_train, x_test, name = d.x_train[:n_train], d.x_test[:n_test], "fashion-mnist"
    except (FileNotFoundError, ValueError, OSError):
        rng = np.random.default_rng(0)
        x_train, x_test, name = rng.random((n_train, 784)), rng.random((n_test, 784)), "random"
    rng = np.random.default_rng(1)
    binarize = lambda a: (rng.random(a.shape) < a).astype(np.float32)   # noqa: E731
    return binarize(np.asarray(x_train)), binarize(np.asarray(x_test)), name


def train(path, threads):
    """Train the torch model 2 epochs (Adam 1e-3, batch 128) and save weights and test data."""
    import torch
    torch.set_num_threads(threads)
    enc, mu, logvar, dec = _torch_model(torch)
    x_train, x_test, name = _data(20000, 2000)
    params = [p for m in (enc, mu, logvar, dec) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    xt = torch.from_numpy(x_train)
    for epoch in range(2):
        for i in torch.randperm(len(xt)).split(128):
            x = xt[i]
            h = enc(x)
            m, lv = mu(h), logvar(h)
            z = m + torch.exp(0.5 * lv) * torch.randn_like(m)
            rec = torch.nn.functional.binary_cross_entropy_with_logits(dec(z), x,
                                                                      reduction="sum")
            kl = -0.5 * torch.sum(1 + lv - m ** 2 - lv.exp())
            loss = (rec + kl) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save({"modules": [enc, mu, logvar, dec], "x_test": x_test, "data": name}, path)


def _load(path, threads):
    import torch
    torch.set_num_threads(threads)
    saved = torch.load(path, weights_only=False)
    return torch, saved["modules"], saved["x_test"]


def run_fastvae(path, threads, K, rows):
    torch, (enc, mu, logvar, dec), x = _load(path, threads)
    import fastvae as fv
    fv.set_num_threads(threads)
    model = fv.VAE.from_torch(enc, mu, logvar, dec)
    model.log_likelihood(x[:8], K=50, progress=False)            # warm-up (compiled kernels)
    t0 = time.perf_counter()
    ll = model.log_likelihood(x[:rows], K=K, seed=3, progress=False)
    return time.perf_counter() - t0, ll


def run_callables(path, threads, K, rows):
    """fastvae's estimator on the PyTorch modules themselves: fastvae.log_likelihood with torch
    callables (torch's GEMMs, fastvae's noise, fused log weights and streaming log-sum-exp)."""
    torch, (enc, mu, logvar, dec), x = _load(path, threads)
    import fastvae as fv
    fv.set_num_threads(threads)

    def encode(x):
        h = enc(x)
        return mu(h), logvar(h)
    logits = dec[:-1] if isinstance(dec[-1], torch.nn.Sigmoid) else dec
    fv.log_likelihood(encode, logits, x[:8], K=50, inputs="torch", progress=False)   # warm-up
    t0 = time.perf_counter()
    ll = fv.log_likelihood(encode, logits, x[:rows], K=K, seed=3, inputs="torch", progress=False)
    return time.perf_counter() - t0, ll


def run_torch(path, threads, K, rows, chunk_pairs=10_000):
    torch, (enc, mu, logvar, dec), x = _load(path, threads)
    xs = torch.from_numpy(x[:rows])
    t0 = time.perf_counter()
    with torch.no_grad():
        h = enc(xs)
        m, lv = mu(h), logvar(h)
        out = []
        per = max(1, chunk_pairs // K)
        for r0 in range(0, rows, per):
            xm, mm, lvm = xs[r0:r0 + per], m[r0:r0 + per], lv[r0:r0 + per]
            eps = torch.randn(len(xm), K, mm.shape[1])
            z = mm[:, None] + torch.exp(0.5 * lvm)[:, None] * eps
            logits = dec(z.reshape(-1, z.shape[-1])).reshape(len(xm), K, -1)
            log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, xm[:, None].expand_as(logits), reduction="none").sum(-1)
            log_pz = -0.5 * (z ** 2).sum(-1)
            log_qz = -0.5 * (lvm[:, None] + eps ** 2).sum(-1)
            out.append(torch.logsumexp(log_px + log_pz - log_qz, 1) - np.log(K))
    return time.perf_counter() - t0, torch.cat(out).double().numpy()


def run_pythae(path, threads, K, rows):
    torch, (enc, mu, logvar, dec), x = _load(path, threads)
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.enc, self.mu, self.logvar = enc, mu, logvar

        def forward(self, x):
            h = self.enc(x.reshape(len(x), -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.dec = dec

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.dec(z)))

    model = VAE(VAEConfig(input_dim=(784,), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder()).eval()
    xs = torch.from_numpy(x[:rows])
    t0 = time.perf_counter()
    with torch.no_grad():
        mean = model.get_nll(xs, n_samples=K, batch_size=100)
    return time.perf_counter() - t0, np.array([mean])   # get_nll returns the mean over rows


def _peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args):
    fn = {"fastvae": run_fastvae, "fastvae-callables": run_callables, "torch": run_torch,
          "pythae": run_pythae}[args.worker]
    seconds, ll = fn(args.model, args.threads, args.k, args.n)
    print(json.dumps(dict(seconds=seconds, ll=ll.tolist(), peak_rss_mb=_peak_rss_mb())))


def _child(name, args, K, rows):
    cmd = [sys.executable, __file__, "--worker", name, "--model", args.model, "--threads",
           str(args.threads), "--k", str(K), "--n", str(rows)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    if out.returncode:
        raise RuntimeError(f"{name} K={K}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sgemm_gflops(threads):
    from threadpoolctl import threadpool_limits
    a, b = (np.random.default_rng(0).standard_normal((s, 784)).astype(np.float32)
            for s in (128, 400))
    with threadpool_limits(threads):
        a @ b.T
        t = min(_timed(lambda: a @ b.T) for _ in range(30))
    return 2 * 128 * 784 * 400 / t / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(args):
    if not os.path.exists(args.model):
        train(args.model, args.threads)
    gemm = [_sgemm_gflops(args.threads)]
    results = {}
    for K in args.K:
        rows = {"fastvae": args.rows, "fastvae-callables": args.rows, "torch": args.rows,
                "pythae": args.pythae_rows}
        for _ in range(args.rounds):
            for name in rows:
                r = _child(name, args, K, rows[name])
                results.setdefault((K, name), []).append(r)
    gemm.append(_sgemm_gflops(args.threads))
    print(f"sgemm 128x784x400 float32, {args.threads} threads: {gemm[0]:.0f} GFLOP/s at the "
          f"start, {gemm[1]:.0f} at the end")
    print("| K | contender | rows | pairs/s (median, min-max) | peak RSS MB | mean log p(x) |")
    print("|---|---|---|---|---|---|")
    for (K, name), rs in results.items():
        n = args.rows if name != "pythae" else args.pythae_rows
        rates = [n * K / r["seconds"] for r in rs]
        mean = np.mean(rs[0]["ll"])
        print(f"| {K} | {name} | {n} | {np.median(rates) / 1e3:.1f}k ({min(rates) / 1e3:.1f}k-"
              f"{max(rates) / 1e3:.1f}k) | {max(r['peak_rss_mb'] for r in rs):.0f} | "
              f"{mean:.3f} |")
    for K in args.K:
        fv_ll = np.array(results[(K, "fastvae")][0]["ll"])
        t_ll = np.array(results[(K, "torch")][0]["ll"])
        c_ll = np.array(results[(K, "fastvae-callables")][0]["ll"])
        print(f"K={K}: fastvae VAE - fastvae on the torch callables (same noise): max |d| "
              f"{np.max(np.abs(fv_ll - c_ll)):.2e} nats")
        py = results[(K, "pythae")][0]["ll"][0]
        print(f"K={K}: fastvae - torch per example: mean {np.mean(fv_ll - t_ll):+.4f}, max |d| "
              f"{np.max(np.abs(fv_ll - t_ll)):.4f} nats; pythae's mean over its "
              f"{args.pythae_rows} rows {py:.3f} vs fastvae's on the same rows "
              f"{np.mean(fv_ll[:args.pythae_rows]):.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--K", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--pythae-rows", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="/tmp/fastvae_loglik_peers_model.pt")
    p.add_argument("--worker")
    p.add_argument("--k", type=int)
    p.add_argument("--n", type=int)
    a = p.parse_args()
    worker(a) if a.worker else main(a)
