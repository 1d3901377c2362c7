"""The fused in-place Adam step: fastvae.cpu.adam vs NumPy in-place array operations.

bytes per call (float32, 4 bytes/element, P parameters): reads param, grad, m, v and writes param,
m, v: 4 * 7 P. NumPy makes several passes with temporaries, so it moves more than that.
P = 652,824: the 784-400-20 VAE (784*400+400 + 2*(400*20+20) + 20*400+400 + 400*784+784), all in
one flat buffer as the model keeps them.
Also test_pool_vs_serial: ``adam_update`` (tiles of CHUNK elements on fastvae's pool) against the
serial kernel (the "numpy" column holds the serial kernel in those rows).
"""
import numpy as np
import pytest

import common
from fastvae.bench.workloads import numpy_adam   # lr 1e-3, betas 0.9/0.999, eps 1e-8 as below
from fastvae.cpu import adam

P_VAE = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def make_case(p, seed=0):
    rng = np.random.default_rng(seed)
    param, grad, m = (rng.standard_normal(p).astype(np.float32) for _ in range(3))
    v = (rng.random(p) * 0.01).astype(np.float32)
    return param, grad, m, v


@pytest.mark.parametrize("p", [P_VAE, 4 * P_VAE])
def test_adam(benchmark, p):
    param, grad, m, v = make_case(p)
    # correctness: one step each from the same state
    a, b = [x.copy() for x in (param, m, v)], [x.copy() for x in (param, m, v)]
    adam.adam_update(a[0], grad, a[1], a[2], 7, LR, B1, B2, EPS)
    numpy_adam(b[0], grad, b[1], b[2], 7, np.empty_like(param))
    for got, want in zip(a, b):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    tmp = np.empty_like(param)
    common.run_pair(benchmark, lambda: adam.adam_update(param, grad, m, v, 7, LR, B1, B2, EPS),
                    lambda: numpy_adam(param, grad, m, v, 7, tmp), op="adam step",
                    cuda_fn=common.cuda_call("adam", "adam_update", param, grad, m, v, 7, LR, B1,
                                             B2, EPS),
                    size=(p,), dtype=np.float32, nbytes=4 * 7 * p)


@pytest.mark.parametrize("p", [1 << 12, 1 << 14, 1 << 15, 1 << 16, 1 << 18, P_VAE])
def test_pool_vs_serial(benchmark, p):
    param, grad, m, v = make_case(p, seed=1)
    f = np.float32
    scalars = (f(LR), (f(B1), f(1 - B1)), (f(B2), f(1 - B2)), f(EPS), f(1.0), f(1.0),
               np.finfo(f).tiny, p)
    common.run_pair(benchmark, lambda: adam.adam_update(param, grad, m, v, 1, LR, B1, B2, EPS),
                    lambda: adam.adam_kernel(param, m, v, grad, *scalars),
                    op="adam pool vs serial", size=(p,), dtype=np.float32, nbytes=4 * 7 * p)


def test_all_finite(benchmark):
    # The guard before each Adam step, against NumPy's float(a.sum()) (what train_step used).
    grad = make_case(P_VAE, seed=2)[1]
    assert adam.all_finite(grad) == np.isfinite(grad.sum())
    common.run_pair(benchmark, lambda: adam.all_finite(grad), lambda: float(grad.sum()),
                    op="all_finite vs sum", size=(P_VAE,), dtype=np.float32, nbytes=4 * P_VAE)
