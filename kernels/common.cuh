// common.cuh: device helpers shared by every kernels/<op>.cu (plain CUDA C++, no host code).
//
// Compiled three ways, unchanged: by NVRTC through cupy.RawModule (fastvae/cuda/_module.py
// OPTIONS), by NVRTC directly in tests/cuda/test_compile_nvrtc.py, and by g++ against
// tests/cuda_host/cuda_host.h, which defines CUDA_HOST_HARNESS. Rules that keep all three working:
//   - NVRTC has no <math.h>: no INFINITY/NAN/M_PI macros; constants below are made from bit
//     patterns.
//   - Kernels are `extern "C" __global__`; float32/float64 variants are separate kernels named
//     <name>_f32 / <name>_f64 that call one `template <typename T> __device__` body. Write the body
//     with FV_KERNEL_F32_F64 (below; see adam.cu), which generates both kernels.
//   - Device-only code (inline PTX, intrinsics the harness lacks) goes behind
//     #ifndef CUDA_HOST_HARNESS here, with a plain C++ equivalent for the harness.
//   - Overloads fv_exp/fv_log/... pick the float or double function, so a float kernel never
//     promotes to double by accident (float64 throughput is 1/2 to 1/64 of float32).
#pragma once

#define FV_FULL_MASK 0xffffffffu
#define FV_WARP 32

// ---- float32 / float64 kernels of one templated body --------------------------------------------
// FV_KERNEL_F32_F64(<name>, (<params>), (<args>)) { <body> } defines the body
//     template <typename T> __device__ __forceinline__ void <name>(<params>) { <body> }
// and the two kernels that call it, which the launchers look up by name:
//     extern "C" __global__ void <name>_f32(<params>, T = float)  { <name><T>(<args>); }
//     extern "C" __global__ void <name>_f64(<params>, T = double) { <name><T>(<args>); }
// <params>: the parameter list written with T, __restrict__ and all (outputs, inputs, sizes);
// <args>: its names, in the same order. One list serves the three signatures because each kernel
// is defined in a namespace of its own in which T is a typedef (fv_<name>_f32::T is float);
// extern "C" keeps the kernel's name unmangled, and `using` makes it visible at global scope,
// where the host harness's CUDA_HOST_EXPORT names it. Shared memory is declared in the body.
// The host harness finds the kernels of a .cu in its text, written out or as uses of this macro
// (tests/cuda_host/cuda_host.py::kernel_names); tests/cuda/test_compile_nvrtc.py checks that it
// finds exactly the kernels NVRTC compiled. A use must start its line.
#define FV_KERNEL_F32_F64(name, params, args)                                                     \
    template <typename T> __device__ __forceinline__ void name params;                            \
    FV_KERNEL_OF_TYPE_(name, name##_f32, float, params, args)                                     \
    FV_KERNEL_OF_TYPE_(name, name##_f64, double, params, args)                                    \
    template <typename T> __device__ __forceinline__ void name params
#define FV_KERNEL_OF_TYPE_(body, kernel, type, params, args)                                      \
    namespace fv_##kernel {                                                                       \
    typedef type T;                                                                               \
    extern "C" __global__ void kernel params { body<T> args; }                                    \
    }                                                                                             \
    using fv_##kernel::kernel;

// ---- constants (NVRTC has no INFINITY) ----------------------------------------------------------
#define FV_INF_F __int_as_float(0x7f800000)
#define FV_NEG_INF_F __int_as_float(0xff800000)
#define FV_NAN_F __int_as_float(0x7fffffff)
#define FV_INF_D __longlong_as_double(0x7ff0000000000000LL)
#define FV_NEG_INF_D __longlong_as_double((long long)0xfff0000000000000ULL)
#define FV_NAN_D __longlong_as_double(0x7fffffffffffffffLL)
#define FV_LOG_2PI 1.8378770664093453   // log(2 pi), double (fastvae/_reference.py::LOG_2PI)

// -inf / +inf of the type of a value (overloads; used by the templated kernel bodies)
__device__ __forceinline__ float fv_neg_inf(float) { return FV_NEG_INF_F; }
__device__ __forceinline__ double fv_neg_inf(double) { return FV_NEG_INF_D; }
__device__ __forceinline__ float fv_inf(float) { return FV_INF_F; }
__device__ __forceinline__ double fv_inf(double) { return FV_INF_D; }

// ---- elementary functions, one name per operation, float and double overloads -------------------
__device__ __forceinline__ float fv_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double fv_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float fv_exp(float x) { return expf(x); }
__device__ __forceinline__ double fv_exp(double x) { return exp(x); }
__device__ __forceinline__ float fv_log(float x) { return logf(x); }
__device__ __forceinline__ double fv_log(double x) { return log(x); }
__device__ __forceinline__ float fv_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double fv_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float fv_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double fv_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float fv_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double fv_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float fv_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double fv_abs(double x) { return fabs(x); }
__device__ __forceinline__ bool fv_isnan(float x) { return x != x; }
__device__ __forceinline__ bool fv_isnan(double x) { return x != x; }

// max/min that PROPAGATE NaN (fmaxf/fmaxf drop it: fmaxf(NaN, 1) = 1). NaN in either argument
// -> NaN.
__device__ __forceinline__ float fv_max(float a, float b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ double fv_max(double a, double b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ float fv_min(float a, float b) { return (a < b || a != a) ? a : b; }
__device__ __forceinline__ double fv_min(double a, double b) { return (a < b || a != a) ? a : b; }

// softplus(a) = log(1 + exp(a)) = max(a, 0) + log1p(exp(-|a|)); +inf -> +inf, -inf -> 0,
// NaN -> NaN.
// math: fastvae/_reference.py::_softplus
template <typename T> __device__ __forceinline__ T fv_softplus(T a) {
    return (a > T(0) ? a : T(0)) + fv_log1p(fv_exp(-fv_abs(a)));
}

// sigmoid(a) = 1 / (1 + exp(-a)) without overflow: e = exp(-|a|), 1/(1+e) for a >= 0, e/(1+e) else.
// math: fastvae/_reference.py::_sigmoid
template <typename T> __device__ __forceinline__ T fv_sigmoid(T a) {
    const T e = fv_exp(-fv_abs(a));
    return (a >= T(0) ? T(1) : e) / (T(1) + e);
}

// ---- warp and block reductions (float and double; blockDim.x a multiple of 32, <= 1024) ---------
// warp_*_all: the result in every lane (butterfly with __shfl_xor_sync); all 32 lanes must call.
template <typename T> __device__ __forceinline__ T warp_sum_all(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FV_FULL_MASK, v, off);
    return v;
}
template <typename T> __device__ __forceinline__ T warp_max_all(T v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fv_max(v, __shfl_xor_sync(FV_FULL_MASK, v, off));
    return v;
}

// block_*_all: the result in every thread of the block; every thread must call (it has barriers).
// `scratch` is __shared__ memory of >= 32 elements of T; it may be reused after the call returns.
// Declare it in the kernel's body (e.g. `__shared__ double scratch[32];`), not here: a __shared__
// array in a template is one per instantiation, which is fine, but kernels should show their
// shared memory.
template <typename T> __device__ __forceinline__ T block_sum_all(T v, T* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum_all(v);
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : T(0);   // every warp reduces the partials: no 2nd barrier
    v = warp_sum_all(v);
    __syncthreads();                              // all reads of scratch done before reuse
    return v;
}
template <typename T> __device__ __forceinline__ T block_max_all(T v, T* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max_all(v);
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = (lane < nwarps) ? scratch[lane] : fv_neg_inf(v);
    v = warp_max_all(v);
    __syncthreads();
    return v;
}

// ---- Philox4x32-10 and the normals derived from it ----------------------------------------------
// Stream layout (fastvae/_reference.py, fastvae/cpu/random.py): key (seed_lo, seed_hi); element g
// lives in block b = g / 4, lane g % 4, counter (b_lo, b_hi, 0, 0).
#define FV_PHILOX_M0 0xD2511F53u
#define FV_PHILOX_M1 0xCD9E8D57u
#define FV_PHILOX_W0 0x9E3779B9u
#define FV_PHILOX_W1 0xBB67AE85u

// One round: hi0:lo0 = M0 * c0, hi1:lo1 = M1 * c2;
// (c0, c1, c2, c3) <- (hi1^c1^k0, lo1, hi0^c3^k1, lo0).
__device__ __forceinline__ uint4 philox_round(uint4 c, unsigned k0, unsigned k1) {
    const unsigned long long p0 = (unsigned long long)FV_PHILOX_M0 * c.x;   // mul.wide.u32
    const unsigned long long p1 = (unsigned long long)FV_PHILOX_M1 * c.z;
    return make_uint4((unsigned)(p1 >> 32) ^ c.y ^ k0, (unsigned)p1,
                      (unsigned)(p0 >> 32) ^ c.w ^ k1, (unsigned)p0);
}

// math: fastvae/_reference.py::philox4x32_10 (key bumped by (W0, W1) before rounds 2..10)
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, unsigned k0, unsigned k1) {
    c = philox_round(c, k0, k1);
#pragma unroll
    for (int r = 1; r < 10; r++) {
        k0 += FV_PHILOX_W0;
        k1 += FV_PHILOX_W1;
        c = philox_round(c, k0, k1);
    }
    return c;
}

// The four words of stream block b. math: fastvae/_reference.py::philox_blocks
__device__ __forceinline__ uint4 philox_block(unsigned long long b, unsigned k0, unsigned k1) {
    return philox4x32_10(make_uint4((unsigned)b, (unsigned)(b >> 32), 0u, 0u), k0, k1);
}

// u = ((bits >> 9) + 0.5) * 2^-23 written as float(2k + 1) * 2^-24, k = bits >> 9: 2k + 1 < 2^24 is
// exact in float32 and the scaling is exact, so u is bit-identical to the reference, in (0, 1).
// math: fastvae/_reference.py::uniform_from_bits
__device__ __forceinline__ float uniform_from_bits(unsigned bits) {
    return (float)(int)(((bits >> 9) << 1) | 1u) * 5.9604644775390625e-08f;   // 2^-24
}

// The four standard normals of Philox block b by Box-Muller,
// (r cos t, r sin t, r' cos t', r' sin t'): r = sqrt(-2 log u0), t = 2 pi u1, r' = sqrt(-2 log u2),
// t' = 2 pi u3. sincospi(2 u) computes sin/cos(2 pi u) with an exact argument (2 u is exact), so
// no rounding of 2 pi u is added.
// math: fastvae/_reference.py::normal
__device__ __forceinline__ float4 philox_normals4_f32(unsigned long long b, unsigned k0,
                                                     unsigned k1) {
    const uint4 w = philox_block(b, k0, k1);
    const float r0 = sqrtf(-2.0f * logf(uniform_from_bits(w.x)));
    const float r1 = sqrtf(-2.0f * logf(uniform_from_bits(w.z)));
    float s0, c0, s1, c1;
    sincospif(2.0f * uniform_from_bits(w.y), &s0, &c0);
    sincospif(2.0f * uniform_from_bits(w.w), &s1, &c1);
    return make_float4(r0 * c0, r0 * s0, r1 * c1, r1 * s1);
}
struct fv_double4 { double x, y, z, w; };   // CUDA 13 deprecates double4 (alignment ambiguity)

__device__ __forceinline__ fv_double4 philox_normals4_f64(unsigned long long b, unsigned k0,
                                                          unsigned k1) {
    const uint4 w = philox_block(b, k0, k1);
    const double r0 = sqrt(-2.0 * log((double)uniform_from_bits(w.x)));
    const double r1 = sqrt(-2.0 * log((double)uniform_from_bits(w.z)));
    double s0, c0, s1, c1;
    sincospi(2.0 * (double)uniform_from_bits(w.y), &s0, &c0);
    sincospi(2.0 * (double)uniform_from_bits(w.w), &s1, &c1);
    const fv_double4 z = {r0 * c0, r0 * s0, r1 * c1, r1 * s1};
    return z;
}

// Lane `lane` (0..3) of a float4/fv_double4, without dynamic indexing into a local array (that
// would go to local memory).
__device__ __forceinline__ float fv_lane(float4 v, int lane) {
    return lane == 0 ? v.x : lane == 1 ? v.y : lane == 2 ? v.z : v.w;
}
__device__ __forceinline__ double fv_lane(fv_double4 v, int lane) {
    return lane == 0 ? v.x : lane == 1 ? v.y : lane == 2 ? v.z : v.w;
}

// The standard normal with global index g (one Philox block per call; a kernel that writes four
// consecutive outputs should call philox_normals4_* once instead).
__device__ __forceinline__ float philox_normal_f32(unsigned long long g, unsigned k0, unsigned k1) {
    return fv_lane(philox_normals4_f32(g >> 2, k0, k1), (int)(g & 3));
}
__device__ __forceinline__ double philox_normal_f64(unsigned long long g, unsigned k0,
                                                    unsigned k1) {
    return fv_lane(philox_normals4_f64(g >> 2, k0, k1), (int)(g & 3));
}

// ---- grid-stride loop ---------------------------------------------------------------------------
// for (long long i = fv_global_index(); i < n; i += fv_grid_stride()) {...}: correct for any grid
// size, so the launcher may cap the grid (fewer, longer-lived blocks) without changing the result.
__device__ __forceinline__ long long fv_global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long fv_grid_stride() { return (long long)gridDim.x * blockDim.x; }

// ---- random (kernels/random.cu, kernels/reparam.cu) ---------------------------------------------
// Added for the random/reparam ops: the overloads their templated bodies call, so a `T` body picks
// the float or double normals and the word of a lane without branching on the type.

// Word `lane` (0..3) of a Philox block (no dynamic indexing into a local array).
__device__ __forceinline__ unsigned fv_lane(uint4 v, int lane) {
    return lane == 0 ? v.x : lane == 1 ? v.y : lane == 2 ? v.z : v.w;
}
// The four normals of Philox block b in the type of the last (tag) argument.
__device__ __forceinline__ float4 philox_normals4(unsigned long long b, unsigned k0, unsigned k1,
                                                  float) {
    return philox_normals4_f32(b, k0, k1);
}
__device__ __forceinline__ fv_double4 philox_normals4(unsigned long long b, unsigned k0,
                                                      unsigned k1, double) {
    return philox_normals4_f64(b, k0, k1);
}
