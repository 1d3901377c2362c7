"""Fused dense layer on the CPU: ``y = act(x @ W + b)`` and its backward.

Forward: one BLAS GEMM written straight into the output array, then ONE in-place pass over it that
adds the bias and applies the activation (``dense_bias_act_kernel``).
Backward: ONE pass over ``dy`` that forms ``da = dy * act'(a)`` and the bias gradient
``db = sum_n da`` together (``dense_act_grad_kernel``), then the two GEMMs
``dx = da @ W.T`` and ``dW = x.T @ da``.

The pre-activation ``a`` is not stored: ``act'(a)`` is recomputed from the output ``y``:
relu ``[y > 0]``, tanh ``1 - y^2``, sigmoid ``y (1 - y)``, softplus ``sigmoid(a) = -expm1(-y)``
(``exp(-softplus(a)) = 1 - sigmoid(a)``).

Shapes: x (N, I), W (I, O), b (O,), y (N, O). Inputs arrive validated (fastvae/ops.py):
C-contiguous, one floating dtype (float32 or float64).

GEMM: BLAS, called from the launcher as ``np.matmul(x, W, out=y)`` (no extra allocation).
float32 GFLOP/s, 1 thread (OpenBLAS and numba), thread CPU time, benchmarks/dev/dense_variants.py:

    N x I x O       numpy @   matmul(out=)   numba np.dot(out) in njit   numba loop (i-k-j)
    32x784x400       33.7        34.9              23.4                        12.9
    128x784x400      36.6        36.8              32.0                        13.0
    512x784x400      36.9        36.9              36.3                        13.1
    32x400x20        23.8        24.0              20.9                         7.3
    128x400x20       28.9        30.1              27.9                         7.6
    512x400x20       30.5        30.3              30.9                         7.7
    128x20x400       29.3        29.7              29.6                        12.3
    128x400x784      36.8        36.6              33.8                        12.8

The hand-written loop is 2.8-4x slower than BLAS; numba's np.dot (scipy's OpenBLAS, called from
inside njit) ties at batch 512 and loses up to 30% at batch 32, so NumPy's matmul it is.
"""
import numpy as np

from fastvae._reference import activation_code

from ._math import exp_nonpos_like, expm1_nonpos_like, log1p_unit_like
from ._numba import jit

# Activation codes: the kernels take an int, so there is one compiled signature per dtype.
IDENTITY, RELU, TANH, SOFTPLUS, SIGMOID = range(5)   # _reference.ACTIVATIONS order

# Threads: both row passes are serial. Each runs between two OpenBLAS calls, and on this 2-core
# machine a numba prange there fights OpenBLAS's spinning worker threads (and they fight GOMP's
# spinning threads in the next GEMM). 784-400-20-400-784 forward + backward step, float32, best
# of 15, ms, serial passes vs prange passes (benchmarks/dev/dense_variants.py step):
#   N=32: 2.1 vs 2.2;  N=128: 7.7 vs 44;  N=512: 29 vs 81   (numba's omp layer, default waits)
#   OMP_WAIT_POLICY=PASSIVE: 8.2 vs 8.5 at N=128; workqueue layer: 8.1 vs 9.1; OpenBLAS on one
#   thread (numba on two): 11.4 vs 11.5. Never a win: the passes are ~5% of the step.
# Alone (no BLAS calls around, best of 3 rounds) 2 threads speed the sigmoid/softplus passes up
# 1.6-2.1x at 128..512 x 400..784 and relu ~1.3x, but on this shared machine a prange also
# stalls ~4 ms whenever the other core is busy; inside a training step it never paid.

# exp / expm1 / log1p: the vectorizable ``*_like`` helpers of fastvae/cpu/_math.py (float64
# arithmetic for float32 arrays, libm for float64; measurements there).


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
@jit
def _bias_act_row(y, b, i, act, O):
    # y (N, O) holds x @ W on entry; row i becomes act(y[i] + b). One loop per activation so the
    # branch is outside the inner loop (relu/identity vectorize).
    if act == IDENTITY:
        for j in range(O):
            y[i, j] = y[i, j] + b[j]
    elif act == RELU:
        for j in range(O):
            a = y[i, j] + b[j]
            y[i, j] = a if not (a <= 0) else 0.0   # NaN stays NaN ("a if a > 0" would give 0)
    elif act == TANH:   # tanh(|a|) = -q / (2 + q), q = expm1(-2|a|): no cancellation near 0
        for j in range(O):
            a = y[i, j] + b[j]
            q = expm1_nonpos_like(-2.0 * abs(a), y)
            t = -q / (2.0 + q)
            y[i, j] = t if a >= 0 else -t
    elif act == SOFTPLUS:   # max(a, 0) + log1p(exp(-|a|)); NaN -> NaN through the log1p term
        for j in range(O):
            a = y[i, j] + b[j]
            y[i, j] = (a if a > 0 else 0.0) + log1p_unit_like(exp_nonpos_like(-abs(a), y), y)
    else:  # SIGMOID: 1 / (1 + e) for a >= 0, e / (1 + e) below, e = exp(-|a|) <= 1 never overflows
        for j in range(O):
            a = y[i, j] + b[j]
            e = exp_nonpos_like(-abs(a), y)
            y[i, j] = (1.0 if a >= 0 else e) / (1.0 + e)   # NaN: e is NaN


@jit
def dense_bias_act_kernel(y, b, act, N, O):
    # math: fastvae/_reference.py::dense_forward (after the GEMM). y (N, O) in place, b (O,)
    for i in range(N):
        _bias_act_row(y, b, i, act, O)


@jit
def _act_grad_rows(da, acc, dy, y, act, start, stop, O):
    # da[i] = dy[i] * act'(a[i]) for rows start..stop-1, act' from y; acc (O,) float64 += da[i].
    # Identity: da is dy itself and is not written; only the column sums are formed.
    # The multiplications keep a NaN/Inf dy as NaN where act' = 0 (like the reference).
    for i in range(start, stop):
        if act == IDENTITY:
            for j in range(O):
                acc[j] += dy[i, j]
        elif act == RELU:
            for j in range(O):
                g = dy[i, j] * (1.0 if y[i, j] > 0 else 0.0)
                da[i, j] = g
                acc[j] += g
        elif act == TANH:
            for j in range(O):
                g = dy[i, j] * ((1.0 - y[i, j]) * (1.0 + y[i, j]))   # 1 - y^2, no y*y rounding
                da[i, j] = g
                acc[j] += g
        elif act == SOFTPLUS:
            for j in range(O):
                # sigmoid(a) = 1 - exp(-softplus(a))
                g = dy[i, j] * -expm1_nonpos_like(-y[i, j], y)
                da[i, j] = g
                acc[j] += g
        else:  # SIGMOID
            for j in range(O):
                g = dy[i, j] * (y[i, j] * (1.0 - y[i, j]))
                da[i, j] = g
                acc[j] += g


@jit
def dense_act_grad_kernel(da, db, dy, y, act, N, O):
    # math: fastvae/_reference.py::dense_backward (da and db). da, dy, y (N, O); db (O,).
    # float32 inputs: db accumulates in float64 (cheap next to the GEMMs).
    acc = np.zeros(O, dtype=np.float64)
    _act_grad_rows(da, acc, dy, y, act, 0, N, O)
    for j in range(O):
        db[j] = acc[j]


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def dense_forward(x, W, b, activation):
    """``y = act(x @ W + b)``: x (N, I), W (I, O), b (O,) -> y (N, O), a new array.

    ``cache = (x, W, y, activation)`` keeps references (no copies) and no pre-activation;
    the backward reads y, so y must not be modified before it runs.
    """
    act = activation_code(activation)
    N, O = x.shape[0], W.shape[1]
    y = np.empty((N, O), dtype=x.dtype)
    np.matmul(x, W, out=y)   # BLAS sgemm/dgemm straight into y (see the module docstring)
    dense_bias_act_kernel(y, b, act, N, O)   # serial: see the note on threads above
    return y, (x, W, y, activation)


def dense_backward(dy, cache, need_dx=True, dW_out=None, db_out=None):
    """Backward of ``dense_forward``: dy (N, O) -> (dx (N, I) or None, dW (I, O), db (O,)).

    With ``da = dy * act'(a)`` (act' from the cached y): ``dx = da @ W.T``, ``dW = x.T @ da``,
    ``db = sum_n da``. Returns new arrays and overwrites nothing (dy and the cache are only
    read). ``need_dx=False`` skips the dx GEMM (first layer) and returns dx = None.
    ``dW_out`` (I, O) and ``db_out`` (O,), if given, receive dW and db (the model passes views of
    its gradient buffer, which saves a copy of every dW per step) and are returned.
    """
    x, W, y, activation = cache
    act = activation_code(activation)
    N, O = dy.shape
    # identity: da is dy, never written; but Numba types a read-only dy (a JAX array, say) as
    # unwritable and refuses the kernel's write of the other activations, so that one is copied
    if act == IDENTITY:
        da = dy if dy.flags.writeable else dy.copy()
    else:
        da = np.empty_like(dy)
    db = np.empty(O, dtype=dy.dtype) if db_out is None else db_out
    dense_act_grad_kernel(da, db, dy, y, act, N, O)
    dW = np.matmul(x.T, da, out=dW_out)     # BLAS with a transposed operand, no copy of x
    dx = da @ W.T if need_dx else None
    return dx, dW, db
