"""One fused, in-place Adam step on the GPU: launcher of kernels/adam.cu.

Same public signature and semantics as fastvae/cpu/adam.py (the model and fastvae.ops call either
one). The launcher asserts its preconditions (fastvae/cuda/__init__.py) and owns the dtype
dispatch (``adam_kernel_f32`` / ``adam_kernel_f64``), the scalars and the launch configuration;
kernels/adam.cu owns the math.

Tests run this file unchanged on NumPy arrays through the host harness (tests/cuda/conftest.py),
with THREADS_PER_BLOCK and MAX_BLOCKS patched down so the multi-block and grid-stride paths run on
small arrays.
"""
import numpy as np

from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel

# Elementwise and memory-bound: the streaming defaults of fastvae/cuda/_module.py (256 threads per
# block; a grid cap of 4096 blocks for the grid-stride loop, larger arrays loop).
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
MAX_BLOCKS = _module.MAX_BLOCKS


def adam_update(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """One Adam step, in place on param, m, v (same shape and dtype as grad, C-contiguous,
    float32 or float64, CuPy arrays; any number of dimensions). step = t >= 1. Returns None.

    ``m <- b1 m + (1 - b1) g``; ``v <- b2 v + (1 - b2) g^2``;
    ``param <- param - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.
    """
    arrays = {"param": param, "grad": grad, "m": m, "v": v}
    for name, a in arrays.items():
        assert a.shape == param.shape and a.dtype == param.dtype, (
            f"adam_update: {name} is {a.dtype} {a.shape}, param is {param.dtype} "
            f"{param.shape}; all four must match")
        assert a.flags.c_contiguous, f"adam_update: {name} must be C-contiguous (updated in place)"
    suffix = dtype_suffix(param.dtype)
    n = param.size
    if n == 0:
        return
    T = param.dtype.type
    inv_bc1 = 1.0 / (1.0 - beta1 ** step)     # float64, once per call, then rounded to T
    inv_bc2 = 1.0 / (1.0 - beta2 ** step)
    threads = THREADS_PER_BLOCK
    blocks = min(cdiv(n, threads), MAX_BLOCKS)
    kernel("adam", f"adam_kernel_{suffix}")(
        (blocks,), (threads,),
        (param, m, v, grad, T(lr), T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps),
         T(inv_bc1), T(inv_bc2), np.int64(n)))


def adam_stays_finite(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """True if ``adam_update`` with these arguments would leave param, m and v finite (and g^2:
    conservative, see fastvae/cpu/adam.py); reads only. Elementwise array expressions in the
    arrays' dtype and in the order of kernels/adam.cu, with temporaries of param's size: a
    check that runs only where fastvae.optim.Adam's bounds cannot rule out an overflow."""
    xp = array_module(param)
    with np.errstate(over="ignore", invalid="ignore"):   # NumPy arrays (the host harness)
        return _adam_stays_finite(xp, param, grad, m, v, step, lr, beta1, beta2, eps)


def _adam_stays_finite(xp, param, grad, m, v, step, lr, beta1, beta2, eps):
    T = param.dtype.type
    inv_bc1 = T(1.0 / (1.0 - beta1 ** step))
    inv_bc2 = T(1.0 / (1.0 - beta2 ** step))
    new_m = T(beta1) * m + T(1.0 - beta1) * grad
    new_v = T(beta2) * v + T(1.0 - beta2) * grad * grad
    new_param = param - T(lr) * (new_m * inv_bc1) / (xp.sqrt(new_v * inv_bc2) + T(eps))
    return all(bool(xp.isfinite(a).all()) for a in (new_param, new_m, new_v, grad * grad))


def abs_sum(a):
    """sum |a| as a float (float64 accumulation), NaN/Inf if any element is (see
    fastvae/cpu/adam.py)."""
    xp = array_module(a)
    return float(xp.abs(a).sum(dtype=xp.float64))


def all_finite(a):
    """True if every element of a is finite (one reduction); the training step's guard is
    ``abs_sum``."""
    xp = array_module(a)
    return bool(xp.isfinite(a).all())
