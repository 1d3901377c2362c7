// kl.cuh: the row sum of KL(N(mu, exp(logvar)) || N(0, I)), shared by kernels/kl.cu (a warp per
// row) and kernels/elbo.cu (a block per row), so both round it the same way.
#pragma once
#include "common.cuh"

// This thread's share of sum_j mu_j^2 + expm1(lv_j) - lv_j (twice the row's KL) over its columns
// j = first, first + stride, ... < n_cols, in double (numerics: the header of kernels/kl.cu). The
// caller adds the shares of the row's threads (warp_sum_all / block_sum_all). stride: 32 for a warp
// per row, blockDim.x (unsigned) for a block per row; its type S is the caller's, so that each
// caller's loop compiles as its own loop did before (an int and an unsigned stride do not).
// math: fastvae/_reference.py::kl_forward
template <typename T, typename S>
__device__ __forceinline__ double kl_row_partial(const T* __restrict__ mu_row,
                                                 const T* __restrict__ logvar_row, int n_cols,
                                                 int first, S stride) {
    double acc = 0.0;   // double accumulator, also for float32 rows
    for (int j = first; j < n_cols; j += stride) {
        const double m = (double)mu_row[j];
        const T lv = logvar_row[j];
        acc += m * m + ((double)fv_expm1(lv) - (double)lv);
    }
    return acc;
}
