"""Fused dense layer (fastvae.cpu.dense) vs the same layer in plain NumPy, float32.

flops (elementwise work ignored, i.e. the bias, the activation and its derivative, db):
  forward  2 N I O           (x @ W)
  backward 4 N I O           (dx = da @ W.T and dW = x.T @ da; need_dx=True in every case)
Layers of the VAE: encoder 784->400 relu, 400->20 identity (mu/logvar head), decoder 20->400
relu, 400->784 sigmoid (Bernoulli mean) or identity (logits). The NumPy layer is the one
``fastvae bench --only ops`` times (fastvae/bench/workloads.py).
"""
import numpy as np
import pytest

import common
from fastvae.bench.workloads import numpy_dense_backward as numpy_backward
from fastvae.bench.workloads import numpy_dense_forward as numpy_forward
from fastvae.cpu import dense

# 0.25 s per case instead of pytest-benchmark's 1 s: 30 cases, and run_pair repeats the NumPy
# side as many rounds as the fastvae side took.
pytestmark = pytest.mark.benchmark(max_time=0.25)

LAYERS = [(784, 400, "relu"), (400, 20, "identity"), (20, 400, "relu"), (400, 784, "sigmoid"),
          (400, 784, "identity")]
BATCHES = [32, 128, 512]


def make_case(N, I, O):
    rng = np.random.default_rng(N * 100003 + I * 101 + O)
    x = rng.standard_normal((N, I)).astype(np.float32)
    W = (rng.standard_normal((I, O)) / np.sqrt(I)).astype(np.float32)
    b = (0.1 * rng.standard_normal(O)).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    return x, W, b, dy


def _close(got, want, name):
    scale = float(np.abs(want).max()) + 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("N", BATCHES)
@pytest.mark.parametrize("I,O,activation", LAYERS, ids=lambda v: str(v))
def test_dense_forward(benchmark, I, O, activation, N):
    x, W, b, _ = make_case(N, I, O)
    _close(dense.dense_forward(x, W, b, activation)[0], numpy_forward(x, W, b, activation), "y")
    common.run_pair(benchmark, lambda: dense.dense_forward(x, W, b, activation),
                    lambda: numpy_forward(x, W, b, activation),
                    op=f"dense_forward {activation}", size=(N, I, O), dtype=np.float32,
                    cuda_fn=common.cuda_call("dense", "dense_forward", x, W, b, activation),
                    flops=2.0 * N * I * O)


@pytest.mark.parametrize("N", BATCHES)
@pytest.mark.parametrize("I,O,activation", LAYERS, ids=lambda v: str(v))
def test_dense_backward(benchmark, I, O, activation, N):
    x, W, b, dy = make_case(N, I, O)
    y, cache = dense.dense_forward(x, W, b, activation)
    y_np = numpy_forward(x, W, b, activation)
    for got, want, name in zip(dense.dense_backward(dy, cache),
                               numpy_backward(dy, x, W, y_np, activation), ("dx", "dW", "db")):
        _close(got, want, name)
    common.run_pair(benchmark, lambda: dense.dense_backward(dy, cache),
                    lambda: numpy_backward(dy, x, W, y_np, activation),
                    op=f"dense_backward {activation}", size=(N, I, O), dtype=np.float32,
                    cuda_fn=common.cuda_backward("dense", "dense", dy, x, W, b, activation),
                    flops=4.0 * N * I * O)
