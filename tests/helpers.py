"""Shared checks: the three-way tolerance (a float32 result against the float32 and float64
references, ``assert_close3``) and central finite differences."""
import numpy as np


def _first_mismatches(bad, limit=5):
    return [tuple(int(i) for i in idx) for idx in np.argwhere(bad)[:limit]]


def assert_close3(out, ref32, ref64, atol=1e-6, name="out"):
    """``max|out - ref64| <= 2 max|ref32 - ref64| + atol`` elementwise-aware.

    NaN and +-Inf must sit at exactly the same places with the same sign in out and ref64.
    Reports the worst index and the first mismatching indices.
    """
    out, ref32, ref64 = (np.asarray(a, dtype=np.float64) for a in (out, ref32, ref64))
    assert out.shape == ref64.shape, f"{name}: shape {out.shape} != reference {ref64.shape}"
    nonfinite_ref = ~np.isfinite(ref64)
    same_special = np.where(np.isnan(ref64), np.isnan(out), out == ref64)
    bad_special = nonfinite_ref & ~same_special
    bad_special |= np.isfinite(ref64) & ~np.isfinite(out)
    assert not bad_special.any(), (
        f"{name}: NaN/Inf placement differs at {_first_mismatches(bad_special)}: "
        f"out={out[bad_special][:5]}, ref64={ref64[bad_special][:5]}")
    finite = np.isfinite(ref64)
    if not finite.any():
        return
    with np.errstate(invalid="ignore"):   # inf - inf where not finite: masked out below
        err = np.where(finite, np.abs(out - ref64), 0.0)
        err32 = np.where(finite & np.isfinite(ref32), np.abs(ref32 - ref64), 0.0)
    tol = 2 * err32.max() + atol
    if err.max() > tol:
        bad = err > tol
        worst = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(
            f"{name}: max|out-ref64|={err.max():.3e} > tol={tol:.3e} "
            f"(2*max|ref32-ref64|={2 * err32.max():.3e}, atol={atol:.1e}); worst at {worst}: "
            f"out={out[worst]!r}, ref64={ref64[worst]!r}; {int(bad.sum())} bad, first "
            f"{_first_mismatches(bad)}")


def _scale(arrays):
    finite = [np.abs(a[np.isfinite(a)]) for a in arrays]
    return max([1.0] + [float(f.max()) for f in finite if f.size])


def _cast(inputs, dtype):
    return tuple(np.asarray(a, dtype) if isinstance(a, np.ndarray) else a for a in inputs)


def check3(fast, reference, inputs, rtol32=1e-6, rtol64=1e-13, name="out"):
    """float32: out vs ref32 vs ref64 (three-way); float64: out vs ref64.

    ``fast`` and ``reference`` take ``inputs`` (arrays are cast to each dtype, other values passed
    as they are) and return an array or a tuple of arrays. atol = rtol * max(1, max |finite
    ref64|), since errors scale with the values' magnitude."""
    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)           # noqa: E731
    r64 = as_tuple(reference(*_cast(inputs, np.float64)))
    scale = _scale(r64)
    for dtype, rtol in ((np.float32, rtol32), (np.float64, rtol64)):
        ins = _cast(inputs, dtype)
        out = as_tuple(fast(*ins))
        r32 = as_tuple(reference(*ins)) if dtype == np.float32 else r64
        for i, (o, a, b) in enumerate(zip(out, r32, r64, strict=True)):
            assert o.dtype == dtype, f"{name}[{i}]: dtype {o.dtype}"
            assert_close3(o, a, b, atol=rtol * scale, name=f"{name}[{i}] {np.dtype(dtype).name}")


def to32(*arrays):
    return tuple(np.asarray(a, dtype=np.float32) for a in arrays)


def to64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def check_backward(forward, backward, inputs, wrt, rng, n_directions=3, h=1e-6, rtol=1e-5,
                   atol=1e-8):
    """Central finite differences along random directions, float64.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> grads for the inputs listed in
    ``wrt`` (indices into inputs, in that order). For a random upstream ``dout`` and random unit
    directions ``v`` checks ``<dout, (f(x + h v) - f(x - h v)) / 2h> == sum_i <grad_i, v_i>``.
    """
    inputs = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) else a for a in inputs]
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(wrt), f"backward returned {len(grads)} grads, expected {len(wrt)}"
    for _ in range(n_directions):
        directions = [rng.standard_normal(inputs[i].shape) for i in wrt]
        plus, minus = list(inputs), list(inputs)
        for i, v in zip(wrt, directions):
            plus[i] = inputs[i] + h * v
            minus[i] = inputs[i] - h * v
        numeric = np.sum(dout * (forward(*plus)[0] - forward(*minus)[0])) / (2 * h)
        analytic = sum(np.sum(g * v) for g, v in zip(grads, directions))
        assert abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)), (
            f"finite differences {numeric!r} != backward {analytic!r}")
