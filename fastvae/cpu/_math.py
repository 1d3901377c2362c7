"""Vectorizable scalar math for the Numba kernels: one copy of each helper.

Numba has no SVML here, so ``math.exp``/``math.log1p`` are scalar libm calls (~5-30 ns per
element) that keep a loop scalar. The helpers below are branch-free polynomials that LLVM
vectorizes (AVX2: 8 float32 or 4 float64 lanes).

    helper              arithmetic       domain       accuracy               used by
    exp_f64             float64          x <= 709     1 ulp, 0 below -708.3  logsumexp, iwae
    exp_f32             float32          x <= 88      1 ulp, 0 below -87.3   logsumexp, iwae
    fast_exp(x)         exp_f32 or exp_f64 by the dtype of x                 logsumexp, iwae
    exp_f32_via_f64     float64          all x        0.6 ulp, subnormals    reparam
    exp_nonpositive     float64          x <= 0       2 ulp, subnormals      loglik
    log1p_unit_f64      float64          [0, 1]       2 ulp (1.77 measured)  loglik, iwae
    log1p_unit_f32      float32          [0, 1]       1 ulp                  iwae
    log1p_unit(x)       log1p_unit_f32 or log1p_unit_f64 by the dtype of x   iwae
    softplus, sigmoid   float64          all x        4 ulp, 6 ulp           loglik
    *_like(x, like)     float64 (~1e-9)  see each     1 float32 ulp          dense
    maxnum(a, b)        llvm.maxnum: a max that vectorizes as a reduction    logsumexp
    f32_bits, f32_from_bits, f64_bits, f64_from_bits: IEEE bit casts         random, here

Two exps for float64 on purpose: ``exp_f64`` covers the whole range and flushes results below
2.3e-308 to 0; ``exp_nonpositive`` only takes x <= 0 but rounds subnormal results correctly
(tests/test_math.py checks it there to 2 ulp). Two exps for float32 too: ``exp_f32`` runs in
float32 (8 lanes), ``exp_f32_via_f64`` in float64 (4 lanes) with one final rounding (0.6 ulp,
subnormals right). The ``*_like`` helpers of the dense activations are a third kind: Numba-IR
inlined (so any loop around them vectorizes), float64 arithmetic accurate enough for float32
results, and libm when ``like`` is a float64 array.

All jitted helpers use ``jit_math`` (fastvae/cpu/_numba.py: fast-math without ``reassoc``) so
that range reductions keep their evaluation order, except ``exp_f32_via_f64``, which keeps the
``jit`` flags it was measured with, and the ``*_like`` helpers, which take the caller's flags.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from fastvae.cpu._numba import MATH_FASTMATH, jit, jit_math

_F = np.float32


# ---------------------------------------------------------------------------------------------
# bit casts (LLVM bitcast: free, and vectorizable) and maxnum
# ---------------------------------------------------------------------------------------------
def _float_bits(name, float_type, int_type):
    """An intrinsic ``name(x)``: float_type x -> its IEEE bits as int_type (same width)."""
    def bits(typingctx, x):
        if x != float_type:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(int_type))
        return int_type(float_type), codegen
    bits.__name__ = bits.__qualname__ = name
    bits.__doc__ = f"{float_type} -> its IEEE bits as {int_type}."
    return intrinsic(bits)


f32_bits = _float_bits("f32_bits", types.float32, types.int32)
f64_bits = _float_bits("f64_bits", types.float64, types.int64)


@intrinsic
def f32_from_bits(typingctx, x):
    """Integer (low 32 bits) -> the float32 with those IEEE bits."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, context.get_value_type(types.int32))
        return builder.bitcast(v, context.get_value_type(types.float32))
    return types.float32(x), codegen


@intrinsic
def f64_from_bits(typingctx, x):
    """int64 -> the float64 with those IEEE bits (e.g. ``2^k`` as ``(k + 1023) << 52``)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(x), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """``llvm.maxnum``: the larger of a and b, and the other one if either is NaN. Unlike
    ``x if x > m else m``, LLVM vectorizes it as a reduction without the ``nnan`` flag
    (2.3x faster row max at K = 5000 float32)."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)
    return a(a, b), codegen


def _overload_by_dtype(generic, f32_impl, f64_impl):
    """Make ``generic(x)`` call ``f32_impl`` or ``f64_impl`` in jitted code, by the type of x."""
    def choose(x):
        if x == types.float32:
            return lambda x: f32_impl(x)
        if x == types.float64:
            return lambda x: f64_impl(x)
        return None
    overload(generic, jit_options={"fastmath": set(MATH_FASTMATH)})(choose)


# ---------------------------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 6.93147180369123816490e-01   # fdlibm: ln 2 = LN2_HI + LN2_LO; k LN2_HI exact, |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_INV_FACT = tuple(1.0 / math.factorial(i) for i in range(14))   # 1/i!, Taylor of exp
_SHIFT64 = 6755399441055744.0             # 1.5 * 2^52: t = x + SHIFT rounds x to an integer
_SHIFT32 = _F(12582912.0)                  # 1.5 * 2^23
_LN2_HI32, _LN2_LO32 = _F(0.693359375), _F(-2.12194440e-4)   # Cephes expf split
_P32 = tuple(_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                             4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_SQRT2_M1 = 0.41421356237309504880
# fdlibm e_log.c: R(z) ~ 2 atanh(s) / s - 2 on |s| <= 0.1716, error < 2^-58.45
_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
       2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
       1.479819860511658591e-01)
_LG32 = (_F(2 / 3), _F(2 / 5), _F(2 / 7), _F(2 / 9))   # Taylor; truncation < 1e-9 on |s| < 0.172


# ---------------------------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------------------------
@jit_math
def exp_f64(x):
    """``exp(x)`` for float64 ``x <= 709``, within 1 ulp; 0 below -708.3 (no subnormals: the
    error there is < 2.3e-308); +inf above 709 and for +inf; NaN -> NaN.

    ``x = n ln2 + r``, ``|r| <= ln2 / 2``, ``exp(r)`` by its degree-13 Taylor polynomial
    (truncation < 1e-17), ``2^n`` from exponent bits: ``n`` sits in the low bits of
    ``t = x log2(e) + 1.5 * 2^52``, so no float-to-int conversion is needed.
    """
    t = x * _LOG2E + _SHIFT64
    n = t - _SHIFT64
    r = (x - n * _LN2_HI) - n * _LN2_LO
    c = _INV_FACT
    p = c[13]
    for i in range(12, -1, -1):
        p = p * r + c[i]
    y = p * f64_from_bits((f64_bits(t) + 1023) << 52)
    y = 0.0 if x < -708.3 else y           # NaN compares false and stays NaN through p
    return np.inf if x > 709.0 else y


@jit_math
def exp_f32(x):
    """``exp(x)`` for float32 ``x <= 88``, within 1 ulp of float32 (Cephes expf polynomial);
    0 below -87.3 (no subnormals: error < 1.2e-38); +inf above 88 and for +inf; NaN -> NaN."""
    t = x * _F(_LOG2E) + _SHIFT32
    n = t - _SHIFT32
    r = (x - n * _LN2_HI32) - n * _LN2_LO32
    c = _P32
    p = c[0]
    for i in range(1, 6):
        p = p * r + c[i]
    p = p * (r * r) + r + _F(1.0)
    y = p * f32_from_bits((f32_bits(t) + np.int32(127)) << np.int32(23))
    y = _F(0.0) if x < _F(-87.3) else y
    return _F(np.inf) if x > _F(88.0) else y


def fast_exp(x):
    """``exp(x)`` in the dtype of x (float32 or float64) inside Numba kernels; see exp_f32/64."""
    raise NotImplementedError("fast_exp is only callable from Numba-compiled code")


_overload_by_dtype(fast_exp, exp_f32, exp_f64)


@jit
def exp_f32_via_f64(x):
    """float32 exp, vectorizable: in float64, ``x = n ln2 + r`` with n = rint(x / ln2),
    |r| <= ln2 / 2, ``e^r`` by its degree-7 Taylor polynomial (relative error 5e-9), times
    ``2^n`` built from its bits; one final rounding to float32 (within 0.6 ulp). Overflow to
    +inf, underflow to 0 and subnormals come out of that rounding; x is clamped to [-200, 200]
    first so 2^n stays a normal float64; NaN passes the clamp and the polynomial (the bits of
    2^n are then garbage, but NaN times anything is NaN).

    Speed: the given-noise reparam forward kernel takes 3.4-3.7 ns per element with it,
    4.1-5.2 ns with math.exp, NumPy 4.0-6.8 ns (float32, n = 2560 and 16384, one thread,
    10th percentile of 300 calls).
    """
    xd = np.float64(x)
    xd = 200.0 if xd > 200.0 else xd
    xd = -200.0 if xd < -200.0 else xd
    n = np.rint(xd * _LOG2E)
    r = xd - n * _LN2
    p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (
        1.0 / 120 + r * (1.0 / 720 + r * (1.0 / 5040)))))))
    ni = np.int64(n) if n == n else np.int64(0)
    return np.float32(p * f64_from_bits((ni + 1023) << 52))


_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13 = _INV_FACT


@jit_math
def exp_nonpositive(a):
    """``exp(a)`` for float64 ``a <= 0`` (NaN -> NaN, -inf -> 0), within 2 ulp, subnormal results
    included. Wrong for ``a > 0``: use it as ``exp_nonpositive(-abs(a))``.

    ``a = k ln2 + r`` with ``k = round(a / ln2)``, ``|r| <= ln2 / 2``; ``exp(r)`` by a degree-13
    Taylor polynomial in Estrin form (short dependency chains); ``2^k`` built from exponent bits
    as ``2^(k/2) 2^(k - k/2)`` so that subnormal results are rounded once.
    """
    ac = a if a > -746.0 else -746.0                # exp(-746) = 0; keeps k in int32
    ki = np.int64(np.int32(ac * _LOG2E - 0.5))      # a <= 0: truncation = round to nearest
    k = np.float64(ki)
    r = (ac - k * _LN2_HI) - k * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    q0 = (_E0 + _E1 * r) + (_E2 + _E3 * r) * r2
    q1 = (_E4 + _E5 * r) + (_E6 + _E7 * r) * r2
    q2 = (_E8 + _E9 * r) + (_E10 + _E11 * r) * r2
    p = (q0 + q1 * r4) + (q2 + (_E12 + _E13 * r) * r4) * (r4 * r4)
    k1 = ki >> 1
    res = p * f64_from_bits((k1 + 1023) << 52) * f64_from_bits((ki - k1 + 1023) << 52)
    return res if a == a else a


# ---------------------------------------------------------------------------------------------
# log1p on [0, 1] (fdlibm's log kernel, no exponent extraction)
# ---------------------------------------------------------------------------------------------
# One float64 version kept of two (loglik.py had fdlibm's two-chain evaluation of R, iwae.py
# Horner's rule): same maximum error, 1.77 ulp against long double over 3.2e6 points in [0, 1]
# (they differ in the last bit for 0.15% of them); Horner 4.13 vs 4.26 ns per element (float64,
# 4096-element loop, one thread, medians of 2000 calls).
@jit_math
def log1p_unit_f64(e):
    """``log1p(e)`` for float64 ``0 <= e <= 1``, within 2 ulp (measured 1.77); NaN -> NaN.

    ``1 + e > sqrt 2``: ``log(1 + e) = ln 2 + log(1 + f)``, ``f = (e - 1) / 2`` (exact for
    e >= 1/2); else ``f = e``; then ``|f| <= sqrt2 - 1``, ``s = f / (2 + f)``,
    ``log(1 + f) = f - (f^2/2 - s (f^2/2 + R))``.
    """
    big = e > _SQRT2_M1
    f = (e - 1.0) * 0.5 if big else e
    s = f / (2.0 + f)
    z = s * s
    r = _LG[6]
    for i in range(5, -1, -1):
        r = r * z + _LG[i]
    r = r * z
    hfsq = 0.5 * f * f
    val = f - (hfsq - s * (hfsq + r))
    return (val + _LN2_LO) + _LN2_HI if big else val


@jit_math
def log1p_unit_f32(e):
    """``log1p(e)`` for float32 ``0 <= e <= 1``, within 1 ulp of float32; NaN -> NaN."""
    big = e > _F(_SQRT2_M1)
    f = (e - _F(1.0)) * _F(0.5) if big else e
    s = f / (_F(2.0) + f)
    z = s * s
    r = ((_LG32[3] * z + _LG32[2]) * z + _LG32[1]) * z + _LG32[0]
    r = r * z
    hfsq = _F(0.5) * f * f
    val = f - (hfsq - s * (hfsq + r))
    return val + _F(_LN2_HI + _LN2_LO) if big else val


def log1p_unit(e):
    """``log1p(e)`` for ``0 <= e <= 1`` in the dtype of e, inside Numba kernels."""
    raise NotImplementedError("log1p_unit is only callable from Numba-compiled code")


_overload_by_dtype(log1p_unit, log1p_unit_f32, log1p_unit_f64)


# ---------------------------------------------------------------------------------------------
# softplus and sigmoid (float64)
# ---------------------------------------------------------------------------------------------
@jit_math
def softplus(a):
    """``log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|))``, float64; +inf -> +inf, -inf -> 0,
    NaN -> NaN. Within 4 ulp of ``np.logaddexp(0, a)``."""
    return (a if a > 0.0 else 0.0) + log1p_unit_f64(exp_nonpositive(-abs(a)))


@jit_math
def sigmoid(a):
    """``1 / (1 + exp(-a))`` without overflow, float64, within 6 ulp: ``e = exp(-|a|)``, then
    ``1 / (1 + e)`` for a >= 0 and ``e / (1 + e)`` otherwise. +-inf -> 1, 0; NaN -> NaN;
    |a| = 1e4 is fine; subnormal results for a < -708 are rounded, not flushed."""
    e = exp_nonpositive(-abs(a))
    return (1.0 if a >= 0.0 else e) / (1.0 + e)


# ---------------------------------------------------------------------------------------------
# exp / expm1 / log1p for float32 activations: exp_nonpos_like, expm1_nonpos_like,
# log1p_unit_like (x, like)
# ---------------------------------------------------------------------------------------------
# For float32 arrays these run branch-free float64 arithmetic, which LLVM vectorizes; accurate to
# ~1e-9 relative, i.e. within 1 float32 ulp after rounding
# (tests/test_dense.py::test_activation_precision). ns per element, float32, 128 x 784, 1 thread,
# thread CPU time (benchmarks/dev/dense_variants.py rows), libm -> these helpers (NumPy):
#   forward  sigmoid 9.1 -> 5.0 (4.5: 1 / (1 + np.exp(-a))), tanh 27.0 -> 7.3 (7.4: np.tanh),
#            softplus 35.8 -> 8.3 (27.2: np.logaddexp(0, a));  backward softplus 22.2 -> 7.8.
# float64 arrays keep libm. The choice is made at compile time from the dtype of `like` (an
# array of the kernel); inline="always" puts the code into the loop body (Numba-IR inlining,
# with the caller's fast-math flags), so the loops around them still vectorize.

# Taylor coefficients 1/k!, k = 10 .. 2, for Horner's rule
_C10, _C9, _C8, _C7, _C6 = 1 / 3628800, 1 / 362880, 1 / 40320, 1 / 5040, 1 / 720
_C5, _C4, _C3, _C2 = 1 / 120, 1 / 24, 1 / 6, 1 / 2


@njit(inline="always")   # numba-IR inlining, so the loops around it still vectorize
def _f32_expm1_poly(r):
    # expm1(r) to r^10: truncation < 4e-12 relative at |r| = 104/256, < 1e-17 for |r| < 0.12
    q = ((((((((_C10 * r + _C9) * r + _C8) * r + _C7) * r + _C6) * r + _C5) * r + _C4) * r
          + _C3) * r + _C2) * r
    return (q + 1.0) * r


def _f32_exp_nonpos(x, like):
    # exp(x) for x <= 0 as exp(x / 256)^256: 8 squarings multiply relative errors by 256.
    # exp(-104) rounds to 0 in float32, so the clamp changes no result (np.maximum keeps NaN).
    r = np.maximum(x, -104.0) * (1.0 / 256.0)
    e = _f32_expm1_poly(r) + 1.0
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    return e


def _f32_expm1_nonpos(x, like):
    # expm1(x) for x <= 0 by the doubling expm1(2r) = q (2 + q) from q = expm1(x / 256):
    # no cancellation for small |x|, and relative errors do not grow for q in [-1, 0].
    q = _f32_expm1_poly(np.maximum(x, -104.0) * (1.0 / 256.0))
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    q = q * (2.0 + q)
    return q


def _f32_log1p_unit(x, like):
    # log1p(x) for x in [0, 1] as 2 atanh(u), u = x / (2 + x) <= 1/3; odd series to u^21
    # (truncation < 2e-12 relative)
    u = x / (2.0 + x)
    v = u * u
    s = (((((((((1 / 21 * v + 1 / 19) * v + 1 / 17) * v + 1 / 15) * v + 1 / 13) * v + 1 / 11)
             * v + 1 / 9) * v + 1 / 7) * v + 1 / 5) * v + 1 / 3) * v + 1.0
    return 2.0 * u * s


def exp_nonpos_like(x, like):
    """exp(x) for x <= 0 or NaN; in kernels, vectorizable when ``like`` is a float32 array."""
    return math.exp(x)


def expm1_nonpos_like(x, like):
    """expm1(x) for x <= 0 or NaN; in kernels, vectorizable when ``like`` is a float32 array."""
    return math.expm1(x)


def log1p_unit_like(x, like):
    """log1p(x) for x in [0, 1] or NaN; in kernels, vectorizable when ``like`` is float32."""
    return math.log1p(x)


def _by_like_dtype(f32_impl, libm_impl):
    def choose(x, like):
        if isinstance(like, types.Array) and like.dtype == types.float32:
            return f32_impl
        return libm_impl
    return choose


overload(exp_nonpos_like, inline="always")(_by_like_dtype(_f32_exp_nonpos, exp_nonpos_like))
overload(expm1_nonpos_like, inline="always")(_by_like_dtype(_f32_expm1_nonpos, expm1_nonpos_like))
overload(log1p_unit_like, inline="always")(_by_like_dtype(_f32_log1p_unit, log1p_unit_like))
