// random.cu: Philox4x32-10 words, uniforms and standard normals of the counter-based stream.
// Launcher: fastvae/cuda/random.py (grid, block, dtype dispatch). CPU twin: fastvae/cpu/random.py.
//
// Stream layout (fastvae/_reference.py, fastvae/random.py): seed -> key (k0, k1) = (lo, hi); global
// index g = offset + j (j the C-order flat index of the output) lives in lane g % 4 of Philox block
// b = g / 4 (counter (b_lo, b_hi, 0, 0)). The Philox helpers are in common.cuh.
//
// One thread per Philox block (not per element): the ten rounds and the two log/sincospi pairs of
// Box-Muller are shared by the block's four outputs. A thread writes the lanes of its block that
// fall inside [offset, offset + n): the first and last blocks may be partial when offset or
// offset + n is not a multiple of 4. Bytes per element: 4 (float32) / 8 (float64) written, nothing
// read; the normals are compute-bound (Philox: 20 mul.wide per 4 outputs; logf + sincospif per 2).
#include "common.cuh"

// out (n, 4) uint32 words of counters (n, 4) uint32 under key (k0, k1); one thread per counter.
// math: fastvae/_reference.py::philox4x32_10
extern "C" __global__ void philox_kernel(unsigned* __restrict__ out,
                                         const unsigned* __restrict__ counters,
                                         unsigned k0, unsigned k1, long long n) {
    for (long long i = fv_global_index(); i < n; i += fv_grid_stride()) {
        const uint4 c = make_uint4(counters[4 * i], counters[4 * i + 1], counters[4 * i + 2],
                                   counters[4 * i + 3]);
        const uint4 w = philox4x32_10(c, k0, k1);
        out[4 * i] = w.x;
        out[4 * i + 1] = w.y;
        out[4 * i + 2] = w.z;
        out[4 * i + 3] = w.w;
    }
}

// out (n,): out[j] = the standard normal of global index offset + j, computed in T.
// math: fastvae/_reference.py::normal
FV_KERNEL_F32_F64(normal_fill_kernel,
                  (T* __restrict__ out, unsigned k0, unsigned k1, long long offset, long long n),
                  (out, k0, k1, offset, n)) {
    const long long first_block = offset >> 2;
    const long long n_blocks = ((offset + n + 3) >> 2) - first_block;
    for (long long i = fv_global_index(); i < n_blocks; i += fv_grid_stride()) {
        const long long b = first_block + i;
        const auto z = philox_normals4((unsigned long long)b, k0, k1, T(0));
        const long long j0 = 4 * b - offset;   // out index of lane 0 (< 0 in a partial first block)
#pragma unroll
        for (int lane = 0; lane < 4; lane++) {
            const long long j = j0 + lane;
            if (j >= 0 && j < n) out[j] = fv_lane(z, lane);
        }
    }
}

// out (n,): out[j] = uniform_from_bits(word (offset + j) % 4 of block (offset + j) / 4), exact in
// float32 and float64 (the same value in both). math: fastvae/_reference.py::uniform_from_bits
FV_KERNEL_F32_F64(uniform_fill_kernel,
                  (T* __restrict__ out, unsigned k0, unsigned k1, long long offset, long long n),
                  (out, k0, k1, offset, n)) {
    const long long first_block = offset >> 2;
    const long long n_blocks = ((offset + n + 3) >> 2) - first_block;
    for (long long i = fv_global_index(); i < n_blocks; i += fv_grid_stride()) {
        const long long b = first_block + i;
        const uint4 w = philox_block((unsigned long long)b, k0, k1);
        const long long j0 = 4 * b - offset;
#pragma unroll
        for (int lane = 0; lane < 4; lane++) {
            const long long j = j0 + lane;
            if (j >= 0 && j < n) out[j] = (T)uniform_from_bits(fv_lane(w, lane));
        }
    }
}
