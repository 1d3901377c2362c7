// kl.cu: KL(N(mu, exp(logvar)) || N(0, I)) per row, and its backward.
// Launcher: fastvae/cuda/kl.py (block size, grid, dtype dispatch, checks).
// CPU twin: fastvae/cpu/kl.py.
//
//     kl_n = 1/2 sum_l (mu_nl^2 + expm1(lv_nl) - lv_nl)
//     dmu = dkl_n mu;   dlogvar = dkl_n expm1(lv) / 2
//
// One WARP per row, not one block: rows are the latent width L (20 in the VAE), so a 256-thread
// block per row would leave 236 threads idle and pay two barriers for 20 elements; a warp strides
// over L and reduces with shuffles only (no shared memory, no __syncthreads). Rows are grid-strided
// by warps, so the launcher may cap the grid.
//
// Numerics (as fastvae/cpu/kl.py): row sums accumulate in double for float32 inputs too; each
// element is formed in double from its T parts, expm1 runs in the input precision (float64
// transcendentals cost 2x-64x on GPUs, and expm1f is within 1 ulp), so only the expm1 result is
// rounded to T. The row sum is kernels/kl.cuh's, which kernels/elbo.cu shares.
// Bytes per element: forward reads mu, lv (2 sizeof(T)) + sizeof(T)/L per row; backward reads mu,
// lv and writes dmu, dlogvar (4 sizeof(T)) + sizeof(T)/L for dkl.
#include "common.cuh"
#include "kl.cuh"

// math: fastvae/_reference.py::kl_forward
FV_KERNEL_F32_F64(kl_forward_kernel,
                  (T* __restrict__ kl, const T* __restrict__ mu, const T* __restrict__ logvar,
                   int n_rows, int n_cols),
                  (kl, mu, logvar, n_rows, n_cols)) {
    // kl (N,); mu, logvar (N, L)
    const int lane = threadIdx.x & 31;
    const int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int n = (int)(fv_global_index() >> 5); n < n_rows; n += warps) {   // warp-uniform loop
        const long long row = (long long)n * n_cols;
        const double acc = warp_sum_all(kl_row_partial(mu + row, logvar + row, n_cols, lane, 32));
        if (lane == 0) kl[n] = (T)(0.5 * acc);
    }
}

// math: fastvae/_reference.py::kl_backward
FV_KERNEL_F32_F64(kl_backward_kernel,
                  (T* __restrict__ dmu, T* __restrict__ dlogvar, const T* __restrict__ dkl,
                   const T* __restrict__ mu, const T* __restrict__ logvar, int n_rows,
                   int n_cols),
                  (dmu, dlogvar, dkl, mu, logvar, n_rows, n_cols)) {
    // dmu, dlogvar (N, L); dkl (N,); mu, logvar (N, L). Overwrites dmu, dlogvar.
    const int lane = threadIdx.x & 31;
    const int warps = (int)((gridDim.x * blockDim.x) >> 5);
    for (int n = (int)(fv_global_index() >> 5); n < n_rows; n += warps) {
        const long long row = (long long)n * n_cols;
        const T dkl_n = dkl[n];
        for (int j = lane; j < n_cols; j += 32) {
            dmu[row + j] = dkl_n * mu[row + j];
            dlogvar[row + j] = dkl_n * fv_expm1(logvar[row + j]) * T(0.5);
        }
    }
}
