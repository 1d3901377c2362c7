// logsumexp.cu: log-sum-exp over the last axis, one-shot and streaming (partial / merge /
// finalize), and its backward (the softmax times the upstream gradient).
// Launcher: fastvae/cuda/logsumexp.py. CPU twin: fastvae/cpu/logsumexp.py.
//
//     lse_n = log sum_k exp(a_nk) = m_n + log s_n,   m_n = max_k a_nk,
//     s_n = sum_k exp(a_nk - m_n)
//
// Special rows exactly as fastvae/_reference.py: all -inf -> (m, s) = (-inf, 0) -> lse -inf;
// holding +inf -> (+inf, 1) -> +inf; holding NaN -> (NaN, NaN) -> NaN.
//
// Row kernels (partial, forward): ONE BLOCK PER ROW, rows grid-strided over blocks. K is 1000-5000
// in the IWAE evaluation and only N = 128 rows exist, so a thread per row would leave the GPU idle
// and read with stride K; a block reads each row coalesced, every thread holds K / blockDim terms,
// and the block combines them with warp shuffles + 32 words of shared memory (block_max_all /
// block_sum_all). Two passes over the row (block max, then the sum of exp(a - m)), as the CPU
// kernel: the second pass hits L1/L2 (a row is 4-20 KB), so the one-pass online update would save
// no DRAM traffic. Bytes per element: forward / partial read a once from DRAM (4 B float32, 8 B
// float64) plus an L1/L2 re-read; backward reads a, writes da (8 B / 16 B), dlse and lse64 per row.
//
// Numerics: each thread sums its strided terms in T, then the block adds the per-thread sums as a
// tree (warp butterfly, then across warps): error O((K / blockDim + log2 blockDim) eps), e.g.
// 20 + 8 roundings for K = 5000 and 256 threads. m + log s is formed in double and rounded once to
// T (one per row, as the CPU kernel). The merge works in double, as the CPU kernel.
// The forward also stores that double m + log s (lse64), and the backward takes it: the softmax is
// exp((T)((double)a - lse64)), a - lse64 rounded once to T, so the dominant weights (a near lse)
// are exact to T's rounding; exp(a - lse) with the rounded lse would be off by up to ulp(|lse|)
// relative in every weight (3e-5 at |lse| ~ 500 in float32). Per element that is two conversions
// and one double subtraction, next to 8 B (float32) of memory traffic (not yet timed on a GPU);
// for T = double, as before.
#include "common.cuh"

// The streaming state (m, s) of the row a_row[0:k], in every thread of the block. Every thread
// of the block must call (block reductions have barriers). scratch: __shared__ T[32].
// math: fastvae/_reference.py::logsumexp_partial
template <typename T>
__device__ __forceinline__ void row_state(T& m_out, T& s_out, const T* __restrict__ a_row,
                                          long long k, T* scratch) {
    T m = fv_neg_inf(T(0));
    for (long long j = threadIdx.x; j < k; j += blockDim.x) m = fv_max(m, a_row[j]);   // NaN kept
    m = block_max_all(m, scratch);
    // exp(a - mf): m = +-inf or NaN -> mf = 0, each term then 0, inf or NaN, fixed up below
    const T mf = (m > fv_neg_inf(m) && m < fv_inf(m)) ? m : T(0);
    T s = T(0);
    for (long long j = threadIdx.x; j < k; j += blockDim.x) s += fv_exp(a_row[j] - mf);
    s = block_sum_all(s, scratch);
    if (m != m) s = m;                     // a NaN in the row: (NaN, NaN)
    else if (m == fv_inf(m)) s = T(1);     // +inf in the row: (+inf, 1)
    m_out = m;                             // all -inf: (-inf, 0), each exp(-inf - 0) being 0
    s_out = s;
}

// math: fastvae/_reference.py::logsumexp_partial
FV_KERNEL_F32_F64(logsumexp_partial_kernel,
                  (T* __restrict__ m, T* __restrict__ s, const T* __restrict__ a, int n,
                   long long k),
                  (m, s, a, n, k)) {
    // m, s (N,); a (N, K). One block per row (grid-stride over rows: block-uniform loop).
    __shared__ T scratch[32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        T mi, si;
        row_state(mi, si, a + (long long)i * k, k, scratch);
        if (threadIdx.x == 0) {
            m[i] = mi;
            s[i] = si;
        }
    }
}

// math: fastvae/_reference.py::logsumexp_forward
FV_KERNEL_F32_F64(logsumexp_forward_kernel,
                  (T* __restrict__ lse, double* __restrict__ lse64, const T* __restrict__ a, int n,
                   long long k),
                  (lse, lse64, a, n, k)) {
    // lse, lse64 (N,); a (N, K). One block per row.
    __shared__ T scratch[32];
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        T mi, si;
        row_state(mi, si, a + (long long)i * k, k, scratch);
        // m + log s in double: -inf for (-inf, 0), +inf for (+inf, 1), NaN for NaN; kept
        // unrounded for the backward
        if (threadIdx.x == 0) {
            const double l = (double)mi + log((double)si);
            lse[i] = (T)l;
            lse64[i] = l;
        }
    }
}

// math: fastvae/_reference.py::logsumexp_backward
FV_KERNEL_F32_F64(logsumexp_backward_kernel,
                  (T* __restrict__ da, const T* __restrict__ dlse, const T* __restrict__ a,
                   const double* __restrict__ lse64, long long n, long long k),
                  (da, dlse, a, lse64, n, k)) {
    // da, a (N, K); dlse (N,); lse64 (N,) the forward's double lse. Elementwise over the N K
    // entries (grid-stride): K may be small.
    for (long long idx = fv_global_index(); idx < n * k; idx += fv_grid_stride()) {
        const long long i = idx / k;
        const T dlse_i = dlse[i];
        const double lse_i = lse64[i];
        // dlse_i * 0 on an all -inf row (lse_i = -inf): NaN if dlse_i is NaN, as the reference.
        // lse_i = +inf: exp(-inf) = 0 at finite a, NaN at a = +inf; NaN stays NaN.
        da[idx] = (lse_i == FV_NEG_INF_D) ? dlse_i * T(0)
                                          : dlse_i * fv_exp((T)((double)a[idx] - lse_i));
    }
}

// math: fastvae/_reference.py::logsumexp_merge
FV_KERNEL_F32_F64(logsumexp_merge_kernel,
                  (T* __restrict__ m, T* __restrict__ s, const T* __restrict__ m1,
                   const T* __restrict__ s1, const T* __restrict__ m2, const T* __restrict__ s2,
                   long long n),
                  (m, s, m1, s1, m2, s2, n)) {
    // m, s, m1, s1, m2, s2 (N,); double arithmetic, as the CPU kernel
    for (long long i = fv_global_index(); i < n; i += fv_grid_stride()) {
        const double a1 = (double)m1[i], a2 = (double)m2[i];
        const double mm = fv_max(a1, a2);                            // NaN in either -> NaN
        const double mf = (mm > FV_NEG_INF_D && mm < FV_INF_D) ? mm : 0.0;
        const double t1 = (a1 == FV_NEG_INF_D) ? 0.0 : (double)s1[i] * exp(a1 - mf);
        const double t2 = (a2 == FV_NEG_INF_D) ? 0.0 : (double)s2[i] * exp(a2 - mf);
        m[i] = (T)mm;
        s[i] = (T)((mm == FV_INF_D) ? 1.0 : t1 + t2);
    }
}

// math: fastvae/_reference.py::logsumexp_finalize
FV_KERNEL_F32_F64(logsumexp_finalize_kernel,
                  (T* __restrict__ lse, const T* __restrict__ m, const T* __restrict__ s,
                   long long n),
                  (lse, m, s, n)) {
    // lse, m, s (N,)
    for (long long i = fv_global_index(); i < n; i += fv_grid_stride())
        lse[i] = (T)((double)m[i] + log((double)s[i]));
}
