"""Fused dense layer on the CPU: ``y = act(x @ W + b)`` and its backward, as tiles of the pool.

Every GEMM is cut into tiles of the output whose shape does not depend on the thread count
(``FORWARD_TILE`` etc.). The threads of fastvae's pool (fastvae/_threads.py) claim tiles from a
shared counter; each tile is one one-thread ``cblas_?gemm`` call on sub-blocks of the arrays
(fastvae/cpu/_blas.py), then its elementwise epilogue while the tile is still in cache:

- forward (``forward_tiles``): y's tile = x's rows @ W's columns, then bias + activation.
- backward (``layer_backward`` / ``backward_tiles``), from ``da = dy * act'(a)``: dx's tiles
  ``da @ W^T`` times the derivative of the activation that produced x (so dx leaves as the
  previous layer's da: one pass fewer per layer), and dW's tiles ``x^T @ da`` over the whole
  batch, with ``db = sum_n da`` for their columns. No tile reduces into another's output, so the
  bits do not depend on which thread ran what.
- ``dense_backward`` (the op of fastvae.ops) first forms da in row blocks (``act_grad_tiles``).

The pre-activation ``a`` is not stored: ``act'(a)`` is recomputed from the output ``y``:
relu ``[y > 0]``, tanh ``1 - y^2``, sigmoid ``y (1 - y)``, softplus ``sigmoid(a) = -expm1(-y)``
(``exp(-softplus(a)) = 1 - sigmoid(a)``).

Shapes: x (N, I), W (I, O), b (O,), y (N, O). Inputs arrive validated (fastvae/ops.py):
C-contiguous, one floating dtype (float32 or float64).

Before the pool (kept for the record): one ``np.matmul(x, W, out=y)`` per GEMM with OpenBLAS's
threads. float32 GFLOP/s, 1 thread, thread CPU time, benchmarks/dev/dense_variants.py:

    N x I x O       numpy @   matmul(out=)   numba np.dot(out) in njit   numba loop (i-k-j)
    32x784x400       33.7        34.9              23.4                        12.9
    128x784x400      36.6        36.8              32.0                        13.0
    512x784x400      36.9        36.9              36.3                        13.1
    128x400x784      36.8        36.6              33.8                        12.8

The hand-written loop is 2.8-4x slower than BLAS, and numba's np.dot (SciPy's OpenBLAS) loses up
to 30% at batch 32: hence NumPy's own OpenBLAS, now called per tile from inside Numba.
"""
import numpy as np

from fastvae._threads import run_tiles
from fastvae._reference import activation_code

from ._atomic import fetch_add
from ._blas import NO_TRANS, ROW_MAJOR, TRANS, gemm_for
from ._math import exp_nonpos_like, expm1_nonpos_like, log1p_unit_like
from ._numba import jit

# Activation codes: the kernels take an int, so there is one compiled signature per dtype.
IDENTITY, RELU, TANH, SOFTPLUS, SIGMOID = range(5)   # _reference.ACTIVATIONS order

# Tile shapes (rows, columns) of the outputs; they do not depend on the thread count, so neither
# do the results. ROW_TILE: rows per tile of the elementwise activation-gradient pass.
# Above LARGE_ROWS rows (the log-likelihood's 4096-pair decoder chunks, many-sample training)
# the forward and dx tiles are LARGE_TILE: float32 GFLOP/s on one thread, 4000x400x784,
# same run: whole matmul 100, tiles 64x128 71, 128x256 75, 256x512 73, 256x784 81; 4000x20x400:
# 48, 40, 46, 49, 49 (benchmarks/dev/tile_shapes.py; the shapes depend on the rows only).
# Training step 784-400-20, float32, 2 threads, samples/s, medians of 7 interleaved rounds
# (benchmarks/dev/tile_tuning.py; forward and dx tiles / dW tiles):
#   64x128 / 128x128: batch 32 7.8k, 128 17.2k, 512 16.3k;  64x256 / 128x256: 8.2k, 17.5k, 19.6k
#   128x256 / 256x256: 7.9k, 18.4k, 20.3k;  32x400 / 400x128: 6.2k, 16.6k, 16.0k
# Larger tiles pack each operand panel fewer times; at batch 32 they still leave 2-4 tiles per
# layer for 2 threads.
FORWARD_TILE = (128, 256)
BACKWARD_DX_TILE = (128, 256)
BACKWARD_DW_TILE = (256, 256)
LARGE_ROWS, LARGE_TILE = 1024, (256, 784)
ROW_TILE = 64


def _rows_tile(n_rows, tile):
    return LARGE_TILE if n_rows > LARGE_ROWS else tile

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
# elementwise epilogues (one row, columns c0..c1-1)
# ---------------------------------------------------------------------------------------------
@jit
def _bias_act_row(y, b, i, act, c0, c1):
    # y[i, c0:c1] holds x @ W on entry and becomes act(y[i, c0:c1] + b[c0:c1]). The loops run
    # over views from index 0: indexing y[i, j] with j from a runtime c0 kept Numba's negative-
    # index check in the loop and LLVM from vectorizing it (a 4000x400 relu epilogue took 3 ms
    # against 0.45 ms). One loop per activation: the branch stays outside the inner loop.
    yr, br = y[i, c0:c1], b[c0:c1]
    n = yr.shape[0]
    if act == IDENTITY:
        for j in range(n):
            yr[j] = yr[j] + br[j]
    elif act == RELU:
        for j in range(n):
            a = yr[j] + br[j]
            yr[j] = a if not (a <= 0) else 0.0   # NaN stays NaN ("a if a > 0" would give 0)
    elif act == TANH:   # tanh(|a|) = -q / (2 + q), q = expm1(-2|a|): no cancellation near 0
        for j in range(n):
            a = yr[j] + br[j]
            q = expm1_nonpos_like(-2.0 * abs(a), y)
            t = -q / (2.0 + q)
            yr[j] = t if a >= 0 else -t
    elif act == SOFTPLUS:   # max(a, 0) + log1p(exp(-|a|)); NaN -> NaN through the log1p term
        for j in range(n):
            a = yr[j] + br[j]
            yr[j] = (a if a > 0 else 0.0) + log1p_unit_like(exp_nonpos_like(-abs(a), y), y)
    else:  # SIGMOID: 1 / (1 + e) for a >= 0, e / (1 + e) below, e = exp(-|a|) <= 1 never overflows
        for j in range(n):
            a = yr[j] + br[j]
            e = exp_nonpos_like(-abs(a), y)
            yr[j] = (1.0 if a >= 0 else e) / (1.0 + e)   # NaN: e is NaN


@jit
def _act_grad_row(da, dy, y, i, act, c0, c1):
    # da[i, c0:c1] = dy[i, c0:c1] * act'(a), act' from the output y; da may be dy itself (in
    # place). Views from index 0, as in _bias_act_row. The multiplications keep a NaN/Inf dy as
    # NaN where act' = 0 (like the reference).
    dr, gr, yr = da[i, c0:c1], dy[i, c0:c1], y[i, c0:c1]
    n = dr.shape[0]
    if act == IDENTITY:
        for j in range(n):
            dr[j] = gr[j]
    elif act == RELU:
        for j in range(n):
            dr[j] = gr[j] * (1.0 if yr[j] > 0 else 0.0)
    elif act == TANH:
        for j in range(n):
            dr[j] = gr[j] * ((1.0 - yr[j]) * (1.0 + yr[j]))   # 1 - y^2, no y*y rounding
    elif act == SOFTPLUS:
        for j in range(n):
            dr[j] = gr[j] * -expm1_nonpos_like(-yr[j], y)   # sigmoid(a) = 1 - exp(-y)
    else:  # SIGMOID
        for j in range(n):
            dr[j] = gr[j] * (yr[j] * (1.0 - yr[j]))


@jit
def _column_sums(db, da, c0, c1):
    # db[c0:c1] = sum over all rows of da[:, c0:c1], rows in order, float64 accumulation
    acc = np.zeros(c1 - c0, dtype=np.float64)
    n = acc.shape[0]
    for i in range(da.shape[0]):
        row = da[i, c0:c1]
        for j in range(n):
            acc[j] += row[j]
    out = db[c0:c1]
    for j in range(n):
        out[j] = acc[j]


@jit
def dense_bias_act_kernel(y, b, act, N, O):
    # math: fastvae/_reference.py::dense_forward (after the GEMM). y (N, O) in place, b (O,)
    for i in range(N):
        _bias_act_row(y, b, i, act, 0, O)


@jit
def dense_act_grad_kernel(da, db, dy, y, act, N, O):
    # math: fastvae/_reference.py::dense_backward (da and db). da, dy, y (N, O); db (O,).
    # Identity: da is dy itself and is not written; only the column sums are formed.
    if act != IDENTITY:
        for i in range(N):
            _act_grad_row(da, dy, y, i, act, 0, O)
        _column_sums(db, da, 0, O)
    else:
        _column_sums(db, dy, 0, O)


# ---------------------------------------------------------------------------------------------
# tile loops: each thread of the pool runs one of these per phase (fastvae/_threads.py::Phase)
# ---------------------------------------------------------------------------------------------
@jit
def _at(a, i, j):
    # address of a[i, j] of a C-contiguous 2-D array (a tile's corner, for BLAS)
    return a.ctypes.data + (i * a.shape[1] + j) * a.itemsize


@jit
def forward_tiles(counter, n_tiles, gemm, x, W, b, y, act, tile_rows, tile_cols):
    # y (N, O) = act(x (N, I) @ W (I, O) + b (O,)), tile by tile: tile t covers rows
    # (t // col_tiles) * tile_rows.. and columns (t % col_tiles) * tile_cols..; one-thread GEMM
    # into y's tile, then bias + activation while the tile is in cache. -> True if this thread
    # completed the last tile.
    N, I = x.shape
    O = W.shape[1]
    col_tiles = (O + tile_cols - 1) // tile_cols
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        r0, c0 = (t // col_tiles) * tile_rows, (t % col_tiles) * tile_cols
        r1, c1 = min(N, r0 + tile_rows), min(O, c0 + tile_cols)
        gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, r1 - r0, c1 - c0, I, 1.0, _at(x, r0, 0), I,
             _at(W, 0, c0), O, 0.0, _at(y, r0, c0), O)
        for i in range(r0, r1):
            _bias_act_row(y, b, i, act, c0, c1)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def act_grad_tiles(counter, n_tiles, da, dy, y, act, tile_rows):
    # da (N, O) = dy * act'(y), by row blocks
    N, O = dy.shape
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        for i in range(t * tile_rows, min(N, (t + 1) * tile_rows)):
            _act_grad_row(da, dy, y, i, act, 0, O)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def backward_tiles(counter, n_tiles, gemm, n_dx_tiles, da, x, W, dW, db, da2, W2, dW2, db2,
                   n_sources, dx, x_act, tile_rows, tile_cols, w_tile_rows, w_tile_cols):
    # Backward of one dense layer (or of two that read the same input x, n_sources = 2: the
    # mu and logvar heads), from da (N, O) = dy * act'(a), already formed.
    # Tiles 0..n_dx_tiles-1: dx (N, I) = da @ W^T (+ da2 @ W2^T) by (tile_rows x tile_cols)
    #   tiles, then dx *= x_act'(x) in place (the previous layer's activation, whose output x
    #   is: dx becomes that layer's da); n_dx_tiles = 0: no dx (first layer).
    # Then per source: dW (I, O) = x^T @ da by (w_tile_rows x w_tile_cols) tiles over the full
    #   N (no reduction across tiles), and db[cols] = column sums of da, in the tiles of
    #   dW's first row block. Fixed tiles, fixed order: the same bits for any thread count.
    N, I = x.shape
    O, O2 = W.shape[1], W2.shape[1]
    dx_col_tiles = (I + tile_cols - 1) // tile_cols
    w_row_tiles = (I + w_tile_rows - 1) // w_tile_rows
    w_tiles_1 = w_row_tiles * ((O + w_tile_cols - 1) // w_tile_cols)
    last = False
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= n_tiles:
            return last
        if t < n_dx_tiles:
            r0, c0 = (t // dx_col_tiles) * tile_rows, (t % dx_col_tiles) * tile_cols
            r1, c1 = min(N, r0 + tile_rows), min(I, c0 + tile_cols)
            gemm(ROW_MAJOR, NO_TRANS, TRANS, r1 - r0, c1 - c0, O, 1.0, _at(da, r0, 0), O,
                 _at(W, c0, 0), O, 0.0, _at(dx, r0, c0), I)
            if n_sources == 2:
                gemm(ROW_MAJOR, NO_TRANS, TRANS, r1 - r0, c1 - c0, O2, 1.0, _at(da2, r0, 0), O2,
                     _at(W2, c0, 0), O2, 1.0, _at(dx, r0, c0), I)
            if x_act != IDENTITY:
                for i in range(r0, r1):
                    _act_grad_row(dx, dx, x, i, x_act, c0, c1)
        else:
            u = t - n_dx_tiles
            if u < w_tiles_1:
                _dw_tile(gemm, u, x, da, dW, db, w_row_tiles, w_tile_rows, w_tile_cols)
            else:
                _dw_tile(gemm, u - w_tiles_1, x, da2, dW2, db2, w_row_tiles, w_tile_rows,
                         w_tile_cols)
        last = fetch_add(counter, 1, 1) == n_tiles - 1


@jit
def _dw_tile(gemm, u, x, da, dW, db, w_row_tiles, w_tile_rows, w_tile_cols):
    # tile u of dW (I, O) = x^T @ da (rows of dW = columns of x); db's columns in row block 0
    N, I = x.shape
    O = da.shape[1]
    i0, o0 = (u % w_row_tiles) * w_tile_rows, (u // w_row_tiles) * w_tile_cols
    i1, o1 = min(I, i0 + w_tile_rows), min(O, o0 + w_tile_cols)
    gemm(ROW_MAJOR, TRANS, NO_TRANS, i1 - i0, o1 - o0, N, 1.0, _at(x, 0, i0), I,
         _at(da, 0, o0), O, 0.0, _at(dW, i0, o0), O)
    if i0 == 0:
        _column_sums(db, da, o0, o1)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def _tiles(rows, cols, tile):
    return -(-rows // tile[0]) * -(-cols // tile[1])




def dense_forward(x, W, b, activation):
    """``y = act(x @ W + b)``: x (N, I), W (I, O), b (O,) -> y (N, O), a new array.

    ``cache = (x, W, y, activation)`` keeps references (no copies) and no pre-activation;
    the backward reads y, so y must not be modified before it runs.
    """
    act = activation_code(activation)
    N, O = x.shape[0], W.shape[1]
    y = np.empty((N, O), dtype=x.dtype)
    tile = _rows_tile(N, FORWARD_TILE)
    run_tiles(_tiles(N, O, tile), forward_tiles, gemm_for(x.dtype), x, W, b, y, act, *tile)
    return y, (x, W, y, activation)


def dense_backward(dy, cache, need_dx=True, dW_out=None, db_out=None):
    """Backward of ``dense_forward``: dy (N, O) -> (dx (N, I) or None, dW (I, O), db (O,)).

    With ``da = dy * act'(a)`` (act' from the cached y): ``dx = da @ W.T``, ``dW = x.T @ da``,
    ``db = sum_n da``. Returns new arrays and overwrites nothing (dy and the cache are only
    read). ``need_dx=False`` skips the dx GEMM (first layer) and returns dx = None.
    ``dW_out`` (I, O) and ``db_out`` (O,), if given, receive dW and db and are returned.
    """
    x, W, y, activation = cache
    act = activation_code(activation)
    N, O = dy.shape
    if act == IDENTITY:
        da = dy     # read only below
    else:
        da = np.empty_like(dy)
        run_tiles(-(-N // ROW_TILE), act_grad_tiles, da, dy, y, act, ROW_TILE)
    dx = np.empty_like(x) if need_dx else None
    dW = np.empty_like(W) if dW_out is None else dW_out
    db = np.empty(O, dtype=dy.dtype) if db_out is None else db_out
    layer_backward(da, x, W, dW, db, dx, IDENTITY)
    return dx, dW, db


def layer_backward(da, x, W, dW, db, dx=None, x_act=IDENTITY, second=None):
    """The tiled backward of a dense layer from ``da = dy * act'(a)`` (N, O): writes
    dW = x^T da (I, O) and db = sum_n da (O,), and, if dx (N, I) is given,
    dx = (da @ W^T) * x_act'(x), the upstream gradient already multiplied by the derivative of
    the activation that produced x (the previous layer's, as a code of ACTIVATIONS): what that
    layer's backward takes as its da. second = (da2, W2, dW2, db2): a second layer reading the
    same x (the encoder's mu and logvar heads), whose dx term is added."""
    N, I = x.shape
    da2, W2, dW2, db2 = (da, W, dW, db) if second is None else second
    dx_tile = _rows_tile(N, BACKWARD_DX_TILE)
    n_dx = 0 if dx is None else _tiles(N, I, dx_tile)
    n_w = _tiles(I, W.shape[1], BACKWARD_DW_TILE)
    n_w += 0 if second is None else _tiles(I, W2.shape[1], BACKWARD_DW_TILE)
    run_tiles(n_dx + n_w, backward_tiles, gemm_for(x.dtype), n_dx, da, x, W, dW, db, da2, W2,
              dW2, db2, 1 if second is None else 2, dW if dx is None else dx, x_act, *dx_tile,
              *BACKWARD_DW_TILE)
