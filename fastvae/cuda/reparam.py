"""Reparameterized sampling ``z = mu + exp(logvar / 2) * eps`` and its backward on the GPU:
launchers of kernels/reparam.cu.

Same public names, signatures and cache semantics as fastvae/cpu/reparam.py (one composition of
both, fastvae/_compose.py::reparam_forward, reparam_backward): with ``eps`` given
it is read and kept in the cache; without, element (n, l) uses the normal of global index
``offset + n L + l`` of the Philox stream of ``seed`` (== fastvae.cuda.random.normal((N, L), seed,
offset, mu.dtype)), generated inside the kernel, and the cache keeps ``(seed, offset)``: the
backward regenerates the same noise instead of storing it.

Inputs arrive validated (fastvae.ops): C-contiguous (N, L) arrays of one float dtype.
"""
import numpy as np

from fastvae import _compose
from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel
from fastvae._reference import seed_to_key

# Elementwise, memory-bound (given noise) or Philox-bound (generated noise): the streaming
# defaults of fastvae/cuda/_module.py.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap for the grid-stride loops; larger arrays loop.
MAX_BLOCKS = _module.MAX_BLOCKS


def _grid(n_threads):
    threads = THREADS_PER_BLOCK
    return (min(cdiv(n_threads, threads), MAX_BLOCKS),), (threads,)


def _noise_threads(offset, n):
    """One thread per Philox block holding indices offset .. offset + n - 1."""
    return (offset + n + 3) // 4 - offset // 4


def reparam_forward(mu, logvar, eps=None, seed=None, offset=0):
    """z = mu + exp(logvar / 2) * eps, all (N, L) -> (z, cache), eps given or generated
    from (seed, offset) in the kernel: fastvae/_compose.py::reparam_forward."""
    return _compose.reparam_forward(_forward_given, _forward_generated, mu, logvar, eps, seed,
                                    offset)


def reparam_backward(dz, cache):
    """-> (dmu, dlogvar), new (N, L) arrays: fastvae/_compose.py::reparam_backward."""
    return _compose.reparam_backward(_backward_given, _backward_generated, dz, cache)


def _launch(name, n_threads, args, n):
    # kernels/reparam.cu::<name>_<f32|f64>(args..., n) on a grid for n_threads; none for n = 0
    if n:
        kernel("reparam", f"{name}_{dtype_suffix(args[0].dtype)}")(
            *_grid(n_threads), (*args, np.int64(n)))


def _forward_given(mu, logvar, eps):
    z = array_module(mu).empty_like(mu)
    _launch("reparam_forward_kernel", z.size, (z, mu, logvar, eps), z.size)
    return z


def _forward_generated(mu, logvar, seed, offset):
    z, n = array_module(mu).empty_like(mu), mu.size
    _launch("reparam_noise_forward_kernel", _noise_threads(offset, n),
            (z, mu, logvar, *seed_to_key(seed), np.int64(offset)), n)
    return z


def _backward_given(dz, logvar, eps):
    xp = array_module(dz)
    dmu, dlogvar = xp.empty_like(dz), xp.empty_like(dz)
    _launch("reparam_backward_kernel", dz.size, (dmu, dlogvar, dz, logvar, eps), dz.size)
    return dmu, dlogvar


def _backward_generated(dz, logvar, seed, offset):
    xp, n = array_module(dz), dz.size
    dmu, dlogvar = xp.empty_like(dz), xp.empty_like(dz)
    _launch("reparam_noise_backward_kernel", _noise_threads(offset, n),
            (dmu, dlogvar, dz, logvar, *seed_to_key(seed), np.int64(offset)), n)
    return dmu, dlogvar
