// Test kernels for kernels/common.cuh: every helper the op kernels use, exposed as a kernel so the
// host harness can check it against fastvae/_reference.py and NVRTC can compile it (the helpers are
// templates/inline functions: they are only compiled where something calls them).
// Not shipped: tests/cuda/test_common_cuh.py and test_compile_nvrtc.py use it.
#include "common.cuh"

// out (n, 4) uint32, counters (n, 4) uint32, key (2,). math: fastvae/_reference.py::philox4x32_10
extern "C" __global__ void philox_check(unsigned* __restrict__ out, const unsigned* __restrict__ ctr,
                                        unsigned k0, unsigned k1, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const uint4 w = philox4x32_10(make_uint4(ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2],
                                                 ctr[4 * i + 3]), k0, k1);
        out[4 * i] = w.x; out[4 * i + 1] = w.y; out[4 * i + 2] = w.z; out[4 * i + 3] = w.w;
    }
}

// out (n,) float32 uniforms of bits (n,). math: fastvae/_reference.py::uniform_from_bits
extern "C" __global__ void uniform_check(float* __restrict__ out, const unsigned* __restrict__ bits,
                                         int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = uniform_from_bits(bits[i]);
}

// z (n,) normals with global indices offset .. offset + n - 1. math: fastvae/_reference.py::normal
extern "C" __global__ void normal_check_f32(float* __restrict__ z, unsigned k0, unsigned k1,
                                            long long offset, long long n) {
    for (long long j = fv_global_index(); j < n; j += fv_grid_stride())
        z[j] = philox_normal_f32((unsigned long long)(offset + j), k0, k1);
}
extern "C" __global__ void normal_check_f64(double* __restrict__ z, unsigned k0, unsigned k1,
                                            long long offset, long long n) {
    for (long long j = fv_global_index(); j < n; j += fv_grid_stride())
        z[j] = philox_normal_f64((unsigned long long)(offset + j), k0, k1);
}

// sp, sg (n,) softplus and sigmoid of a (n,). math: fastvae/_reference.py::_softplus, ::_sigmoid
template <typename T>
__device__ __forceinline__ void activations_body(T* sp, T* sg, const T* a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { sp[i] = fv_softplus(a[i]); sg[i] = fv_sigmoid(a[i]); }
}
extern "C" __global__ void activations_check_f32(float* sp, float* sg, const float* a, int n) {
    activations_body(sp, sg, a, n);
}
extern "C" __global__ void activations_check_f64(double* sp, double* sg, const double* a, int n) {
    activations_body(sp, sg, a, n);
}

// sums, maxs (rows,) of x (rows, cols): one block per row, block_sum_all / block_max_all; every
// thread checks it got the same result (bad -> 1 if not).
template <typename T>
__device__ __forceinline__ void row_reduce_body(T* sums, T* maxs, int* bad, const T* x, int rows,
                                                int cols, T* scratch) {
    const int row = blockIdx.x;
    if (row >= rows) return;                 // uniform per block: no thread skips a barrier
    T s = T(0), mx = fv_neg_inf(T(0));
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        s += x[(size_t)row * cols + j];
        mx = fv_max(mx, x[(size_t)row * cols + j]);
    }
    s = block_sum_all(s, scratch);
    mx = block_max_all(mx, scratch);
    if (threadIdx.x == 0) { sums[row] = s; maxs[row] = mx; }
    __syncthreads();
    if (!(sums[row] == s || (s != s && sums[row] != sums[row])) ||
        !(maxs[row] == mx || (mx != mx && maxs[row] != maxs[row])))
        atomicExch(bad, 1);
}
extern "C" __global__ void row_reduce_check_f32(float* sums, float* maxs, int* bad, const float* x,
                                                int rows, int cols) {
    __shared__ float scratch[32];
    row_reduce_body(sums, maxs, bad, x, rows, cols, scratch);
}
extern "C" __global__ void row_reduce_check_f64(double* sums, double* maxs, int* bad,
                                                const double* x, int rows, int cols) {
    __shared__ double scratch[32];
    row_reduce_body(sums, maxs, bad, x, rows, cols, scratch);
}
