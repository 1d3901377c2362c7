"""One fused, in-place Adam step on the CPU (Kingma & Ba 2015, with bias correction).

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    param <- param - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

One pass reads param, grad, m, v and writes param, m, v (7 arrays' worth of traffic per element);
the model keeps every parameter in one flat buffer, so one call updates the whole model. The bias
corrections are computed once per call in float64 and passed in as reciprocals. Elementwise math
runs in the parameter dtype (float32: 8 AVX2 lanes), as the reference does.
"""
import numpy as np

from fastvae._threads import run_tiles
from fastvae.cpu._atomic import fetch_add
from fastvae.cpu._numba import jit, jit_math

# Elements per tile of the pool (Adam and the gradient guard). Measured with the prange kernel
# this replaced, 2 threads vs 1, float32, in place: 4096 0.65x, 16384 0.82x, 32768 1.48x,
# 652824 (the 784-400-20 VAE) 2.09x; benchmarks/bench_adam.py::test_pool_vs_serial now times the
# pool's tiles against the serial kernel.
CHUNK = 1 << 14


@jit_math
def _adam_element(p, mi, vi, g, lr, beta1, beta2, eps, inv_bc1, inv_bc2, tiny):
    # one element's new (param, m, v); the update and its finiteness check share this code,
    # compiled without reassociation (jit_math) so that both evaluate it in the written order
    # and the check sees the values the update will write
    # math: fastvae/_reference.py::adam_update
    b1, c1 = beta1
    b2, c2 = beta2
    mi = b1 * mi + c1 * g
    vi = b2 * vi + c2 * g * g
    # Moments below the dtype's smallest normal (tiny) become 0: with g = 0 (a dead unit, a
    # pixel that is 0 in every row) m decays as b1^t and is subnormal after ~700 steps, and
    # subnormal arithmetic made the whole update 10x slower (0.5 -> 5 ms per step at 652,824
    # float32: the training step's time tripled after ~700 steps of one batch). The change to
    # param is below lr * tiny / eps (1e-33 in float32 at the defaults).
    # (zero in the dtype: a float64 0.0 here made the element math float64, 2.3x slower; the
    # product keeps NaN as NaN)
    zero = tiny - tiny
    mi = mi if abs(mi) >= tiny else mi * zero
    vi = vi if vi >= tiny else vi * zero
    return p - lr * (mi * inv_bc1) / (np.sqrt(vi * inv_bc2) + eps), mi, vi


@jit
def _adam_span(param, m, v, grad, lr, beta1, beta2, eps, inv_bc1, inv_bc2, tiny):
    # param, m, v (P,) updated in place; grad (P,); scalars in the array dtype, beta1 and beta2
    # as (b, 1 - b) pairs
    for i in range(param.shape[0]):
        param[i], m[i], v[i] = _adam_element(param[i], m[i], v[i], grad[i], lr, beta1, beta2,
                                             eps, inv_bc1, inv_bc2, tiny)


@jit
def adam_kernel(param, m, v, grad, lr, beta1, beta2, eps, inv_bc1, inv_bc2, tiny, n):
    # param, m, v (P,) updated in place; grad (P,)
    _adam_span(param[:n], m[:n], v[:n], grad[:n], lr, beta1, beta2, eps, inv_bc1, inv_bc2,
               tiny)


@jit
def adam_stays_finite_kernel(param, m, v, grad, lr, beta1, beta2, eps, inv_bc1, inv_bc2,
                             tiny):
    # param, m, v, grad (P,), read only: True if the step would leave every new param, m and v
    # finite, and g^2 too (conservative: (1 - b2) g g may still fit where g g does not, but no
    # evaluation order of it can then overflow). x * 0 is 0 for finite x and NaN otherwise (see
    # all_finite_kernel); the sum vectorizes.
    zero = param.dtype.type(0.0)
    acc = zero
    for i in range(param.shape[0]):
        g = grad[i]
        p, mi, vi = _adam_element(param[i], m[i], v[i], g, lr, beta1, beta2, eps, inv_bc1,
                                  inv_bc2, tiny)
        acc += p * zero + mi * zero + vi * zero + (g * g) * zero
    return acc == zero


def _flat_args(param, grad, m, v, step, lr, beta1, beta2, eps):
    """(param, m, v, grad) as flat views, then the scalars in the arrays' dtype (the last one,
    the smallest normal number, is the moments' flush threshold)."""
    arrays = (param, m, v, grad)
    if not all(a.flags.c_contiguous for a in arrays):   # then reshape(-1) is a view, not a copy
        raise ValueError("adam_update needs C-contiguous arrays (it updates them in place)")
    dtype = param.dtype.type
    inv_bc1 = 1.0 / (1.0 - beta1 ** step)     # float64, once per call, then rounded to dtype
    inv_bc2 = 1.0 / (1.0 - beta2 ** step)
    with np.errstate(over="ignore"):         # an lr beyond the dtype is inf: the check says so
        return (*(a.reshape(-1) for a in arrays), dtype(lr), (dtype(beta1), dtype(1.0 - beta1)),
                (dtype(beta2), dtype(1.0 - beta2)), dtype(eps), dtype(inv_bc1), dtype(inv_bc2),
                np.finfo(dtype).tiny)


def adam_update(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """One Adam step, in place on param, m, v (same shape and dtype as grad, C-contiguous; any
    number of dimensions: flat views are updated). step = t >= 1. Returns None."""
    args = _flat_args(param, grad, m, v, step, lr, beta1, beta2, eps)
    run_tiles(-(-args[0].shape[0] // CHUNK), adam_tiles, *args, CHUNK)


def adam_stays_finite(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """True if ``adam_update`` with these arguments would leave param, m and v finite (and g^2,
    see the kernel); reads only. ``fastvae.optim.Adam.update`` calls it where its cheap bounds
    cannot rule out an overflow (an lr too large for the dtype, g^2 beyond float32), so such a
    step never lands and nothing has to be undone (benchmarks/dev/adam_guard_cost.py)."""
    return bool(adam_stays_finite_kernel(*_flat_args(param, grad, m, v, step, lr, beta1, beta2,
                                                     eps)))


@jit
def all_finite_kernel(a):
    # a (P,). a * 0 is 0 for finite a and NaN for +-Inf/NaN (fast-math here keeps NaN/Inf
    # semantics: no nnan/ninf), and the sum vectorizes; one pass, read only.
    acc = a.dtype.type(0.0)
    for i in range(a.shape[0]):
        acc += a[i] * a.dtype.type(0.0)
    return acc == 0.0


@jit
def abs_sum_kernel(a):
    # a (P,) -> sum |a| accumulated in float64 (vectorizes like all_finite_kernel; a max
    # reduction did not: 1.30 ms against 0.12 ms at 652,824 float32); NaN/Inf if any element is
    acc = 0.0
    for i in range(a.shape[0]):
        acc += abs(np.float64(a[i]))
    return acc


def abs_sum(a):
    """sum |a| over a (any shape, C-contiguous) as a float: NaN/Inf if any element is. The
    gradient guard before an Adam step; as an upper bound of max |a| it also feeds the step's
    overflow bound (fastvae/optim.py::Adam.update). Chunks of CHUNK elements on the pool, their
    float64 sums added in chunk order (the same bits for any thread count)."""
    flat = a.reshape(-1)
    partial = np.empty(-(-flat.shape[0] // CHUNK))
    run_tiles(partial.shape[0], abs_sum_tiles, flat, partial, CHUNK)
    return float(partial.sum())   # a fixed number of partials: a fixed order of additions


# ---------------------------------------------------------------------------------------------
# pool tiles (fastvae/_threads.py): chunks of CHUNK elements
# ---------------------------------------------------------------------------------------------
@jit
def adam_tiles(counter, n_tiles, param, m, v, grad, lr, beta1, beta2, eps, inv_bc1, inv_bc2,
               tiny, chunk):
    # as adam_kernel, tile c = elements c * chunk .. (sliced views: with index ranges into
    # the whole arrays LLVM left the loop unvectorized, 3.4x slower on one thread)
    n, last = param.shape[0], False
    while True:
        c = fetch_add(counter, 0, 1)
        if c >= n_tiles:
            return last
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        _adam_span(param[lo:hi], m[lo:hi], v[lo:hi], grad[lo:hi], lr, beta1, beta2, eps,
                   inv_bc1, inv_bc2, tiny)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def abs_sum_tiles(counter, n_tiles, a, partial, chunk):
    # partial[c] = sum |a[c * chunk ..]| (float64)
    n, last = a.shape[0], False
    while True:
        c = fetch_add(counter, 0, 1)
        if c >= n_tiles:
            return last
        partial[c] = abs_sum_kernel(a[c * chunk:min(n, (c + 1) * chunk)])
        last = fetch_add(counter, 1, 1) == n_tiles - 1


def all_finite(a):
    """True if every element of a (any shape, C-contiguous) is finite. 652,824 float32, one
    thread, in cache (benchmarks/bench_adam.py::test_all_finite): 56.5 us against 188 us for
    NumPy's float(a.sum()). The training step's guard is now ``abs_sum``, whose sum also bounds
    the Adam step (0.17 ms against this one's 0.11 ms, measured in one run)."""
    return bool(all_finite_kernel(a.reshape(-1)))
