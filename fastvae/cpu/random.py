"""Philox4x32-10 counter-based random numbers and the normals derived from them (Numba, CPU).

Stream layout, shared with fastvae/_reference.py (the specification) and the CUDA backend:

- seed (0 <= seed < 2^64) -> Philox key ``(k0, k1) = (seed & 0xffffffff, seed >> 32)``;
- global element index ``g`` -> Philox block ``b = g // 4`` with counter
  ``(b & 0xffffffff, b >> 32, 0, 0)``, lane ``g % 4``;
- uniform ``u = ((bits >> 9) + 0.5) * 2^-23``, exact in float32, in (0, 1), for every dtype;
- a block's four normals are ``(r cos t, r sin t, r' cos t', r' sin t')`` with
  ``r = sqrt(-2 log u0)``, ``t = 2 pi u1``, ``r' = sqrt(-2 log u2)``, ``t' = 2 pi u3``.

Precision. float64 outputs use libm in float64, like ``_reference.normal(dtype=np.float64)``
(agreement ~1e-15). float32 outputs compute in float32 with vectorizable polynomials (Cephes
logf; sin/cos of ``2 pi u`` after an exact reduction of ``u`` to ``[-1/8, 1/8]`` turns): max error
4.4e-7 against the float64 reference over 2^20 normals, against 1.6e-6 for the reference's own
float32 path (whose ``2 pi u`` rounding costs up to ~1 ulp of the angle). So CPU, CUDA (logf,
sincosf) and ``ref32`` agree to ~2e-6, not bit for bit; the uniforms and Philox words are
bit-identical everywhere. Speed, one thread: 4-5 ns per float32 normal against 17-25 ns with
libm logf/sinf/cosf (their scalar calls keep the loop scalar; this Numba has no SVML) and 22-25 ns
for NumPy's standard_normal (timing scripts of the development, 2^20 normals, shared machine).

Integer typing: Numba types ``int64 op uint64`` as float64 (and ``uint64 ^ int64`` as int64), so
every Philox word is held in a uint64 that carries a 32-bit value and every constant is a
np.uint64; a product of two such words is the exact 32x32 -> 64-bit product, which LLVM turns into
vpmuludq, so the block loop vectorizes (~9 ns per block, 2.2 ns per normal, for Philox alone).

fastmath ``reassoc`` can rewrite ``(k + 0.5) * 2^-23`` as ``k * 2^-23 + 2^-24`` and then fold the
constant into a later ``u - 1`` (seen with the earlier 24-bit uniform: 4e-7 errors in sin). The
uniform is therefore made from one integer-to-float conversion: ``float32(2k + 1) * 2^-24``.
"""
import math

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from fastvae._reference import INDEX_LIMIT  # offset + size stays below it (int64 indices)
from fastvae._reference import seed_to_key
from fastvae.cpu._math import f32_bits, f32_from_bits
from fastvae.cpu._numba import FASTMATH, jit, jit_parallel

# Philox helpers are inlined by Numba itself: as separate functions LLVM's inliner gave up on
# the ten rounds and the block loop stayed scalar (25 ns per block instead of 10-12 ns).
jit_inline = numba.njit(inline="always", cache=True, fastmath=set(FASTMATH), nogil=True,
                        error_model="numpy")

PHILOX_M0, PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)   # round multipliers
PHILOX_W0, PHILOX_W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)   # key schedule
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32, SHIFT8 = np.uint64(32), np.uint64(8)
ZERO = np.uint64(0)
F32 = np.float32

# A serial kernel works through CHUNK outputs at a time: Philox words for CHUNK_BLOCKS blocks into
# a (4, CHUNK_BLOCKS) buffer, Box-Muller into a (4 CHUNK_BLOCKS,) buffer, then the consumer reads
# it contiguously. One extra block covers a chunk that starts inside a block.
# 1024: 3.8 ns/normal; 256: 4.3; 64: 4.9 (float32, one thread, noisy 2-core machine).
CHUNK = 1024
CHUNK_BLOCKS = CHUNK // 4 + 1
# Parallel kernels hand out pieces of PARALLEL_PIECE outputs (a multiple of 4, so every piece
# starts at the same lane) to the threads; each piece runs the serial kernel. 4096 rather than
# 16384: (4096, 20) splits into 20 pieces, not 5 (3 + 2 on two threads).
PARALLEL_PIECE = 4 * CHUNK
# Normals below this count are generated serially. Serial vs parallel, float32, 2 threads, other
# core idle (normal_fill_kernel vs normal_fill_parallel_kernel, 10th percentile of 200 calls):
# 8192: 34 vs 21 us (1.6x); 16384: 78 vs 44 us (1.8x); 32768: 153 vs 83 us (1.9x). The parallel
# start-up is ~10 us; on this shared machine a parallel region sometimes waits 4-12 ms for a
# scheduler slice, so the threshold sits a little above the break-even point.
PARALLEL_MIN_NORMALS = 1 << 14


# ---------------------------------------------------------------------------------------------
# Philox (scalars in, scalars out; uint64 words holding 32-bit values)
# ---------------------------------------------------------------------------------------------
@jit_inline
def philox_round(c0, c1, c2, c3, k0, k1):
    """One Philox4x32 round."""
    p0 = PHILOX_M0 * c0          # exact 32x32 -> 64-bit products
    p1 = PHILOX_M1 * c2
    return ((p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32)


@jit_inline
def philox4x32_10_kernel(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0..c3) under key (k0, k1); uint64 words in and out.

    math: fastvae/_reference.py::philox4x32_10 (key bumped before rounds 2..10)
    """
    c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    for _ in range(9):
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
        c0, c1, c2, c3 = philox_round(c0, c1, c2, c3, k0, k1)
    return c0, c1, c2, c3


@jit_inline
def philox_block(k0, k1, b):
    """The four words of stream block b >= 0 (counter (b_lo, b_hi, 0, 0)).

    math: fastvae/_reference.py::philox_blocks
    """
    ub = np.uint64(b)
    return philox4x32_10_kernel(ub & MASK32, ub >> SHIFT32, ZERO, ZERO, k0, k1)


# ---------------------------------------------------------------------------------------------
# float32 math (vectorizable; arguments are uniforms in (0, 1))
# ---------------------------------------------------------------------------------------------
@jit
def uniform_from_bits(bits):
    """uint32 word (any unsigned int type) -> float32 ``((bits >> 9) + 0.5) * 2^-23``.

    math: fastvae/_reference.py::uniform_from_bits. ``2k + 1 < 2^24`` is exact in float32 and
    the scaling by 2^-24 is exact, so u is exactly the reference's value, in (0, 1).
    Written as one int -> float conversion: the form ``(k + 0.5) * 2^-23`` was reassociated by
    fastmath and lost the exactness.
    """
    k = np.uint32(bits) >> np.uint32(9)
    return F32(np.int32((k << np.uint32(1)) | np.uint32(1))) * F32(2.0 ** -24)


@jit
def log_f32(u):
    """Natural log of a positive normal float32 (Cephes logf: u = m 2^e, m in [sqrt(1/2),
    sqrt(2)), a degree-9 polynomial in m - 1; max relative error 1.2e-7 on the uniforms)."""
    bits = f32_bits(u)
    e = F32(((bits >> 23) & 0xFF) - 126)
    m = f32_from_bits((bits & 0x007FFFFF) | 0x3F000000)          # [0.5, 1)
    small = m < F32(0.70710678118654752)
    e = e - F32(1.0) if small else e
    x = (m + m - F32(1.0)) if small else (m - F32(1.0))
    z = x * x
    y = (((((((((F32(7.0376836292e-2) * x - F32(1.1514610310e-1)) * x + F32(1.1676998740e-1)) * x
               - F32(1.2420140846e-1)) * x + F32(1.4249322787e-1)) * x - F32(1.6668057665e-1)) * x
            + F32(2.0000714765e-1)) * x - F32(2.4999993993e-1)) * x + F32(3.3333331174e-1))
         * x * z)
    y = y + F32(-2.12194440e-4) * e - F32(0.5) * z
    return x + y + F32(0.693359375) * e


# Cephes sinf / cosf polynomial coefficients on [-pi/4, pi/4]
SIN_C3, SIN_C5, SIN_C7 = F32(-1.6666654611e-1), F32(8.3321608736e-3), F32(-1.9515295891e-4)
COS_C4, COS_C6, COS_C8 = (F32(4.166664568298827e-2), F32(-1.388731625493765e-3),
                          F32(2.443315711809948e-5))


@jit
def sincos_2pi_f32(u):
    """(sin 2 pi u, cos 2 pi u) for float32 u in [0, 1], max abs error 8e-8.

    Exact reduction in turns: r = u - round(u) in [-1/2, 1/2], q = round(4 r),
    f = r - q / 4 in [-1/8, 1/8] (all exact in float32); Cephes sinf/cosf polynomials at
    x = 2 pi f, then the quadrant q picks and signs them. Written with selects only (a nested
    if/else chain here stopped vectorization: 20 ns -> 1.6 ns per pair).
    """
    r = u - F32(1.0) if u >= F32(0.5) else u
    qf = np.rint(F32(4.0) * r)
    x = (r - qf * F32(0.25)) * F32(2.0 * np.pi)
    z = x * x
    s = x + x * z * (SIN_C3 + z * (SIN_C5 + z * SIN_C7))
    c = F32(1.0) - F32(0.5) * z + z * z * (COS_C4 + z * (COS_C6 + z * COS_C8))
    q = np.int32(qf)
    swap = (q & 1) != 0
    sin_v = c if swap else s
    cos_v = s if swap else c
    sin_v = -sin_v if (q & 2) != 0 else sin_v
    cos_v = -cos_v if ((q + 1) & 2) != 0 else cos_v
    return sin_v, cos_v


# ---------------------------------------------------------------------------------------------
# Box-Muller pieces in the output dtype T (float32: the polynomials above; float64: libm)
# ---------------------------------------------------------------------------------------------
def radius(u, T):
    """``sqrt(-2 log u)`` of a float32 uniform u, in dtype T. Pure-Python equivalent (up to
    rounding); jitted code gets the overload below."""
    return np.sqrt(T(-2.0) * np.log(T(u)))


def sincos_2pi(u, T):
    """``(sin 2 pi u, cos 2 pi u)`` in dtype T. Pure-Python equivalent (up to rounding); jitted
    code gets the overload below."""
    t = T(2.0) * T(np.pi) * T(u)
    return np.sin(t), np.cos(t)


@overload(radius, jit_options={"fastmath": set(FASTMATH)})
def _radius_impl(u, T):
    if T.instance_type == types.float32:
        return lambda u, T: math.sqrt(F32(-2.0) * log_f32(u))
    return lambda u, T: math.sqrt(-2.0 * math.log(np.float64(u)))


@overload(sincos_2pi, jit_options={"fastmath": set(FASTMATH)})
def _sincos_2pi_impl(u, T):
    if T.instance_type == types.float32:
        return lambda u, T: sincos_2pi_f32(u)

    def impl(u, T):
        t = 2.0 * np.pi * np.float64(u)    # the reference's 2 * np.asarray(np.pi) * u
        return math.sin(t), math.cos(t)
    return impl


@jit
def normal_at(k0, k1, g):
    """The float32 standard normal at global index g >= 0 (block g // 4, lane g % 4); the same
    float32 math as normal_fill_kernel, so the two agree bit for bit."""
    w0, w1, w2, w3 = philox_block(k0, k1, g >> 2)
    lane = g & 3
    r = radius(uniform_from_bits(w0 if lane < 2 else w2), F32)
    s, c = sincos_2pi(uniform_from_bits(w1 if lane < 2 else w3), F32)
    return r * c if lane % 2 == 0 else r * s


# ---------------------------------------------------------------------------------------------
# array kernels
# ---------------------------------------------------------------------------------------------
@jit
def philox_kernel(out, counters, k0, k1):
    """out, counters (n, 4) uint32; k0, k1: the key words as uint64."""
    for i in range(counters.shape[0]):
        c0, c1, c2, c3 = philox4x32_10_kernel(
            np.uint64(counters[i, 0]), np.uint64(counters[i, 1]), np.uint64(counters[i, 2]),
            np.uint64(counters[i, 3]), k0, k1)
        out[i, 0], out[i, 1] = np.uint32(c0), np.uint32(c1)
        out[i, 2], out[i, 3] = np.uint32(c2), np.uint32(c3)


@jit
def philox_blocks_kernel(w, k0, k1, first_block, n_blocks):
    """w (4, >= n_blocks) uint32: w[:, i] = the words of block first_block + i (vectorized)."""
    for i in range(n_blocks):
        c0, c1, c2, c3 = philox_block(k0, k1, first_block + i)
        w[0, i], w[1, i] = np.uint32(c0), np.uint32(c1)
        w[2, i], w[3, i] = np.uint32(c2), np.uint32(c3)


@jit
def box_muller_kernel(z, w, n_blocks):
    """z (>= 4 n_blocks,) float32/float64, w (4, >= n_blocks) uint32: z[4 i + lane] = normal of
    lane `lane` of the block whose words are w[:, i].

    math: fastvae/_reference.py::normal
    """
    T = z.dtype.type
    for i in range(n_blocks):
        r01 = radius(uniform_from_bits(w[0, i]), T)
        s01, c01 = sincos_2pi(uniform_from_bits(w[1, i]), T)
        r23 = radius(uniform_from_bits(w[2, i]), T)
        s23, c23 = sincos_2pi(uniform_from_bits(w[3, i]), T)
        z[4 * i], z[4 * i + 1] = r01 * c01, r01 * s01
        z[4 * i + 2], z[4 * i + 3] = r23 * c23, r23 * s23


@jit
def noise_buffers(T):
    """Work buffers for normal_chunk_kernel: Philox words (4, CHUNK_BLOCKS) uint32, normals
    (4 CHUNK_BLOCKS,) of dtype T."""
    return np.empty((4, CHUNK_BLOCKS), np.uint32), np.empty(4 * CHUNK_BLOCKS, T)


@jit
def normal_chunk_kernel(zbuf, wbuf, k0, k1, g0, m):
    """Normals at global indices g0 .. g0 + m - 1 (m <= CHUNK) into zbuf; returns s such that the
    normal of index g0 + j is zbuf[s + j]. One Philox block per four normals; the blocks at
    either end are computed in full when g0 or g0 + m is not a multiple of 4."""
    s = g0 & 3
    n_blocks = (s + m + 3) >> 2
    philox_blocks_kernel(wbuf, k0, k1, g0 >> 2, n_blocks)
    box_muller_kernel(zbuf, wbuf, n_blocks)
    return s


@jit
def normal_fill_kernel(out, k0, k1, offset):
    """out (n,) float32/float64: out[j] = the normal at global index offset + j."""
    wbuf, zbuf = noise_buffers(out.dtype.type)
    n = out.size
    for j0 in range(0, n, CHUNK):
        m = min(CHUNK, n - j0)
        s = normal_chunk_kernel(zbuf, wbuf, k0, k1, offset + j0, m)
        out[j0:j0 + m] = zbuf[s:s + m]


@jit_parallel
def normal_fill_parallel_kernel(out, k0, k1, offset):
    """normal_fill_kernel over pieces of PARALLEL_PIECE outputs in parallel."""
    n = out.size
    for p in numba.prange((n + PARALLEL_PIECE - 1) // PARALLEL_PIECE):
        lo = p * PARALLEL_PIECE
        normal_fill_kernel(out[lo:min(lo + PARALLEL_PIECE, n)], k0, k1, offset + lo)


@jit
def uniform_fill_kernel(out, k0, k1, offset):
    """out (n,) float32/float64: out[j] = ((bits >> 9) + 0.5) 2^-23 (exact in either dtype), with
    bits = word g % 4 of block g // 4, g = offset + j; chunked like normal_fill_kernel.

    math: fastvae/_reference.py::uniform_from_bits
    """
    T = out.dtype.type
    wbuf, ubuf = noise_buffers(T)
    n = out.size
    for j0 in range(0, n, CHUNK):
        m = min(CHUNK, n - j0)
        s = (offset + j0) & 3
        n_blocks = (s + m + 3) >> 2
        philox_blocks_kernel(wbuf, k0, k1, (offset + j0) >> 2, n_blocks)
        for i in range(n_blocks):
            for lane in range(4):
                ubuf[4 * i + lane] = T(uniform_from_bits(wbuf[lane, i]))
        out[j0:j0 + m] = ubuf[s:s + m]


# ---------------------------------------------------------------------------------------------
# launchers (inputs already validated by fastvae.random)
# ---------------------------------------------------------------------------------------------
def kernel_key(seed):
    """fastvae/_reference.py::seed_to_key's (k0, k1) as np.uint64 scalars: the kernels' key
    argument type."""
    k0, k1 = seed_to_key(seed)
    return np.uint64(k0), np.uint64(k1)


def philox4x32_10(counters, key):
    """counters (..., 4) uint32, key (2,) uint32 -> (..., 4) uint32 (a new array)."""
    counters = np.ascontiguousarray(counters, dtype=np.uint32)
    flat = counters.reshape(-1, 4)
    out = np.empty_like(flat)
    key = np.asarray(key, dtype=np.uint32)
    philox_kernel(out, flat, np.uint64(key[0]), np.uint64(key[1]))
    return out.reshape(counters.shape)


def normal(shape, seed, offset=0, dtype=np.float32):
    """Standard normals at global indices offset .. offset + size - 1, C order -> shape."""
    out = np.empty(shape, dtype=dtype)
    assert 0 <= offset and offset + out.size < INDEX_LIMIT
    k0, k1 = kernel_key(seed)
    fill = normal_fill_parallel_kernel if out.size >= PARALLEL_MIN_NORMALS else normal_fill_kernel
    fill(out.reshape(-1), k0, k1, np.int64(offset))
    return out


def uniform(shape, seed, offset=0, dtype=np.float32):
    """Uniforms of the same stream: element g is uniform_from_bits(word g % 4 of block g // 4)."""
    out = np.empty(shape, dtype=dtype)
    assert 0 <= offset and offset + out.size < INDEX_LIMIT
    k0, k1 = kernel_key(seed)
    uniform_fill_kernel(out.reshape(-1), k0, k1, np.int64(offset))
    return out
