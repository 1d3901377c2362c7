"""CUDA tensors through fastvae.torch and fastvae.ops, CuPy chunks in fastvae.distributed, and
the GPU columns of ``fastvae bench``.

The torch and bench tests need a real GPU (DLPack shares device memory; the bench measures it);
they are marked ``gpu`` and skip elsewhere. The Dask test runs on both ``dev`` variants."""
import json

import numpy as np
import pytest

import fastvae as fv
from fastvae import cli, ops

from .conftest import is_device_array

torch = pytest.importorskip("torch")
fvt = pytest.importorskip("fastvae.torch")

N, D, L = 33, 47, 5


def _torch_cuda():
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build sees no CUDA device")


def _elbo_tensors(device, dtype=torch.float32, likelihood="bernoulli"):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(N, D, generator=g, dtype=torch.float64)
    logits = torch.randn(N, D, generator=g, dtype=torch.float64) * 8
    mu = torch.randn(N, L, generator=g, dtype=torch.float64) * 2
    logvar = torch.rand(N, L, generator=g, dtype=torch.float64) * 8 - 5
    dec_logvar = torch.rand(D, generator=g, dtype=torch.float64) - 0.5
    tensors = [x, logits, mu, logvar] + ([dec_logvar] if likelihood == "gaussian" else [None])
    return [None if t is None else t.to(device, dtype).requires_grad_(i > 0)
            for i, t in enumerate(tensors)]


def _loss_and_grads(device, dtype, likelihood):
    x, logits, mu, logvar, dec_logvar = _elbo_tensors(device, dtype, likelihood)
    loss = fvt.elbo_loss(x, logits, mu, logvar, likelihood=likelihood, dec_logvar=dec_logvar,
                         beta=0.6)
    loss.backward()
    wrt = [t for t in (logits, mu, logvar, dec_logvar) if t is not None]
    return [loss.detach()] + [t.grad for t in wrt]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_loss_on_cuda_tensors_matches_cpu_tensors(likelihood, dtype):
    _torch_cuda()
    on_gpu = _loss_and_grads("cuda", dtype, likelihood)
    on_cpu = _loss_and_grads("cpu", dtype, likelihood)
    rtol = 2e-5 if dtype == torch.float32 else 1e-11
    for i, (g, c) in enumerate(zip(on_gpu, on_cpu)):
        assert g.is_cuda and g.dtype == dtype, f"[{i}] {g.device} {g.dtype}"
        scale = max(1.0, float(c.abs().max()))
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=rtol * scale, msg=f"[{i}]")


@pytest.mark.gpu
def test_reparameterize_on_cuda_tensors_draws_the_cpu_noise():
    _torch_cuda()
    results = []
    for device in ("cuda", "cpu"):
        _, _, mu, logvar, _ = _elbo_tensors(device)
        z = fvt.reparameterize(mu, logvar, seed=12, offset=5)
        (z * torch.arange(L, device=device)).sum().backward()
        results.append((z.detach(), mu.grad, logvar.grad))
    for i, (g, c) in enumerate(zip(*results)):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=5e-6 * max(1.0, float(c.abs().max())),
                                   msg=f"[{i}]")


@pytest.mark.gpu
def test_ops_take_and_return_cuda_tensors_without_a_copy():
    _torch_cuda()
    _, _, mu, logvar, _ = _elbo_tensors("cuda")
    kl, cache = ops.kl_forward(mu.detach(), logvar.detach())
    assert isinstance(kl, torch.Tensor) and kl.is_cuda
    want, _ = ops.kl_forward(mu.detach().cpu().numpy(), logvar.detach().cpu().numpy())
    np.testing.assert_allclose(kl.cpu().numpy(), want, rtol=2e-6)
    dmu, dlogvar = ops.kl_backward(torch.ones(N, device="cuda"), cache)
    assert dmu.is_cuda and dlogvar.is_cuda


@pytest.mark.gpu
def test_a_mix_of_cpu_and_cuda_tensors_is_refused():
    _torch_cuda()
    x, logits, mu, logvar, _ = _elbo_tensors("cuda")
    with pytest.raises((TypeError, ValueError), match="(?i)device|cuda|cpu"):
        fvt.elbo_loss(x.cpu(), logits, mu, logvar)


@pytest.mark.gpu
def test_a_torch_vae_trains_on_cuda_as_on_the_cpu():
    """Five Adam steps of a small PyTorch VAE with fastvae's loss and sampler: CUDA vs CPU."""
    _torch_cuda()
    losses = {}
    for device in ("cuda", "cpu"):
        torch.manual_seed(0)
        enc, dec = torch.nn.Linear(D, 2 * L).double(), torch.nn.Linear(L, D).double()
        enc, dec = enc.to(device), dec.to(device)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
        x = _elbo_tensors(device, torch.float64)[0].detach()
        losses[device] = []
        for step in range(5):
            mu, logvar = enc(x).chunk(2, dim=1)
            z = fvt.reparameterize(mu, logvar, seed=1, offset=step * mu.numel())
            loss = fvt.elbo_loss(x, dec(z), mu, logvar)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[device].append(float(loss))
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-9)


def test_dask_chunks_on_the_device_give_the_single_process_numbers(dev):
    da = pytest.importorskip("dask.array")
    from fastvae import distributed
    model = fv.VAE(D, (9,), L, seed=2)
    x = np.random.default_rng(1).random((23, D)).astype(np.float32)
    chunks = da.from_array(x, chunks=(8, D)).map_blocks(dev.xp.asarray, dtype=np.float32)
    got = distributed.log_likelihood(model, chunks, K=12, seed=4, max_pairs=96).compute()
    assert isinstance(got, np.ndarray) and not is_device_array(got), type(got)
    want = model.log_likelihood(x, K=12, seed=4, max_pairs=96, progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.gpu
def test_bench_writes_gpu_columns_next_to_the_cpu_ones(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--only", "loglik,ops", "--K", "50", "--threads", "1",
                     "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["gpu"]["available"] and merged["gpu"]["name"]
    rows = [row for run in merged["runs"] for row in run["rows"]]
    with_gpu = [row for row in rows if "fastvae cuda" in row["results"]]
    assert with_gpu, "no row has a fastvae cuda result"
    for row in with_gpu:
        assert "fastvae" in row["results"], row["name"]
        assert row["results"]["fastvae cuda"]["median"] > 0
    for run in merged["runs"]:
        assert run["probes"]["start"]["gpu"], "the GPU copy/GEMM probes are missing"
