// elbo.cu: per-row ELBO = log p(x | z) - beta KL(q(z | x) || p(z)), forward, and the fused
// loss-and-gradients pass of training. Launcher: fastvae/cuda/elbo.py.
// CPU twin: fastvae/cpu/elbo.py.
// (elbo_backward is composed on the host side from kernels/kl.cu and kernels/loglik.cu.)
//
//     elbo_n = loglik(x_n | dec_out_n) - beta kl_n,   loss = -mean_n elbo_n
//     fused, upstream g = -1/N for every row:
//         ddec_out = g (x - sigmoid(l))      (Bernoulli)
//         ddec_out = g (x - m) inv_var       (Gaussian)
//         dmu = -beta g mu;  dlogvar = -beta g expm1(lv) / 2
//         ddec_logvar_d = -1/2 sum_n g (1 - (x - m)^2 inv_var_d)
//
// Layout: ONE BLOCK PER ROW (block-strided) for the forwards and the fused Bernoulli pass: threads
// stride over the D = 784 data columns, then over the L = 20 latent columns, and two block
// reductions (block_sum_all, 32 doubles of shared memory) give the row's log-likelihood and KL.
// The fused Gaussian pass also needs the column sum ddec_logvar, so (as in kernels/loglik.cu) a
// CUDA block owns a row block [b N / B, (b + 1) N / B): for each of its rows it does the same row
// reductions, and each thread adds its columns' terms into partial[b, d] (float64; d is owned by
// one thread of one block, so no races and no atomics); fastvae/cuda/loglik.py's
// gaussian_dlogvar_reduce_kernel then sums the B partials in order. The per-row ELBOs (float64)
// are summed by elbo_loss_kernel, one block, in a fixed order: the loss is deterministic.
//
// Numerics (as fastvae/cpu/elbo.py): row sums and the loss accumulate in double, also for float32;
// Bernoulli/KL transcendentals (exp, log1p, expm1) run in the input precision and the products/sums
// around them in double; Gaussian elements in double with inv_var = exp(-lv) precomputed in double.
// The forwards' row sums are those of the kl and loglik kernels (kernels/kl.cuh, loglik.cuh).
//
// Bernoulli x is checked in the loops that read it (kernels/loglik.cuh: fv_outside_unit,
// report_bad_x): first_bad (1,) gets the smallest flat index of an x outside [0, 1] or NaN, which
// the launcher turns into a ValueError; the fused pass returns it with the loss
// (elbo_loss_checked_kernel), in its one device-to-host copy.
//
// Bytes per row (T = 4 or 8 bytes): forward reads 2D T (x, dec_out) + 2L T (mu, lv), writes T.
// Fused: reads 2D + 2L, writes D + 2L (gradients) of T, writes the float64 elbo (8 B); Gaussian
// fused also read-modify-writes partial[b, d] (8 B, L1/L2-resident, one DRAM write per row block).
#include "common.cuh"
#include "kl.cuh"
#include "loglik.cuh"

// ---- row pieces: each thread's partial sum over its columns (the caller reduces over the block)
// The forwards' are kl_row_partial (kernels/kl.cuh), bernoulli_row_partial and
// gaussian_row_partial (kernels/loglik.cuh); the fused passes' are these two.

// kl_row_partial over this thread's j, and dmu = dkl_n mu, dlogvar = dkl_n expm1(lv) / 2 for them
// (overwrites). math: fastvae/_reference.py::kl_forward, kl_backward
template <typename T>
__device__ __forceinline__ double kl_row_partial_and_backward(T* __restrict__ dmu_row,
                                                              T* __restrict__ dlogvar_row, T dkl_n,
                                                              const T* __restrict__ mu_row,
                                                              const T* __restrict__ logvar_row,
                                                              int n_latent) {
    double acc = 0.0;
    for (int j = threadIdx.x; j < n_latent; j += blockDim.x) {
        const T m = mu_row[j];
        const T lv = logvar_row[j];
        const T em1 = fv_expm1(lv);
        acc += (double)m * (double)m + ((double)em1 - (double)lv);
        dmu_row[j] = dkl_n * m;
        dlogvar_row[j] = dkl_n * em1 * T(0.5);
    }
    return acc;
}

// bernoulli_row_partial, and dlogit = g (x - sigmoid(l)) (overwrites), one exp per element shared
// by softplus and sigmoid; bad_col: this thread's first column with x outside [0, 1] or NaN
// (n_cols if none; kernels/loglik.cuh's data check).
// math: fastvae/_reference.py::bernoulli_loglik_forward, bernoulli_loglik_backward
template <typename T>
__device__ __forceinline__ double bernoulli_row_partial_and_backward(
        T* __restrict__ dlogit_row, T g, const T* __restrict__ x_row,
        const T* __restrict__ logit_row, int n_cols, int& bad_col) {
    double acc = 0.0;
    bad_col = n_cols;
    for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
        const T x = x_row[d];
        const T l = logit_row[d];
        const T e = fv_exp(-fv_abs(l));
        acc += (double)x * (double)l - (double)((l > T(0) ? l : T(0)) + fv_log1p(e));
        dlogit_row[d] = g * (x - (l >= T(0) ? T(1) : e) / (T(1) + e));
        if (fv_outside_unit(x) && bad_col == n_cols) bad_col = d;
    }
    return acc;
}

// ---- forward ------------------------------------------------------------------------------------

// math: fastvae/_reference.py::elbo_forward
FV_KERNEL_F32_F64(elbo_bernoulli_forward_kernel,
                  (T* __restrict__ elbo, unsigned long long* __restrict__ first_bad,
                   const T* __restrict__ x, const T* __restrict__ logits, const T* __restrict__ mu,
                   const T* __restrict__ logvar, double beta, int n_rows, int n_cols,
                   int n_latent),
                  (elbo, first_bad, x, logits, mu, logvar, beta, n_rows, n_cols, n_latent)) {
    // elbo (N,); first_bad (1,): min flat index of an x outside [0, 1] or NaN (kept if none);
    // x, logits (N, D); mu, logvar (N, L)
    __shared__ double scratch[32];
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {   // block-uniform loop (barriers inside)
        const long long row = (long long)n * n_cols, zrow = (long long)n * n_latent;
        int bad_col;
        const double ll = block_sum_all(
            bernoulli_row_partial_checked(x + row, logits + row, n_cols, bad_col), scratch);
        report_bad_x(first_bad, row, bad_col, n_cols);
        const double kl = 0.5 * block_sum_all(
            kl_row_partial(mu + zrow, logvar + zrow, n_latent, threadIdx.x, blockDim.x), scratch);
        if (threadIdx.x == 0) elbo[n] = (T)(ll - beta * kl);
    }
}

// math: fastvae/_reference.py::elbo_forward
FV_KERNEL_F32_F64(elbo_gaussian_forward_kernel,
                  (T* __restrict__ elbo, const T* __restrict__ x, const T* __restrict__ mean,
                   const T* __restrict__ mu, const T* __restrict__ logvar,
                   const T* __restrict__ dec_logvar, const double* __restrict__ inv_var,
                   double beta, int n_rows, int n_cols, int n_latent),
                  (elbo, x, mean, mu, logvar, dec_logvar, inv_var, beta, n_rows, n_cols,
                   n_latent)) {
    // elbo (N,); x, mean (N, D); mu, logvar (N, L); dec_logvar (D,); inv_var (D,) double
    __shared__ double scratch[32];
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {
        const long long row = (long long)n * n_cols, zrow = (long long)n * n_latent;
        const double ll = -0.5 * block_sum_all(
            gaussian_row_partial(x + row, mean + row, dec_logvar, inv_var, n_cols), scratch);
        const double kl = 0.5 * block_sum_all(
            kl_row_partial(mu + zrow, logvar + zrow, n_latent, threadIdx.x, blockDim.x), scratch);
        if (threadIdx.x == 0) elbo[n] = (T)(ll - beta * kl);
    }
}

// ---- fused: every row's ELBO (float64) and all gradients for the upstream g = -1/N --------------

// math: fastvae/_reference.py::elbo_loss_and_grads
FV_KERNEL_F32_F64(elbo_bernoulli_loss_grads_kernel,
                  (double* __restrict__ elbo, unsigned long long* __restrict__ first_bad,
                   T* __restrict__ dlogits, T* __restrict__ dmu, T* __restrict__ dlogvar,
                   const T* __restrict__ x, const T* __restrict__ logits,
                   const T* __restrict__ mu, const T* __restrict__ logvar, double g, double beta,
                   int n_rows, int n_cols, int n_latent),
                  (elbo, first_bad, dlogits, dmu, dlogvar, x, logits, mu, logvar, g, beta, n_rows,
                   n_cols, n_latent)) {
    // elbo (N,) double; first_bad (1,): min flat index of an x outside [0, 1] or NaN (kept if
    // none); dlogits (N, D); dmu, dlogvar (N, L); x, logits (N, D); mu, logvar (N, L)
    __shared__ double scratch[32];
    const T g_t = (T)g, dkl_n = (T)(-beta * g);
    for (int n = blockIdx.x; n < n_rows; n += gridDim.x) {
        const long long row = (long long)n * n_cols, zrow = (long long)n * n_latent;
        int bad_col;
        const double ll = block_sum_all(
            bernoulli_row_partial_and_backward(dlogits + row, g_t, x + row, logits + row, n_cols,
                                               bad_col),
            scratch);
        report_bad_x(first_bad, row, bad_col, n_cols);
        const double kl = 0.5 * block_sum_all(
            kl_row_partial_and_backward(dmu + zrow, dlogvar + zrow, dkl_n, mu + zrow, logvar + zrow,
                                        n_latent), scratch);
        if (threadIdx.x == 0) elbo[n] = ll - beta * kl;
    }
}

// math: fastvae/_reference.py::elbo_loss_and_grads
FV_KERNEL_F32_F64(elbo_gaussian_loss_grads_kernel,
                  (double* __restrict__ elbo, T* __restrict__ dmean,
                   double* __restrict__ ddec_logvar_partial, T* __restrict__ dmu,
                   T* __restrict__ dlogvar, const T* __restrict__ x, const T* __restrict__ mean,
                   const T* __restrict__ mu, const T* __restrict__ logvar,
                   const T* __restrict__ dec_logvar, const double* __restrict__ inv_var, double g,
                   double beta, int n_rows, int n_cols, int n_latent, int n_blocks),
                  (elbo, dmean, ddec_logvar_partial, dmu, dlogvar, x, mean, mu, logvar,
                   dec_logvar, inv_var, g, beta, n_rows, n_cols, n_latent, n_blocks)) {
    // elbo (N,) double; dmean (N, D); ddec_logvar_partial (B, D) double, overwritten: block b's
    // sum_n g (1 - (x - m)^2 inv_var) over its rows (the -1/2 is applied by the reduction);
    // dmu, dlogvar, mu, logvar (N, L); x, mean (N, D); dec_logvar (D,); inv_var (D,) double
    __shared__ double scratch[32];
    const T dkl_n = (T)(-beta * g);
    for (int b = blockIdx.x; b < n_blocks; b += gridDim.x) {   // block-uniform loops (barriers)
        const int start = (int)((long long)b * n_rows / n_blocks);
        const int stop = (int)((long long)(b + 1) * n_rows / n_blocks);
        double* partial = ddec_logvar_partial + (long long)b * n_cols;
        for (int n = start; n < stop; n++) {
            const long long row = (long long)n * n_cols, zrow = (long long)n * n_latent;
            double acc = 0.0;   // double accumulator, also for float32 rows
            for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
                const double diff = (double)x[row + d] - (double)mean[row + d];
                const double t = diff * inv_var[d];
                const double q = diff * t;
                acc += FV_LOG_2PI + (double)dec_logvar[d] + q;
                dmean[row + d] = (T)(g * t);
                partial[d] = (n == start ? 0.0 : partial[d]) + g * (1.0 - q);   // this thread's d
            }
            const double ll = -0.5 * block_sum_all(acc, scratch);
            const double kl = 0.5 * block_sum_all(
                kl_row_partial_and_backward(dmu + zrow, dlogvar + zrow, dkl_n, mu + zrow,
                                            logvar + zrow, n_latent), scratch);
            if (threadIdx.x == 0) elbo[n] = ll - beta * kl;
        }
    }
}

// -(sum_n elbo_n) / N, one block, a fixed summation order (deterministic). float64 only: the
// per-row ELBOs of both dtypes are float64, as on the CPU.
// math: fastvae/_reference.py::elbo_loss_and_grads
__device__ __forceinline__ double elbo_mean_loss(const double* __restrict__ elbo, int n_rows,
                                                 double* scratch) {
    double acc = 0.0;
    for (int n = threadIdx.x; n < n_rows; n += blockDim.x) acc += elbo[n];
    acc = block_sum_all(acc, scratch);
    return -acc / (double)n_rows;
}

// loss[0] = elbo_mean_loss (the Gaussian fused pass)
extern "C" __global__ void elbo_loss_kernel(double* __restrict__ loss,
                                            const double* __restrict__ elbo, int n_rows) {
    // loss (1,) double; elbo (N,) double
    __shared__ double scratch[32];
    const double mean_loss = elbo_mean_loss(elbo, n_rows, scratch);
    if (threadIdx.x == 0) loss[0] = mean_loss;
}

// out[0] = elbo_mean_loss, out[1] = the fused Bernoulli pass's first_bad as a double (exact:
// indices < 2^53), or -1 if it kept its ~0ull: the launcher reads both in its one transfer.
extern "C" __global__ void elbo_loss_checked_kernel(
        double* __restrict__ out, const double* __restrict__ elbo,
        const unsigned long long* __restrict__ first_bad, int n_rows) {
    // out (2,) double; elbo (N,) double; first_bad (1,)
    __shared__ double scratch[32];
    const double mean_loss = elbo_mean_loss(elbo, n_rows, scratch);
    if (threadIdx.x == 0) {
        out[0] = mean_loss;
        out[1] = first_bad[0] == ~0ull ? -1.0 : (double)first_bad[0];
    }
}
