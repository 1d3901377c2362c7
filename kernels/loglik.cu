// loglik.cu: per-row log-likelihoods, Bernoulli from logits and diagonal Gaussian with a
// per-dimension log-variance, and their backwards. Launcher: fastvae/cuda/loglik.py.
// CPU twin: fastvae/cpu/loglik.py.
//
//     Bernoulli: ll_n = sum_d x_nd l_nd - softplus(l_nd);   dlogits = dll_n (x - sigmoid(l))
//     Gaussian:  ll_n = -1/2 sum_d (log 2 pi + lv_d + (x_nd - m_nd)^2 inv_var_d),
//                inv_var = exp(-lv);   dmean = dll_n (x - m) inv_var;
//                dlogvar_d = -1/2 sum_n dll_n (1 - (x - m)^2 inv_var_d)
//
// Row reductions (forwards): ONE BLOCK PER ROW, rows block-strided (the launcher caps the grid).
// D = 784 in the VAE: 256 threads read ~3 coalesced elements each, reduce in double with warp
// shuffles, then the 8 warp sums through 32 doubles of shared memory (block_sum_all). A warp per
// row would need 25 sequential loads per lane and leave too few blocks in flight to hide latency
// at N = 128. The row sums are kernels/loglik.cuh's, which kernels/elbo.cu shares.
//
// The Gaussian dlogvar is a sum over ROWS: deterministic without float atomics. Rows are split
// into B row blocks (B depends on N and the launch constants only); CUDA block b owns rows
// [b N / B, (b + 1) N / B) and each thread owns columns d = tid, tid + blockDim, ...: it sums its
// column over the block's rows in a double register and writes partial[b, d] once. A second kernel
// adds the B partials of each column in a fixed order (gaussian_dlogvar_reduce_kernel).
//
// Numerics (as fastvae/cpu/loglik.py): every row/column sum accumulates in double, also for
// float32. Bernoulli: x l is formed in double, softplus/sigmoid run in the input precision
// (expf/log1pf: float64 transcendentals cost 2x-64x on GPUs); Gaussian: inv_var = exp(-lv) in
// double once per call (gaussian_inv_var_kernel, D elements), and the element math in double (a
// few flops, no transcendentals), results rounded once to T.
//
// Bytes per element (T = 4 or 8): Bernoulli forward 2T (x, l) + T/D; backward 3T (x, l, dlogits)
// + T/D; Gaussian forward 2T (x, m) + (T + 8)/rows-per-L2-line (lv, inv_var: D-vectors, cached);
// backward 3T (x, m, dmean) + 8 B / rows-per-row-block (partials) + T/D (dll).
#include "common.cuh"
#include "loglik.cuh"

// ---- Bernoulli ----------------------------------------------------------------------------------

// math: fastvae/_reference.py::bernoulli_loglik_forward
FV_KERNEL_F32_F64(bernoulli_loglik_forward_kernel,
                  (T* __restrict__ ll, const T* __restrict__ x, const T* __restrict__ logits,
                   int n_rows, int n_cols),
                  (ll, x, logits, n_rows, n_cols)) {
    // ll (N,); x, logits (N, D)
    __shared__ double scratch[32];
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {   // block-uniform loop (barriers inside)
        const long long row = (long long)n * n_cols;
        const double acc = block_sum_all(bernoulli_row_partial(x + row, logits + row, n_cols),
                                         scratch);
        if (threadIdx.x == 0) ll[n] = (T)acc;
    }
}

// math: fastvae/_reference.py::bernoulli_loglik_backward
FV_KERNEL_F32_F64(bernoulli_loglik_backward_kernel,
                  (T* __restrict__ dlogits, const T* __restrict__ dll, const T* __restrict__ x,
                   const T* __restrict__ logits, int n_rows, int n_cols),
                  (dlogits, dll, x, logits, n_rows, n_cols)) {
    // dlogits (N, D) (overwritten); dll (N,); x, logits (N, D)
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {
        const long long row = (long long)n * n_cols;
        const T dll_n = dll[n];
        for (int d = threadIdx.x; d < n_cols; d += blockDim.x)
            dlogits[row + d] = dll_n * (x[row + d] - fv_sigmoid(logits[row + d]));
    }
}

// ---- Gaussian -----------------------------------------------------------------------------------

// inv_var = exp(-logvar) in double, once per call: shared by every row (as fastvae/cpu/loglik.py).
// math: fastvae/_reference.py::gaussian_loglik_forward
FV_KERNEL_F32_F64(gaussian_inv_var_kernel,
                  (double* __restrict__ inv_var, const T* __restrict__ logvar, int n_cols),
                  (inv_var, logvar, n_cols)) {
    // inv_var (D,) double; logvar (D,)
    for (long long d = fv_global_index(); d < n_cols; d += fv_grid_stride())
        inv_var[d] = fv_exp(-(double)logvar[d]);
}

// math: fastvae/_reference.py::gaussian_loglik_forward
FV_KERNEL_F32_F64(gaussian_loglik_forward_kernel,
                  (T* __restrict__ ll, const T* __restrict__ x, const T* __restrict__ mean,
                   const T* __restrict__ logvar, const double* __restrict__ inv_var, int n_rows,
                   int n_cols),
                  (ll, x, mean, logvar, inv_var, n_rows, n_cols)) {
    // ll (N,); x, mean (N, D); logvar (D,); inv_var (D,) double
    __shared__ double scratch[32];
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {
        const long long row = (long long)n * n_cols;
        const double acc = block_sum_all(
            gaussian_row_partial(x + row, mean + row, logvar, inv_var, n_cols), scratch);
        if (threadIdx.x == 0) ll[n] = (T)(-0.5 * acc);
    }
}

// math: fastvae/_reference.py::gaussian_loglik_backward
FV_KERNEL_F32_F64(gaussian_loglik_backward_kernel,
                  (T* __restrict__ dmean, double* __restrict__ dlogvar_partial,
                   const T* __restrict__ dll, const T* __restrict__ x, const T* __restrict__ mean,
                   const double* __restrict__ inv_var, int n_rows, int n_cols, int n_blocks),
                  (dmean, dlogvar_partial, dll, x, mean, inv_var, n_rows, n_cols, n_blocks)) {
    // dmean (N, D) (overwritten); dlogvar_partial (B, D) double (overwritten): block b's
    // sum_n dll_n (1 - (x - m)^2 inv_var) over its rows; dll (N,); x, mean (N, D); inv_var (D,)
    // double
    for (int b = blockIdx.x; b < n_blocks; b += gridDim.x) {
        const int start = (int)((long long)b * n_rows / n_blocks);
        const int stop = (int)((long long)(b + 1) * n_rows / n_blocks);
        for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
            const double iv = inv_var[d];
            double col = 0.0;   // double accumulator of column d over rows start..stop-1
            for (int n = start; n < stop; n++) {
                const long long i = (long long)n * n_cols + d;
                const double g = (double)dll[n];
                const double diff = (double)x[i] - (double)mean[i];
                const double t = diff * iv;
                dmean[i] = (T)(g * t);
                col += g * (1.0 - diff * t);
            }
            dlogvar_partial[(long long)b * n_cols + d] = col;
        }
    }
}

// dlogvar_d = -1/2 sum_b partial[b, d], b in order: the deterministic second stage of every sum
// over rows of the Gaussian dlogvar (also used by fastvae/cuda/elbo.py).
// math: fastvae/_reference.py::gaussian_loglik_backward
FV_KERNEL_F32_F64(gaussian_dlogvar_reduce_kernel,
                  (T* __restrict__ dlogvar, const double* __restrict__ partial, int n_blocks,
                   int n_cols),
                  (dlogvar, partial, n_blocks, n_cols)) {
    // dlogvar (D,) (overwritten); partial (B, D) double
    for (long long d = fv_global_index(); d < n_cols; d += fv_grid_stride()) {
        double acc = 0.0;
        for (int b = 0; b < n_blocks; b++) acc += partial[(long long)b * n_cols + d];
        dlogvar[d] = (T)(-0.5 * acc);
    }
}
