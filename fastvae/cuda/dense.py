"""Fused dense layer ``y = act(x @ W + b)`` and its backward on the GPU: launchers of
kernels/dense.cu around cuBLAS GEMMs.

Same public names, signatures and cache as fastvae/cpu/dense.py:

- forward: ``xp.matmul(x, W, out=y)`` (cuBLAS via CuPy; NumPy under the host tests), then ONE
  in-place kernel adding the bias and applying the activation (``dense_bias_act_kernel``);
  ``cache = (x, W, y, activation)``, no pre-activation stored.
- backward: ONE kernel forming ``da = dy * act'(a)`` (act' from y) and per-block partial column
  sums of da in float64 (``dense_act_grad_kernel``), a small kernel adding the partials in a fixed
  order into ``db`` (``dense_bias_grad_kernel``; deterministic, no float atomics), then the GEMMs
  ``dW = x.T @ da`` and ``dx = da @ W.T``.

Shapes: x (N, I), W (I, O), b (O,), y (N, O). Inputs arrive validated (fastvae/ops.py):
C-contiguous, one floating dtype (float32 or float64).
"""
import numpy as np

from fastvae._reference import activation_code
from fastvae.cuda import _module
from fastvae.cuda._module import array_module, cdiv, dtype_suffix, kernel

IDENTITY = 0   # kernels/dense.cu's DENSE_* codes, in _reference.ACTIVATIONS order

# Threads per block of every kernel here (the default, 256). The backward kernel shapes them as
# (32, T / 32): 32 columns (one warp reads 32 consecutive elements of a row) by T / 32 row slots.
THREADS_PER_BLOCK = _module.THREADS_PER_BLOCK
# Grid cap in each grid dimension (the forward's grid-stride loop; the backward's row blocks).
MAX_BLOCKS = _module.MAX_BLOCKS
# Row blocks of the backward kernel: R <= MAX_ROW_BLOCKS; each writes one float64 partial row
# (O,). 128 x 13 column tiles (O = 400) = 1664 blocks of 256 threads fill an H100 (132 SMs x 8)
# with ~1.6 waves; a batch of 128 uses 128 / 8 = 16 row blocks (one row per thread). Not measured.
MAX_ROW_BLOCKS = 128


def dense_forward(x, W, b, activation):
    """``y = act(x @ W + b)``: x (N, I), W (I, O), b (O,) -> y (N, O), a new array.

    ``cache = (x, W, y, activation)`` keeps references (no copies) and no pre-activation;
    the backward reads y, so y must not be modified before it runs.
    """
    act = activation_code(activation)
    xp = array_module(x)
    N, O = x.shape[0], W.shape[1]
    y = xp.empty((N, O), dtype=x.dtype)
    xp.matmul(x, W, out=y)   # cuBLAS sgemm/dgemm straight into y
    n = N * O
    if n:
        threads = THREADS_PER_BLOCK
        blocks = min(cdiv(n, threads), MAX_BLOCKS)
        kernel("dense", f"dense_bias_act_kernel_{dtype_suffix(x.dtype)}")(
            (blocks,), (threads,), (y, b, np.int32(act), np.int64(N), np.int32(O)))
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
    xp = array_module(dy)
    N, O = dy.shape
    suffix = dtype_suffix(dy.dtype)
    da = dy if act == IDENTITY else xp.empty_like(dy)   # identity: da is dy, never written
    db = xp.empty(O, dtype=dy.dtype) if db_out is None else db_out
    if O:
        partial = _act_grad(da, dy, y, act)
        R = partial.shape[0]
        threads = THREADS_PER_BLOCK
        kernel("dense", f"dense_bias_grad_kernel_{suffix}")(
            (min(cdiv(O, threads), MAX_BLOCKS),), (threads,),
            (db, partial, np.int32(R), np.int32(O)))
    dW = xp.matmul(x.T, da, out=dW_out)   # cuBLAS with a transposed operand, no copy of x
    dx = xp.matmul(da, W.T) if need_dx else None
    return dx, dW, db


def layer_backward(da, x, W, dW, db, dx=None, x_act=IDENTITY, second=None):
    """The contract of fastvae/cpu/dense.py::layer_backward, composed from the kernels above:
    from ``da = dy * act'(a)`` (N, O), writes dW = x^T da, db = sum_n da and, if dx is given,
    dx = (da @ W^T [+ da2 @ W2^T]) * x_act'(x) (x_act a code of ACTIVATIONS)."""
    xp = array_module(da)
    sources = [(da, W, dW, db)] + ([] if second is None else [second])
    for d, w, dw, b in sources:
        dense_backward(d, (x, w, d, "identity"), need_dx=False, dW_out=dw, db_out=b)
    if dx is None:
        return
    xp.matmul(da, W.T, out=dx)
    for d, w, _, _ in sources[1:]:
        dx += xp.matmul(d, w.T)
    if x_act != IDENTITY:
        _act_grad_in_place(dx, x, x_act)


def _act_grad_in_place(d, y, act):
    """d (N, C) *= act'(a), act' from the layer output y (in place; the column sums are
    dropped)."""
    if d.shape[1]:
        _act_grad(d, d, y, act)


def _act_grad(da, dy, y, act):
    """``da = dy * act'(a)`` (act' from y; da may be dy itself) with dense_act_grad_kernel ->
    its per-block float64 column sums of da, (R, O)."""
    xp = array_module(dy)
    N, O = dy.shape
    rows_per_block = THREADS_PER_BLOCK // 32
    R = max(1, min(cdiv(N, rows_per_block), MAX_ROW_BLOCKS, MAX_BLOCKS))
    partial = xp.empty((R, O), dtype=np.float64)
    kernel("dense", f"dense_act_grad_kernel_{dtype_suffix(dy.dtype)}")(
        (cdiv(O, 32), R), (32, rows_per_block),
        (da, partial, dy, y, np.int32(act), np.int64(N), np.int32(O)))
    return partial
