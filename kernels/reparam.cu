// reparam.cu: reparameterized sampling z = mu + exp(logvar / 2) * eps and its backward.
// Launcher: fastvae/cuda/reparam.py (grid, block, dtype dispatch).
// CPU twin: fastvae/cpu/reparam.py.
//
// All arrays are (N, L), C-contiguous, seen flat as (n,) = (N * L,): the work is balanced over
// elements whatever L is (L = 20 would leave most of a row-per-block kernel idle).
//
// Given noise (eps read from memory), one thread per element, grid-stride:
//   forward  reads mu, logvar, eps, writes z                      4 words per element
//   backward reads dz, logvar, eps, writes dmu, dlogvar           5 words per element
// Generated noise: eps of element j is the normal of global index offset + j of the Philox stream
// (key (k0, k1)), == fastvae.random.normal((N, L), seed, offset). One thread per Philox block, as
// kernels/random.cu: the block's four normals serve up to four consecutive elements; the noise is
// never written to or read from memory:
//   forward  reads mu, logvar, writes z                           3 words per element
//   backward reads dz, logvar, writes dmu, dlogvar                4 words per element
#include "common.cuh"

// z, mu, logvar, eps (n,): z = mu + exp(logvar / 2) eps.
// math: fastvae/_reference.py::reparam_forward
FV_KERNEL_F32_F64(reparam_forward_kernel,
                  (T* __restrict__ z, const T* __restrict__ mu, const T* __restrict__ logvar,
                   const T* __restrict__ eps, long long n),
                  (z, mu, logvar, eps, n)) {
    const T half = T(0.5);
    for (long long j = fv_global_index(); j < n; j += fv_grid_stride())
        z[j] = mu[j] + fv_exp(logvar[j] * half) * eps[j];
}

// dmu, dlogvar, dz, logvar, eps (n,): dmu = dz; dlogvar = dz eps exp(logvar / 2) / 2.
// math: fastvae/_reference.py::reparam_backward
FV_KERNEL_F32_F64(reparam_backward_kernel,
                  (T* __restrict__ dmu, T* __restrict__ dlogvar, const T* __restrict__ dz,
                   const T* __restrict__ logvar, const T* __restrict__ eps, long long n),
                  (dmu, dlogvar, dz, logvar, eps, n)) {
    const T half = T(0.5);
    for (long long j = fv_global_index(); j < n; j += fv_grid_stride()) {
        dmu[j] = dz[j];
        dlogvar[j] = dz[j] * eps[j] * fv_exp(logvar[j] * half) * half;
    }
}

// z, mu, logvar (n,); eps[j] = the normal of global index offset + j under key (k0, k1).
// math: fastvae/_reference.py::reparam_forward (noise: fastvae/_reference.py::normal)
FV_KERNEL_F32_F64(reparam_noise_forward_kernel,
                  (T* __restrict__ z, const T* __restrict__ mu, const T* __restrict__ logvar,
                   unsigned k0, unsigned k1, long long offset, long long n),
                  (z, mu, logvar, k0, k1, offset, n)) {
    const T half = T(0.5);
    const long long first_block = offset >> 2;
    const long long n_blocks = ((offset + n + 3) >> 2) - first_block;
    for (long long i = fv_global_index(); i < n_blocks; i += fv_grid_stride()) {
        const long long b = first_block + i;
        const auto eps = philox_normals4((unsigned long long)b, k0, k1, T(0));
        const long long j0 = 4 * b - offset;   // element of lane 0 (< 0 in a partial first block)
#pragma unroll
        for (int lane = 0; lane < 4; lane++) {
            const long long j = j0 + lane;
            if (j >= 0 && j < n) z[j] = mu[j] + fv_exp(logvar[j] * half) * fv_lane(eps, lane);
        }
    }
}

// dmu, dlogvar, dz, logvar (n,); the noise regenerated as in reparam_noise_forward_kernel.
// math: fastvae/_reference.py::reparam_backward (noise: fastvae/_reference.py::normal)
FV_KERNEL_F32_F64(reparam_noise_backward_kernel,
                  (T* __restrict__ dmu, T* __restrict__ dlogvar, const T* __restrict__ dz,
                   const T* __restrict__ logvar, unsigned k0, unsigned k1, long long offset,
                   long long n),
                  (dmu, dlogvar, dz, logvar, k0, k1, offset, n)) {
    const T half = T(0.5);
    const long long first_block = offset >> 2;
    const long long n_blocks = ((offset + n + 3) >> 2) - first_block;
    for (long long i = fv_global_index(); i < n_blocks; i += fv_grid_stride()) {
        const long long b = first_block + i;
        const auto eps = philox_normals4((unsigned long long)b, k0, k1, T(0));
        const long long j0 = 4 * b - offset;
#pragma unroll
        for (int lane = 0; lane < 4; lane++) {
            const long long j = j0 + lane;
            if (j >= 0 && j < n) {
                dmu[j] = dz[j];
                dlogvar[j] = dz[j] * fv_lane(eps, lane) * fv_exp(logvar[j] * half) * half;
            }
        }
    }
}
