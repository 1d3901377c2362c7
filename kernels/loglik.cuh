// loglik.cuh: the row sums of the Bernoulli and Gaussian log-likelihoods, shared by
// kernels/loglik.cu and kernels/elbo.cu (a block per row in both), so both round them the same way.
#pragma once
#include "common.cuh"

// This thread's share of sum_d x_d l_d - softplus(l_d) over its columns d = threadIdx.x,
// threadIdx.x + blockDim.x, ... < n_cols, in double (numerics: the header of kernels/loglik.cu).
// math: fastvae/_reference.py::bernoulli_loglik_forward
template <typename T>
__device__ __forceinline__ double bernoulli_row_partial(const T* __restrict__ x_row,
                                                        const T* __restrict__ logit_row,
                                                        int n_cols) {
    double acc = 0.0;   // double accumulator, also for float32 rows
    for (int d = threadIdx.x; d < n_cols; d += blockDim.x) {
        const T l = logit_row[d];
        acc += (double)x_row[d] * (double)l - (double)fv_softplus(l);
    }
    return acc;
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
