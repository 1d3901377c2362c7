// dense.cu: the fused epilogues around the GEMMs of the dense layer y = act(x @ W + b).
// Launcher: fastvae/cuda/dense.py (the GEMMs with xp.matmul = cuBLAS, grid, block, dtype dispatch).
// CPU twin: fastvae/cpu/dense.py.
//
// Forward: the GEMM writes x @ W into y; dense_bias_act_kernel then adds the bias and applies the
// activation in place: reads y, b (cached), writes y: 2 words per element.
// Backward: dense_act_grad_kernel forms da = dy * act'(a), act' recomputed from the output y (the
// pre-activation is not stored): relu [y > 0], tanh (1 - y)(1 + y), sigmoid y (1 - y), softplus
// sigmoid(a) = -expm1(-y); and per-block partial column sums of da; dense_bias_grad_kernel adds
// the partials in a fixed order (deterministic, no float atomics): reads dy, y, writes da: 3 words
// per element (identity: da is dy, only dy is read: 1 word), plus the partials (R, O) float64
// written once and read once. The launcher then runs dx = da @ W.T and dW = x.T @ da.
#include "common.cuh"

// Activation codes: indices in fastvae/_reference.py::ACTIVATIONS (activation_code).
#define DENSE_IDENTITY 0
#define DENSE_RELU 1
#define DENSE_TANH 2
#define DENSE_SOFTPLUS 3
#define DENSE_SIGMOID 4

// act(a). math: fastvae/_reference.py::_activate
template <int ACT, typename T> __device__ __forceinline__ T dense_act(T a) {
    if (ACT == DENSE_RELU) return (a <= T(0)) ? T(0) : a;   // NaN stays (a > 0 ? a : 0 drops it)
    if (ACT == DENSE_TANH) return fv_tanh(a);
    if (ACT == DENSE_SOFTPLUS) return fv_softplus(a);
    if (ACT == DENSE_SIGMOID) return fv_sigmoid(a);
    return a;
}

// act'(a) from y = act(a). math: fastvae/_reference.py::_activation_grad
template <int ACT, typename T> __device__ __forceinline__ T dense_act_grad(T y) {
    if (ACT == DENSE_RELU) return (y > T(0)) ? T(1) : T(0);
    if (ACT == DENSE_TANH) return (T(1) - y) * (T(1) + y);   // 1 - y^2 without rounding y*y
    if (ACT == DENSE_SOFTPLUS) return -fv_expm1(-y);          // sigmoid(a) = 1 - exp(-softplus(a))
    if (ACT == DENSE_SIGMOID) return y * (T(1) - y);
    return T(1);
}

// y (N, O) flat (n = N O) in place: y[i] = act(y[i] + b[j]), j = i % O. The column j follows the
// grid-stride loop incrementally (one 64-bit modulo per thread, not per element). The flat loop
// keeps every thread busy whatever O is (O = 20 for the latent layers).
template <int ACT, typename T>
__device__ __forceinline__ void bias_act_flat(T* __restrict__ y, const T* __restrict__ b,
                                              long long n, int O) {
    const long long stride = fv_grid_stride();
    const int stride_col = (int)(stride % O);
    long long i = fv_global_index();
    int j = (int)(i % O);
    for (; i < n; i += stride) {
        y[i] = dense_act<ACT>(y[i] + b[j]);
        j += stride_col;
        if (j >= O) j -= O;
    }
}

// math: fastvae/_reference.py::dense_forward (after the GEMM). y (N, O) in place, b (O,).
// The activation switch is outside the element loop (one loop per activation).
FV_KERNEL_F32_F64(dense_bias_act_kernel,
                  (T* __restrict__ y, const T* __restrict__ b, int act, long long N, int O),
                  (y, b, act, N, O)) {
    const long long n = N * O;
    switch (act) {
        case DENSE_RELU: bias_act_flat<DENSE_RELU>(y, b, n, O); break;
        case DENSE_TANH: bias_act_flat<DENSE_TANH>(y, b, n, O); break;
        case DENSE_SOFTPLUS: bias_act_flat<DENSE_SOFTPLUS>(y, b, n, O); break;
        case DENSE_SIGMOID: bias_act_flat<DENSE_SIGMOID>(y, b, n, O); break;
        default: bias_act_flat<DENSE_IDENTITY>(y, b, n, O); break;
    }
}

// Block (32, rows_per_block): threadIdx.x is a column of a 32-column tile (blockIdx.x), so a warp
// reads 32 consecutive elements of a row (coalesced); threadIdx.y a row slot; block row
// blockIdx.y of gridDim.y = R visits rows blockIdx.y * blockDim.y + threadIdx.y + k * R blockDim.y.
// Each thread sums its column over its rows in float64 (for float32 too, as the CPU kernel: one
// DADD per element, hidden behind the 3 memory words even at 1/64 FP64 rate); the blockDim.y
// thread sums of a column are added by the threadIdx.y == 0 warp through shared memory (the
// partners are in different warps, so shuffles do not apply) in slot order
// -> partial[blockIdx.y, j].
// The multiplications keep a NaN/Inf dy as NaN where act' = 0 (like the reference).
template <int ACT, typename T>
__device__ __forceinline__ void act_grad_rows(T* __restrict__ da, double* __restrict__ partial,
                                              const T* __restrict__ dy, const T* __restrict__ y,
                                              long long N, int O, double (*colsum)[32]) {
    const int j = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (j < O) {
        const long long row_stride = (long long)gridDim.y * blockDim.y;
        for (long long i = (long long)blockIdx.y * blockDim.y + threadIdx.y; i < N;
             i += row_stride) {
            const long long k = i * O + j;
            const T g = dy[k] * dense_act_grad<ACT>(y[k]);
            if (ACT != DENSE_IDENTITY) da[k] = g;   // identity: da is dy, never written
            acc += (double)g;
        }
    }
    colsum[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < O) {
        double s = colsum[0][threadIdx.x];
        for (int r = 1; r < (int)blockDim.y; r++) s += colsum[r][threadIdx.x];
        partial[(long long)blockIdx.y * O + j] = s;
    }
}

// math: fastvae/_reference.py::dense_backward (da, and db's per-block partial sums).
// da, dy, y (N, O); partial (R, O) float64, R = gridDim.y; blockDim.x == 32, blockDim.y <= 32.
FV_KERNEL_F32_F64(dense_act_grad_kernel,
                  (T* __restrict__ da, double* __restrict__ partial, const T* __restrict__ dy,
                   const T* __restrict__ y, int act, long long N, int O),
                  (da, partial, dy, y, act, N, O)) {
    __shared__ double colsum[32][32];
    switch (act) {
        case DENSE_RELU: act_grad_rows<DENSE_RELU>(da, partial, dy, y, N, O, colsum); break;
        case DENSE_TANH: act_grad_rows<DENSE_TANH>(da, partial, dy, y, N, O, colsum); break;
        case DENSE_SOFTPLUS: act_grad_rows<DENSE_SOFTPLUS>(da, partial, dy, y, N, O, colsum); break;
        case DENSE_SIGMOID: act_grad_rows<DENSE_SIGMOID>(da, partial, dy, y, N, O, colsum); break;
        default: act_grad_rows<DENSE_IDENTITY>(da, partial, dy, y, N, O, colsum); break;
    }
}

// math: fastvae/_reference.py::dense_backward (db = sum_n da). db (O,), partial (R, O) float64:
// db[j] = sum_r partial[r, j], r in order (deterministic), rounded once to T. Threads over columns:
// consecutive threads read consecutive partials (coalesced).
FV_KERNEL_F32_F64(dense_bias_grad_kernel,
                  (T* __restrict__ db, const double* __restrict__ partial, int R, int O),
                  (db, partial, R, O)) {
    for (long long j = fv_global_index(); j < O; j += fv_grid_stride()) {
        double s = 0.0;
        for (int r = 0; r < R; r++) s += partial[(long long)r * O + j];
        db[j] = (T)s;
    }
}
