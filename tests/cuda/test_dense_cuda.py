"""fastvae.cuda.dense (kernels/dense.cu around xp.matmul) against fastvae/_reference.py.

The launchers run unchanged on NumPy arrays through the host harness (fixture ``host_cuda``: fiber
orders fwd/rev/rand x real/tiny launch constants; the GEMMs are NumPy's there); the gpu-marked
test runs them on CuPy arrays (cuBLAS) against the CPU backend.
"""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cuda import dense
from tests.helpers import assert_close3, to32, to64

ACTIVATIONS = ("identity", "relu", "tanh", "softplus", "sigmoid")
# (N, I, O): single element, O not a multiple of 32, one partial column tile, several tiles, and
# 37 rows: several row blocks with the real (32, 8) blocks, row grid-stride with the tiny ones
SHAPES = ((1, 1, 1), (3, 5, 31), (5, 7, 257), (2, 3, 1100), (37, 9, 45))


def make_inputs(rng, N, I, O, scale=10.0):
    """float64 x (N, I), W (I, O), b (O,) with pre-activations of std ``scale``; with N >= 3 row 1
    is scaled by 1000 (|a| ~ 1e4: saturated tanh/sigmoid, softplus = a); rows ``big``."""
    x = rng.standard_normal((N, I))
    W = rng.standard_normal((I, O)) * (scale / np.sqrt(I))
    b = 2.0 * rng.standard_normal(O)
    big = np.zeros(N, dtype=bool)
    if N >= 3:
        big[1] = True
        x[1] *= 1000.0
    return x, W, b, big


def run(impl, x, W, b, activation, dy, need_dx=True):
    y, cache = impl.dense_forward(x, W, b, activation)
    if impl is ref:
        return (y, *ref.dense_backward(dy, cache))
    return (y, *impl.dense_backward(dy, cache, need_dx=need_dx))


def check_all(out, r32, r64, big, rtol):
    """y, dx row-wise (ordinary rows and the |a| ~ 1e4 rows apart); dW, db scaled by their size."""
    for k, name in enumerate(("y", "dx", "dW", "db")):
        assert out[k].dtype == r32[k].dtype, name
        finite = np.abs(r64[k][np.isfinite(r64[k])])
        scale = max(1.0, float(finite.max()) if finite.size else 1.0)
        if name in ("y", "dx"):
            for rows, label in ((~big, "rows"), (big, "big rows")):
                if rows.any():
                    assert_close3(out[k][rows], r32[k][rows], r64[k][rows], rtol * scale,
                                  f"{name} ({label})")
        else:
            assert_close3(out[k], r32[k], r64[k], rtol * scale, name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_vs_reference(host_cuda, activation, shape):
    rng = np.random.default_rng([ACTIVATIONS.index(activation), SHAPES.index(shape)])
    x, W, b, big = make_inputs(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2])) * rng.uniform(0.1, 10, (shape[0], shape[2]))
    args = to32(x, W, b, dy)
    before = [a.copy() for a in args]
    out = run(dense, *args[:3], activation, args[3])
    for a, a0 in zip(args, before):   # nothing is overwritten
        np.testing.assert_array_equal(a, a0)
    r32 = run(ref, *args[:3], activation, args[3])
    r64 = run(ref, *to64(x, W, b), activation, dy)
    check_all(out, r32, r64, big, 1e-6)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float64_vs_reference(host_cuda, activation, shape):
    rng = np.random.default_rng([ACTIVATIONS.index(activation), SHAPES.index(shape), 64])
    x, W, b, big = make_inputs(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2]))
    out = run(dense, x, W, b, activation, dy)
    r64 = run(ref, x, W, b, activation, dy)
    check_all(out, r64, r64, big, 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["identity", "relu", "softplus"])
def test_need_dx_false(host_cuda, activation, dtype):
    rng = np.random.default_rng(3)
    x, W, b = (a.astype(dtype) for a in make_inputs(rng, 11, 4, 17)[:3])
    dy = rng.standard_normal((11, 17)).astype(dtype)
    dx, dW, db = run(dense, x, W, b, activation, dy)[1:]
    none, dW2, db2 = run(dense, x, W, b, activation, dy, need_dx=False)[1:]
    assert dx is not None and dx.shape == x.shape and none is None
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf * 0 in the GEMMs
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nonfinite_propagation(host_cuda, activation, special):
    """A NaN/Inf in one element of x and a NaN in dy (another row, where relu' = 0): the same
    NaN/Inf/saturated values as the reference in y, dx, dW and db."""
    rng = np.random.default_rng(11)
    x, W, b, _ = make_inputs(rng, 9, 4, 6)
    big = np.zeros(9, dtype=bool)
    x[1] /= 1000.0
    x[4, 2] = special
    dy = rng.standard_normal((9, 6))
    j = int(np.argmin(x[7] @ W + b))
    assert (x[7] @ W + b)[j] < 0
    dy[7, j] = np.nan   # NaN * act'(a) is NaN even where act'(a) = 0 (relu), as in the reference
    with np.errstate(invalid="ignore", over="ignore"):
        for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-13)):
            args = [a.astype(dtype) for a in (x, W, b, dy)]
            out = run(dense, *args[:3], activation, args[3])
            r32 = run(ref, *args[:3], activation, args[3])
            r64 = run(ref, x, W, b, activation, dy) if dtype == np.float32 else r32
            check_all(out, r32, r64, big, rtol)
            if np.isnan(special):
                assert np.isnan(out[0][4]).all()


def test_checks_and_empty(host_cuda):
    x, W, b = np.ones((3, 2), np.float32), np.ones((2, 4), np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        dense.dense_forward(x, W, b, "gelu")
    y, cache = dense.dense_forward(x[:0], W, b, "relu")
    assert y.shape == (0, 4)
    dx, dW, db = dense.dense_backward(y, cache)
    assert dx.shape == (0, 2) and dW.shape == (2, 4) and (db == 0).all() and (dW == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(128, 784, 400), (128, 20, 400), (1000, 400, 20)])
def test_gpu_matches_cpu_backend(cp, dtype, activation, shape):
    from fastvae.cpu import dense as cpu
    rng = np.random.default_rng(5)
    x, W, b, big = make_inputs(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2]))
    args = [a.astype(dtype) for a in (x, W, b, dy)]
    out = run(dense, *[cp.asarray(a) for a in args[:3]], activation, cp.asarray(args[3]))
    assert isinstance(out[0], cp.ndarray)
    cpu_out = run(cpu, *args[:3], activation, args[3])
    r64 = run(ref, x, W, b, activation, dy)
    # cuBLAS and OpenBLAS sum in different orders (TF32 is off by default in CuPy)
    check_all([cp.asnumpy(a) for a in out], cpu_out, r64, big,
              1e-6 if dtype == np.float32 else 1e-13)
