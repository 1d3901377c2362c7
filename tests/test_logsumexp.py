"""fastvae.cpu.logsumexp against fastvae/_reference.py: one-shot, streaming, backward."""
import functools

import numpy as np
import pytest

from fastvae import _reference as ref
from fastvae.cpu import logsumexp as lse
from tests import helpers
from tests.helpers import check_backward

SHAPES = [(1, 1), (31, 257), (257, 31), (4099, 7), (3, 5000), (64, 1000)]   # last: prange path


# float64 kernels here are held to 1e-14 (loglik's default of helpers.check3 is 1e-13)
check3 = functools.partial(helpers.check3, rtol64=1e-14)


def _fast_grad(a, dlse):
    return lse.logsumexp_backward(dlse, lse.logsumexp_forward(a)[1])


def _ref_grad(a, dlse):
    return ref.logsumexp_backward(dlse, ref.logsumexp_forward(a)[1])


def special_rows(k, rng):
    """Rows of length k covering the reference's special cases and extremes."""
    base = lambda: rng.standard_normal(k) * 3                            # noqa: E731
    rows = {"normal": base(), "all -inf": np.full(k, -np.inf)}
    r = base(); r[rng.random(k) < 0.5] = -np.inf; r[0] = 1.0; rows["some -inf"] = r
    r = base(); r[k // 2] = np.inf; rows["+inf"] = r
    r = base(); r[k // 3] = np.nan; rows["nan"] = r
    r = base(); r[0] = np.inf; r[-1] = np.nan; rows["+inf and nan"] = r
    r = np.full(k, -np.inf); r[-1] = np.inf; rows["-inf and +inf"] = r
    rows["around -1e30"] = -1e30 + rng.standard_normal(k)
    rows["-1e30 spread"] = -1e30 * (1 + rng.random(k))
    r = base(); r[::2] = 1e4; r[1::2] = -1e4; rows["+-1e4"] = r
    rows["large"] = 80 + rng.standard_normal(k)            # exp(80) overflows float32
    rows["one -inf"] = np.where(np.arange(k) == 0, -np.inf, base())
    # for K > 256 (the kernel's block): a max that grows block by block, -inf blocks first
    rows["increasing"] = np.linspace(-60, 60, k) + base()
    rows["decreasing"] = np.linspace(60, -60, k) + base()
    r = base(); r[:k * 3 // 4] = -np.inf; rows["-inf prefix"] = r
    r = base(); r[-1] = np.nan; rows["nan last"] = r
    r = base(); r[-1] = np.inf; rows["+inf last"] = r
    return rows


def extreme_matrix(k, rng, repeat=1):
    rows = special_rows(k, rng)
    return np.tile(np.stack(list(rows.values())), (repeat, 1)), list(rows) * repeat


# ---------------------------------------------------------------------------------------------
# forward, partial, finalize, backward on random inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_partial_backward(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape) * 4
    check3(lambda x: lse.logsumexp_forward(x)[0], lambda x: ref.logsumexp_forward(x)[0], [a],
           name="lse")
    check3(lse.logsumexp_partial, ref.logsumexp_partial, [a], name="partial")
    dlse = rng.standard_normal(shape[0])
    check3(_fast_grad, _ref_grad, [a, dlse], name="da")


# 60: the parallel kernels; 2500: three blocks of fastvae/cpu/logsumexp.py's SUM_BLOCK (1024)
@pytest.mark.parametrize("k, repeat", [(97, 1), (97, 60), (700, 1), (2500, 1)])
def test_special_rows(k, repeat):
    rng = np.random.default_rng(repeat + k)
    a, names = extreme_matrix(k, rng, repeat)
    dlse = rng.standard_normal(a.shape[0])
    ops = {"lse": lambda x, d: lse.logsumexp_forward(x)[0], "partial": lambda x, d:
           lse.logsumexp_partial(x), "da": _fast_grad}
    refs = {"lse": lambda x, d: ref.logsumexp_forward(x)[0], "partial": lambda x, d:
            ref.logsumexp_partial(x), "da": _ref_grad}
    for op, fast in ops.items():
        # the whole matrix in one call (serial or parallel kernel), then checked row by row so
        # that each row has its own scale (-1e30 rows next to O(1) rows)
        whole = {dt: fast(a.astype(dt), dlse.astype(dt)) for dt in (np.float32, np.float64)}
        for i in [*range(len(names) // repeat), a.shape[0] - 1]:

            def row_of_whole(x, d, i=i):
                out = whole[x.dtype.type]
                return tuple(o[i:i + 1] for o in out) if isinstance(out, tuple) else out[i:i + 1]

            check3(row_of_whole, refs[op], [a[i:i + 1], dlse[i:i + 1]], name=f"{op} {names[i]}")


def test_special_values_exact():
    for dtype in (np.float32, np.float64):
        a = np.array([[-np.inf, -np.inf], [1.0, np.inf], [np.nan, 0.0], [np.inf, np.nan]],
                     dtype=dtype)
        m, s = lse.logsumexp_partial(a)
        np.testing.assert_array_equal(m, [-np.inf, np.inf, np.nan, np.nan])
        np.testing.assert_array_equal(s, [0.0, 1.0, np.nan, np.nan])
        out, cache = lse.logsumexp_forward(a)
        np.testing.assert_array_equal(out, [-np.inf, np.inf, np.nan, np.nan])
        da = lse.logsumexp_backward(np.array([2.0, 1.0, 1.0, 1.0], dtype=dtype), cache)
        np.testing.assert_array_equal(da, [[0, 0], [0, np.nan], [np.nan, np.nan],
                                           [np.nan, np.nan]])
        assert out.dtype == m.dtype == s.dtype == da.dtype == dtype


# ---------------------------------------------------------------------------------------------
# the backward at large |lse|: the float64 lse of the forward's cache
# ---------------------------------------------------------------------------------------------
def autograd_softmax_grad(a, dlse):
    """What JAX's / PyTorch's autograd of logsumexp computes, in a's dtype: ``dlse * exp(a - m) /
    sum_k exp(a_k - m)``. Its float32 weights carry no ulp(|lse|) error (a - m is exact for the
    dominant terms), unlike ``exp(a - lse)`` with lse rounded to float32 (fastvae/_reference.py)."""
    m = a.max(axis=1, keepdims=True)
    e = np.exp(a - m)
    return dlse[:, None] * (e / e.sum(axis=1, keepdims=True))


def large_lse_rows(shape, rng):
    """Rows whose lse is ~ +-500 (and one ~ -5000), a few dominant weights per row: float32
    ulp(|lse|) = 3e-5 (5e-4), so exp(a - lse32) is off by that much relative in every weight.
    Float32 values (held in float64): the float64 reference then sees the same inputs, and the
    three-way tolerance is not loosened by the inputs' own rounding (ulp(|a|) in each weight)."""
    n, k = shape
    offset = np.where(np.arange(n) % 2 == 0, 500.0, -500.0)
    offset[-1] = -5000.0
    return (rng.standard_normal(shape) * 3 + offset[:, None]).astype(np.float32).astype(np.float64)


# float64: exp(a - lse64) keeps ulp(|lse|) of float64 (1e-13 at 5000) relative in each weight
@pytest.mark.parametrize("shape", [(3, 1), (5, 7), (9, 1000), (64, 1000), (4, 2500)])
def test_backward_at_large_lse_within_three_way_of_autograd(shape):
    """Plain three-way tolerance against the autograd formula (float32 and float64): failed by
    exp(a - lse) with the float32 lse (max|da - ref64| 4e-6 to 1.2e-4 against tolerances ~1-3e-6)
    at K > 1."""
    rng = np.random.default_rng(shape[1])
    a = large_lse_rows(shape, rng)
    dlse = rng.standard_normal(shape[0]).astype(np.float32).astype(np.float64)
    helpers.check3(_fast_grad, autograd_softmax_grad, [a, dlse], rtol64=1e-12, name="da")


def test_forward_cache_keeps_float64_lse():
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        for shape in ((3, 50), (64, 1000)):                 # serial and parallel kernel
            a = large_lse_rows(shape, rng).astype(dtype)
            a[0, :] = -np.inf
            a[1, 3] = np.inf
            a[2, 4] = np.nan
            out, (a_c, lse_c, lse64) = lse.logsumexp_forward(a)
            assert a_c is a and lse_c is out and out.dtype == dtype
            assert lse64.dtype == np.float64 and lse64.shape == out.shape
            assert not np.shares_memory(lse64, out)
            np.testing.assert_array_equal(lse64.astype(dtype), out)   # lse: lse64 rounded once
            np.testing.assert_array_equal(lse64[:3], [-np.inf, np.inf, np.nan])
            m, s = lse.logsumexp_partial(a)
            with np.errstate(divide="ignore", invalid="ignore"):
                np.testing.assert_array_equal(lse64[3:], m[3:].astype(np.float64)
                                              + np.log(s[3:].astype(np.float64)))


def test_backward_returns_new_array():
    a = np.random.default_rng(0).standard_normal((5, 9)).astype(np.float32)
    a_copy = a.copy()
    out, cache = lse.logsumexp_forward(a)
    dlse = np.ones(5, np.float32)
    da = lse.logsumexp_backward(dlse, cache)
    assert da is not a and not np.shares_memory(da, a)
    np.testing.assert_array_equal(a, a_copy)


# ---------------------------------------------------------------------------------------------
# streaming: partial per chunk, merge in random order, finalize
# ---------------------------------------------------------------------------------------------
def _stream(a, rng, partial, merge, finalize, n_chunks):
    k = a.shape[1]
    cuts = np.sort(rng.choice(np.arange(1, k), size=min(n_chunks, k) - 1, replace=False))
    states = [partial(np.ascontiguousarray(c)) for c in np.split(a, cuts, axis=1)]
    rng.shuffle(states)
    while len(states) > 1:   # merge random pairs, so the merge tree is random too
        i, j = sorted(rng.choice(len(states), size=2, replace=False))
        merged = merge(*states[i], *states[j])
        states = [s for t, s in enumerate(states) if t not in (i, j)] + [merged]
    return finalize(*states[0])


@pytest.mark.parametrize("k, n_chunks", [(97, 1), (97, 2), (97, 7), (97, 40), (600, 3)])
def test_streaming_matches_one_shot(k, n_chunks):
    rng = np.random.default_rng(n_chunks)
    special, _ = extreme_matrix(k, rng)
    normal = rng.standard_normal((30, k)) * 5
    for a in (normal, special):
        seed = int(rng.integers(1 << 30))

        def fast(x):
            return _stream(x, np.random.default_rng(seed), lse.logsumexp_partial,
                           lse.logsumexp_merge, lse.logsumexp_finalize, n_chunks)

        def reference(x):   # the same chunks and merge order through the reference
            return _stream(x, np.random.default_rng(seed), ref.logsumexp_partial,
                           ref.logsumexp_merge, ref.logsumexp_finalize, n_chunks)

        for i in range(a.shape[0]):            # row by row: each row on its own scale
            row = a[i:i + 1]
            check3(fast, reference, [row], name=f"stream row {i}")
            check3(fast, lambda x: ref.logsumexp_forward(x)[0], [row], name=f"one-shot row {i}")
            for dtype in (np.float32, np.float64):   # and the one-shot kernel itself
                x = row.astype(dtype)
                np.testing.assert_allclose(fast(x), lse.logsumexp_forward(x)[0],
                                           rtol=3e-6 if dtype == np.float32 else 1e-14)


STATES = [(-np.inf, 0.0), (np.inf, 1.0), (np.nan, np.nan), (0.5, 1.7), (-3.0, 2.0),
          (80.0, 1.0), (-1e30, 3.0), (1e4, 1.0), (-1e4, 5.0), (0.5, 1.0)]


def test_merge_and_finalize_all_state_pairs():
    pairs = np.array([[a, b] for a in STATES for b in STATES])   # (pair, side, (m, s))
    m1, s1, m2, s2 = pairs[:, 0, 0], pairs[:, 0, 1], pairs[:, 1, 0], pairs[:, 1, 1]
    for i in range(m1.size):   # each pair on its own scale
        sl = slice(i, i + 1)
        check3(lse.logsumexp_merge, ref.logsumexp_merge, [m1[sl], s1[sl], m2[sl], s2[sl]],
               name=f"merge {STATES[i // len(STATES)]} {STATES[i % len(STATES)]}")
    m = np.array([s[0] for s in STATES])
    s = np.array([s[1] for s in STATES])
    for i in range(m.size):
        check3(lse.logsumexp_finalize, ref.logsumexp_finalize, [m[i:i + 1], s[i:i + 1]],
               name=f"finalize {STATES[i]}")


# ---------------------------------------------------------------------------------------------
# the reference backward against finite differences
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (4, 7), (3, 50)])
def test_reference_backward_finite_differences(shape):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(shape) * 2
    check_backward(ref.logsumexp_forward, ref.logsumexp_backward, [a], wrt=(0,), rng=rng)
