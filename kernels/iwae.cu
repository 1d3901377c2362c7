// iwae.cu: the fused log importance weights and their backward.
// Launcher: fastvae/cuda/iwae.py (which also holds iwae_forward/backward over
// kernels/logsumexp.cu).
// CPU twin: fastvae/cpu/iwae.py.
//
//     logw_nk = log p(x_n | z_nk) + log p(z_nk) - log q(z_nk | x_n),  z_nk = mu_n + sigma_n eps_nk
//     log p(z) - log q(z | x) = -1/2 sum_l (z_l^2 - logvar_l - eps_l^2)   (log 2 pi cancels)
//     Bernoulli: log p(x | z) = sum_d x_d l_d - softplus(l_d)
//     Gaussian:  log p(x | z) = gauss_const - 1/2 sum_d (x_d - m_d)^2 inv_var_d,
//                gauss_const = -1/2 (D log 2 pi + sum_d dec_logvar_d) (the launcher, on the device)
//
// Forward: ONE WARP PER (n, k) PAIR (warps grid-strided over the N K pairs). D = 784 gives ~25
// terms per lane and one 5-step butterfly, no shared memory and no barrier; a block per pair would
// leave 3 terms per thread for a 256-thread block and pay two barriers per pair. The latent term
// (L = 20) is spread over the lanes of the same warp. Bytes per element of dec_out: reads dec_out
// once (4 B float32); x (N, D) is re-read per k from L2; eps (K L) and logw are small.
//
// Backward, ddec_out: block b owns the pairs [b P / B, (b + 1) P / B) (P = N K, B = gridDim.x);
// its threads own columns d (stride blockDim) and walk the block's pairs: coalesced reads of
// dec_out / x and writes of ddec_out (per element: read dec_out, write ddec_out, x from L2: 8 B
// float32), and for the Gaussian each thread keeps the double sum over its pairs of
// dlogw (1 - (x - m)^2 inv_var) for its column, written to dlv_blocks[b, d]: per-block partials,
// added by the launcher in a fixed order (no float atomics, deterministic for a given B).
// Backward, dmu / dlogvar: one warp per (n, l), lanes strided over k, double sums, one butterfly.
// Reads eps with stride L (one 32 B sector per lane, shared through L2 by the L warps of a row);
// eps is 1/40 of dec_out at L = 20, D = 784.
//
// Bernoulli x check (kernels/loglik.cuh): each lane keeps its first x outside [0, 1] or NaN and
// report_bad_x keeps the smallest flat index in first_bad (1,), for the launcher's ValueError.
//
// Numerics: per-lane sums over d in T, then double across lanes (the butterfly); latent terms, sums
// over k and the ddec_logvar partials in double, as the CPU kernels.
#include "common.cuh"
#include "loglik.cuh"   // the Bernoulli data check: fv_outside_unit, report_bad_x

// math: fastvae/_reference.py::bernoulli_loglik_forward (one term: x l - softplus(l))
template <typename T> __device__ __forceinline__ T bernoulli_term(T x, T l) {
    return x * l - fv_softplus(l);
}

// math: fastvae/_reference.py::gaussian_loglik_forward (the data-dependent part of one term)
template <typename T> __device__ __forceinline__ T gaussian_term(T x, T m, T iv) {
    const T r = x - m;
    return r * r * iv;
}

// math: fastvae/_reference.py::log_weight_forward
FV_KERNEL_F32_F64(log_weight_forward_kernel,
                  (T* __restrict__ logw, unsigned long long* __restrict__ first_bad,
                   const T* __restrict__ x, const T* __restrict__ dec_out,
                   const T* __restrict__ mu, const T* __restrict__ logvar,
                   const double* __restrict__ sigma, const T* __restrict__ eps,
                   const T* __restrict__ inv_var, const double* __restrict__ gauss_const,
                   int gaussian, long long n, long long k, long long d, long long l),
                  (logw, first_bad, x, dec_out, mu, logvar, sigma, eps, inv_var, gauss_const,
                   gaussian, n, k, d, l)) {
    // logw (N, K); first_bad (1,) (Bernoulli: min flat index i D + j of an x outside [0, 1] or
    // NaN, kept if none; x[i] is checked by each of its K pairs' warps; unused for Gaussian);
    // x (N, D); dec_out (N, K, D); mu, logvar (N, L); sigma (N, L) double;
    // eps (N, K, L); inv_var (D,) (Gaussian; unused for Bernoulli); gauss_const (1,) double
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long p = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); p < n * k;
         p += warps) {                      // warp-uniform loop: the butterfly below is safe
        const long long i = p / k;
        const T* x_row = x + i * d;
        const T* l_row = dec_out + p * d;
        T block = T(0);
        if (gaussian) {
            for (long long j = lane; j < d; j += FV_WARP)
                block += gaussian_term(x_row[j], l_row[j], inv_var[j]);
        } else {
            long long bad_col = d;
            for (long long j = lane; j < d; j += FV_WARP) {
                const T xv = x_row[j];
                block += bernoulli_term(xv, l_row[j]);
                if (fv_outside_unit(xv) && bad_col == d) bad_col = j;
            }
            report_bad_x(first_bad, i * d, bad_col, d);
        }
        double acc = 0.0;                   // sum_l z^2 - logvar - eps^2, double
        for (long long t = lane; t < l; t += FV_WARP) {
            const double e = (double)eps[p * l + t];
            const double z = (double)mu[i * l + t] + sigma[i * l + t] * e;
            acc += z * z - (double)logvar[i * l + t] - e * e;
        }
        // one butterfly for both sums: ll part (sum, or -1/2 sum for the Gaussian) + latent part
        const double total = warp_sum_all((gaussian ? -0.5 : 1.0) * (double)block - 0.5 * acc);
        if (lane == 0) logw[p] = (T)(total + (gaussian ? gauss_const[0] : 0.0));
    }
}

// math: fastvae/_reference.py::log_weight_backward
// (ddec_out, and the Gaussian ddec_logvar partials)
FV_KERNEL_F32_F64(log_weight_backward_dec_kernel,
                  (T* __restrict__ ddec_out, double* __restrict__ dlv_blocks,
                   const T* __restrict__ dlogw, const T* __restrict__ x,
                   const T* __restrict__ dec_out, const T* __restrict__ inv_var, int gaussian,
                   long long n, long long k, long long d),
                  (ddec_out, dlv_blocks, dlogw, x, dec_out, inv_var, gaussian, n, k, d)) {
    // ddec_out, dec_out (N, K, D); dlv_blocks (B, D) double, B = gridDim.x (Gaussian; block b
    // writes row b: sum over its pairs of dlogw (1 - (x - m)^2 inv_var)); dlogw (N, K); x (N, D)
    const long long n_pairs = n * k, b = blockIdx.x;
    const long long p0 = b * n_pairs / gridDim.x, p1 = (b + 1) * n_pairs / gridDim.x;
    const T one = T(1);
    for (long long col = threadIdx.x; col < d; col += blockDim.x) {
        const T iv = gaussian ? inv_var[col] : T(0);
        double dlv_acc = 0.0;
        const T* x_row = x + (p0 / k) * d;      // row of pair p, advanced every k pairs: no
        long long j = p0 % k;                   // 64-bit division in the loop
        for (long long p = p0; p < p1; p++) {
            const T g = dlogw[p], xv = x_row[col], m = dec_out[p * d + col];
            if (++j == k) {
                j = 0;
                x_row += d;
            }
            if (gaussian) {     // dm = g (x - m) iv; dlv_acc += g (1 - (x - m)^2 iv)
                const T t = (xv - m) * iv;
                ddec_out[p * d + col] = g * t;
                dlv_acc += (double)(g * (one - (xv - m) * t));
            } else {            // dl = g (x - sigmoid(l))
                ddec_out[p * d + col] = g * (xv - fv_sigmoid(m));
            }
        }
        if (gaussian) dlv_blocks[b * d + col] = dlv_acc;
    }
}

// math: fastvae/_reference.py::log_weight_backward (dmu, dlogvar)
FV_KERNEL_F32_F64(log_weight_backward_latent_kernel,
                  (T* __restrict__ dmu, T* __restrict__ dlogvar, const T* __restrict__ dlogw,
                   const T* __restrict__ mu, const double* __restrict__ sigma,
                   const T* __restrict__ eps, long long n, long long k, long long l),
                  (dmu, dlogvar, dlogw, mu, sigma, eps, n, k, l)) {
    // dmu, dlogvar, mu (N, L); sigma (N, L) double; dlogw (N, K); eps (N, K, L)
    // dmu = -sum_k g z; dlogvar = sum_k g (1/2 - z eps sigma / 2); one warp per (n, l)
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long q = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); q < n * l;
         q += warps) {                      // warp-uniform loop
        const long long i = q / l, t = q % l;
        const double sig = sigma[q], m = (double)mu[q];
        double acc_mu = 0.0, acc_lv = 0.0;
        for (long long j = lane; j < k; j += FV_WARP) {
            const double g = (double)dlogw[i * k + j], e = (double)eps[(i * k + j) * l + t];
            const double z = m + sig * e;
            acc_mu -= g * z;
            acc_lv += g * (0.5 - 0.5 * z * e * sig);
        }
        acc_mu = warp_sum_all(acc_mu);
        acc_lv = warp_sum_all(acc_lv);
        if (lane == 0) {
            dmu[q] = (T)acc_mu;
            dlogvar[q] = (T)acc_lv;
        }
    }
}
