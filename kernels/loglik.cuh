// loglik.cuh: the row sums of the Bernoulli and Gaussian log-likelihoods, shared by
// kernels/loglik.cu and kernels/elbo.cu (a block per row in both), so both round them the same way.
#pragma once
#include "common.cuh"

// ---- the Bernoulli data check (kernels/elbo.cu, iwae.cu; CPU twin: fastvae/cpu/loglik.py's
// x_outside_unit). A kernel that reads x for the Bernoulli likelihood also keeps, per thread, the
// first of its columns whose x is outside [0, 1] or NaN (-0.0 is inside), and reports it with
// report_bad_x: first_bad (1,) ends as the smallest flat index n D + d of a bad x (the launcher
// fills it with ~0ull first and raises ValueError naming x[n, d] if it changed). One compare and
// select per element, no barrier, an atomic only for a bad x.

// true for x outside [0, 1] or NaN (comparisons with NaN are false; no --use_fast_math)
template <typename T> __device__ __forceinline__ bool fv_outside_unit(T x) {
    return !(x >= T(0) && x <= T(1));
}

// first_bad[0] = min(first_bad[0], row0 + bad_col) when this thread saw a bad x (bad_col < end)
__device__ __forceinline__ void report_bad_x(unsigned long long* __restrict__ first_bad,
                                             long long row0, long long bad_col, long long end) {
    if (bad_col < end) atomicMin(first_bad, (unsigned long long)(row0 + bad_col));
}

// This thread's share of sum_d x_d l_d - softplus(l_d) over its columns d = threadIdx.x,
// threadIdx.x + blockDim.x, ... < n_cols, in double (numerics: the header of kernels/loglik.cu),
// and in bad_col its first column with x outside [0, 1] or NaN (n_cols if none).
// math: fastvae/_reference.py::bernoulli_loglik_forward
template <typename T>
__device__ __forceinline__ double bernoulli_row_partial_checked(const T* __restrict__ x_row,
                                                                const T* __restrict__ logit_row,
                                                                int n_cols, int& bad_col) {
    double acc = 0.0;   // double accumulator, also for float32 rows
    bad_col = n_cols;
    for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
        const T x = x_row[d];
        const T l = logit_row[d];
        acc += (double)x * (double)l - (double)fv_softplus(l);
        if (fv_outside_unit(x) && bad_col == n_cols) bad_col = d;
    }
    return acc;
}

// The same sum without the check (kernels/loglik.cu: its x is not checked): the same arithmetic,
// so both round alike; the unused bad_col is dead code.
template <typename T>
__device__ __forceinline__ double bernoulli_row_partial(const T* __restrict__ x_row,
                                                        const T* __restrict__ logit_row,
                                                        int n_cols) {
    int unused;
    return bernoulli_row_partial_checked(x_row, logit_row, n_cols, unused);
}

// This thread's share of sum_d log 2 pi + lv_d + (x_d - m_d)^2 inv_var_d (-2 times the row's
// log-likelihood) over its columns, in double; inv_var = exp(-lv) in double.
// math: fastvae/_reference.py::gaussian_loglik_forward
template <typename T>
__device__ __forceinline__ double gaussian_row_partial(const T* __restrict__ x_row,
                                                       const T* __restrict__ mean_row,
                                                       const T* __restrict__ logvar,
                                                       const double* __restrict__ inv_var,
                                                       int n_cols) {
    double acc = 0.0;   // double accumulator, also for float32 rows
    for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
        const double diff = (double)x_row[d] - (double)mean_row[d];
        acc += FV_LOG_2PI + (double)logvar[d] + diff * diff * inv_var[d];
    }
    return acc;
}
