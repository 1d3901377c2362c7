// adam.cu: one fused, in-place Adam step (Kingma & Ba 2015, with bias correction).
// Launcher: fastvae/cuda/adam.py (block size, grid, dtype dispatch, checks).
// CPU twin: fastvae/cpu/adam.py.
//
//     m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//     param <- param - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//
// Memory-bound: per element reads param, m, v, grad and writes param, m, v (7 words). The bias
// corrections are computed once per call on the host in float64 and passed as reciprocals in the
// array dtype, exactly as the CPU kernel does; the element math runs in the array dtype.
#include "common.cuh"

// math: fastvae/_reference.py::adam_update
FV_KERNEL_F32_F64(adam_kernel,
                  (T* __restrict__ param, T* __restrict__ m, T* __restrict__ v,
                   const T* __restrict__ grad, T lr, T b1, T c1, T b2, T c2, T eps, T inv_bc1,
                   T inv_bc2, long long n),
                  (param, m, v, grad, lr, b1, c1, b2, c2, eps, inv_bc1, inv_bc2, n)) {
    // param, m, v (n,) updated in place; grad (n,); c1 = 1 - b1, c2 = 1 - b2
    for (long long i = fv_global_index(); i < n; i += fv_grid_stride()) {
        const T g = grad[i];
        const T mi = b1 * m[i] + c1 * g;
        const T vi = b2 * v[i] + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] - lr * (mi * inv_bc1) / (fv_sqrt(vi * inv_bc2) + eps);
    }
}
