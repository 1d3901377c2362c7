"""fastvae.cpu.dense against fastvae/_reference.py::dense_forward / dense_backward."""
import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import dense
from tests.helpers import assert_close3, check_backward, to32, to64

ACTIVATIONS = ("identity", "relu", "tanh", "softplus", "sigmoid")
SHAPES = ((1, 1, 1), (31, 257, 7), (257, 31, 401), (4099, 13, 5))   # (N, I, O)


def make_inputs(rng, N, I, O, scale=10.0, n_big=2):
    """float64 x (N, I), W (I, O), b (O,) with pre-activations of std ``scale`` (|a| up to ~50)
    and ``n_big`` rows of x (rows ``big``) scaled by 1000, so their |a| reach ~1e4."""
    x = rng.standard_normal((N, I))
    W = rng.standard_normal((I, O)) * (scale / np.sqrt(I))
    b = 2.0 * rng.standard_normal(O)
    big = np.zeros(N, dtype=bool)
    if N >= 3 * n_big:
        big[rng.choice(N, size=n_big, replace=False)] = True
        x[big] *= 1000.0
    return x, W, b, big


def run_three(x, W, b, activation, dy):
    """(out, ref32, ref64) for y, dx, dW, db: the float32 kernel, the reference in float32 and
    in float64, all with the same upstream dy."""
    results = []
    for impl, cast in ((dense, to32), (ref, to32), (ref, to64)):
        x_, W_, b_, dy_ = cast(x, W, b, dy)
        y, cache = impl.dense_forward(x_, W_, b_, activation)
        results.append((y, *impl.dense_backward(dy_, cache)))
    return results


def check_all(results, big, atol=1e-5):
    """assert_close3 on y, dx, dW, db; row-wise outputs checked separately on the ordinary rows
    and on the rows scaled to |a| ~ 1e4 (so those don't loosen the tolerance of the others)."""
    out, r32, r64 = results
    scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(r64[2]), r64[2], 0)))))
    for k, name in enumerate(("y", "dx", "dW", "db")):
        assert out[k].dtype == np.float32, name
        if name in ("y", "dx"):
            for rows, label in ((~big, "rows"), (big, "big rows")):
                if rows.any():
                    assert_close3(out[k][rows], r32[k][rows], r64[k][rows], atol,
                                  f"{name} ({label})")
        else:
            assert_close3(out[k], r32[k], r64[k], atol * scale, name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_vs_reference(activation, shape):
    rng = np.random.default_rng([ACTIVATIONS.index(activation), SHAPES.index(shape)])
    x, W, b, big = make_inputs(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2]))
    x32, W32, b32, dy32 = to32(x, W, b, dy)
    before = [a.copy() for a in (x32, W32, b32, dy32)]
    y, cache = dense.dense_forward(x32, W32, b32, activation)
    y_before = y.copy()
    dense.dense_backward(dy32, cache)
    for a, a0 in zip((x32, W32, b32, dy32, y), (*before, y_before)):   # backward overwrites nothing
        np.testing.assert_array_equal(a, a0)
    check_all(run_three(x, W, b, activation, dy), big)


def test_float32_large_layer():
    rng = np.random.default_rng(7)
    x, W, b, big = make_inputs(rng, 41, 401, 1271, n_big=3)
    check_all(run_three(x, W, b, "sigmoid", rng.standard_normal((41, 1271))), big)


@pytest.mark.parametrize("shape", [(31, 257, 7), (257, 31, 401)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float64_vs_reference(activation, shape):
    rng = np.random.default_rng([ACTIVATIONS.index(activation), shape[0], 64])
    x, W, b, _ = make_inputs(rng, *shape)
    dy = rng.standard_normal((shape[0], shape[2]))
    y, cache = dense.dense_forward(x, W, b, activation)
    y64, cache64 = ref.dense_forward(x, W, b, activation)
    got = (y, *dense.dense_backward(dy, cache))
    want = (y64, *ref.dense_backward(dy, cache64))
    for g, w, name in zip(got, want, ("y", "dx", "dW", "db")):
        assert g.dtype == np.float64, name
        # dgemm is shared; the elementwise formulas differ in the last bits only
        assert_close3(g, w, w, 1e-13 * (1.0 + np.abs(w).max()), name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ["identity", "relu", "softplus"])
def test_need_dx_false(activation, dtype):
    rng = np.random.default_rng(3)
    x, W, b = (a.astype(dtype) for a in make_inputs(rng, 33, 20, 17)[:3])
    dy = rng.standard_normal((33, 17)).astype(dtype)
    _, cache = dense.dense_forward(x, W, b, activation)
    dx, dW, db = dense.dense_backward(dy, cache)
    none, dW2, db2 = dense.dense_backward(dy, cache, need_dx=False)
    assert dx is not None and dx.shape == x.shape and none is None
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)
    assert dW.dtype == db.dtype == dtype


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_backward_into_given_buffers(activation):
    # The model passes views of its flat gradient buffer as dW_out/db_out: the results must land
    # there (the very same arrays come back), equal to the freshly allocated ones, and nothing
    # else in the buffer may change.
    rng = np.random.default_rng(4)
    x, W, b = (a.astype(np.float32) for a in make_inputs(rng, 37, 21, 13)[:3])
    dy = rng.standard_normal((37, 13)).astype(np.float32)
    _, cache = dense.dense_forward(x, W, b, activation)
    dx, dW, db = dense.dense_backward(dy, cache)
    flat = np.full(3 + 21 * 13 + 13 + 3, 7.0, dtype=np.float32)
    dW_out, db_out = flat[3:3 + 21 * 13].reshape(21, 13), flat[3 + 21 * 13:-3]
    dx2, dW2, db2 = dense.dense_backward(dy, cache, dW_out=dW_out, db_out=db_out)
    assert dW2 is dW_out and db2 is db_out
    np.testing.assert_array_equal(dW_out, dW)
    np.testing.assert_array_equal(db_out, db)
    np.testing.assert_array_equal(dx2, dx)
    assert (flat[:3] == 7).all() and (flat[-3:] == 7).all()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf * 0 in the GEMMs
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nonfinite_propagation(activation, special):
    """A NaN/Inf in one element of x and a NaN in dy (another row): the same NaN/Inf/saturated
    values as the reference in y, dx, dW and db (assert_close3 checks the placement)."""
    rng = np.random.default_rng(11)
    x, W, b, big = make_inputs(rng, 31, 9, 6, n_big=0)
    x[4, 2] = special
    dy = rng.standard_normal((31, 6))
    j = int(np.argmin(x[7] @ W + b))
    assert (x[7] @ W + b)[j] < 0
    dy[7, j] = np.nan   # NaN * act'(a) is NaN even where act'(a) = 0 (relu), as in the reference
    results = run_three(x, W, b, activation, dy)
    y = results[0][0]
    if np.isnan(special):   # NaN reaches every output of its row (relu included)
        assert np.isnan(y[4]).all()
    assert np.isfinite(np.delete(y, 4, axis=0)).all()
    check_all(results, big)


@pytest.mark.parametrize("impl", [ref, dense], ids=["reference", "cpu"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_finite_differences(activation, impl):
    rng = np.random.default_rng(5)
    for _ in range(100):   # relu: keep every |a| > 1e-3, away from the kink
        x, W, b, _ = make_inputs(rng, 5, 7, 3, scale=2.0, n_big=0)
        if np.abs(x @ W + b).min() > 1e-3:
            break
    else:
        raise AssertionError("no kink-free draw")
    check_backward(lambda x, W, b: impl.dense_forward(x, W, b, activation), impl.dense_backward,
                   [x, W, b], wrt=(0, 1, 2), rng=rng)


def test_unknown_activation():
    x, W, b = np.ones((2, 3)), np.ones((3, 4)), np.ones(4)
    with pytest.raises(ValueError, match="activation"):
        dense.dense_forward(x, W, b, "gelu")


def _activation_grid(dtype):
    """Pre-activations covering every regime: dense in [-120, 120], tiny, saturating, special."""
    tiny = np.logspace(-38, 0, 400)
    special = [0.0, -0.0, 1e4, -1e4, 88.0, -88.0, 104.0, -104.0, 150.0, -150.0, 3e38, -3e38,
               np.inf, -np.inf, np.nan]
    return np.concatenate([np.linspace(-120, 120, 24001), tiny, -tiny, special]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_precision(activation, dtype):
    """The elementwise passes alone (b = 0, no GEMM), elementwise relative error vs float64
    math on the same inputs: float32 (the vectorized exp/expm1/log1p) within 1 ulp; float64
    (libm, against NumPy's own last-bit errors) within 4 ulp. Backward: act'(a) from y against
    the float64 formula on the same y."""
    eps = np.finfo(dtype).eps * (1 if dtype == np.float32 else 4)
    tiny = 2 * np.finfo(dtype).smallest_subnormal
    a = _activation_grid(dtype).reshape(1, -1)
    N, O = a.shape
    act = ref.activation_code(activation)
    y = a.copy()
    dense.dense_bias_act_kernel(y, np.zeros(O, dtype), act, N, O)
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref._activate(a.astype(np.float64), activation)
        if activation == "sigmoid":   # the reference's exp(-softplus(-a)) is off by ~|a| ulp
            e = np.exp(-np.abs(a.astype(np.float64)))
            want = np.where(a >= 0, 1, e) / (1 + e)
    finite = np.isfinite(want)
    err = np.abs(y[finite].astype(np.float64) - want[finite])
    bad = err > eps * np.abs(want[finite]) + tiny
    assert not bad.any(), (f"y off by more than {eps:.1e} relative at a={a[finite][bad][:5]}: "
                           f"{y[finite][bad][:5]} vs {want[finite][bad][:5]}")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(y[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])

    dy = np.random.default_rng(3).uniform(0.5, 2.0, y.shape).astype(dtype)   # not ones
    da, db = np.full_like(y, np.nan), np.empty(O, dtype)
    dense.dense_act_grad_kernel(da, db, dy, y, act, N, O)
    y64 = y.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        grad = {"identity": np.ones_like(y64), "relu": (y64 > 0).astype(np.float64),
                "tanh": (1 - y64) * (1 + y64), "softplus": -np.expm1(-y64),
                "sigmoid": y64 * (1 - y64)}
        want = dy.astype(np.float64) * grad[activation]
    if activation == "identity":   # the kernel's contract: da is dy itself, left unwritten
        assert np.isnan(da).all(), "identity wrote da"
        np.testing.assert_array_equal(db, dy[0])   # one row: db is the column sum of dy
        return
    ok = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(da), ~ok)
    err = np.abs(da[ok].astype(np.float64) - want[ok])
    bad = err > 2 * eps * np.abs(want[ok]) + tiny   # act' within eps, times dy: one rounding more
    assert not bad.any(), (f"dy * act' off by more than {2 * eps:.1e} relative at "
                           f"y={y[ok][bad][:5]}: {da[ok][bad][:5]} vs {want[ok][bad][:5]}")
    np.testing.assert_array_equal(db, da[0])   # one row: db is da


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_takes_a_read_only_dy(activation):
    # dy read-only, as a JAX array arrives through fastvae.ops: for the identity the kernel used
    # dy as its own output buffer, which Numba refused to compile for a read-only array.
    rng = np.random.default_rng(21)
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((9, 7), (7, 5), (5,)))
    y, cache = dense.dense_forward(x, W, b, activation)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = dense.dense_backward(dy, cache)
    dy.flags.writeable = False
    for got, want in zip(dense.dense_backward(dy, cache), expected):
        np.testing.assert_array_equal(got, want)
