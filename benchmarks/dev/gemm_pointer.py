"""float32 GEMM GFLOP/s on one thread: NumPy matmul, NumPy's cblas_sgemm and SciPy's cython_blas
sgemm called from Numba through ctypes pointers (the table in fastvae/cpu/_blas.py)."""
import ctypes, time, numpy as np, numba
from numba.extending import get_cython_function_address
from threadpoolctl import threadpool_limits, threadpool_info
np.ones(2)@np.ones(2)
info = [i for i in threadpool_info() if 'numpy.libs' in i['filepath']][0]
lib = ctypes.CDLL(info['filepath'])
# numpy's ILP64 cblas
f = lib.scipy_cblas_sgemm64_
I = ctypes.c_int64
cblas_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, I, I, I, ctypes.c_float,
    ctypes.c_void_p, I, ctypes.c_void_p, I, ctypes.c_float, ctypes.c_void_p, I)
cblas_sgemm = cblas_t(ctypes.cast(f, ctypes.c_void_p).value)
addr = get_cython_function_address('scipy.linalg.cython_blas', 'sgemm')
P = ctypes.c_void_p
fort_t = ctypes.CFUNCTYPE(None, P, P, P, P, P, P, P, P, P, P, P, P, P)
fort_sgemm = fort_t(addr)
RowMajor, NoTrans = 101, 111
@numba.njit(nogil=True)
def np_cblas(x, W, y):
    M, K = x.shape; N = W.shape[1]
    cblas_sgemm(RowMajor, NoTrans, NoTrans, M, N, K, np.float32(1.0), x.ctypes.data, K,
                W.ctypes.data, N, np.float32(0.0), y.ctypes.data, N)
@numba.njit(nogil=True)
def sp_fort(x, W, y):
    # row-major y = x W  ==  col-major y^T = W^T x^T : sgemm('N','N', N, M, K, W, N, x, K, y, N)
    M, K = x.shape; N = W.shape[1]
    ints = np.array([N, M, K, N, K, N], dtype=np.int32)
    fl = np.array([1.0, 0.0], dtype=np.float32)
    tr = np.array([ord('N')], dtype=np.uint8)
    fort_sgemm(tr.ctypes.data, tr.ctypes.data, ints[0:].ctypes.data, ints[1:].ctypes.data,
               ints[2:].ctypes.data, fl.ctypes.data, W.ctypes.data, ints[3:].ctypes.data,
               x.ctypes.data, ints[4:].ctypes.data, fl[1:].ctypes.data, y.ctypes.data,
               ints[5:].ctypes.data)
rng = np.random.default_rng(0)
with threadpool_limits(1, 'blas'):
  for (M,K,N) in [(4000,20,400),(128,20,400),(32,784,400),(128,784,400),(32,784,128),
                  (128,400,784),(32,400,128),(8,400,784),(128,400,20),(512,784,400)]:
    x = rng.standard_normal((M,K)).astype(np.float32)
    W = rng.standard_normal((K,N)).astype(np.float32)
    y0 = x@W
    for name, fn in [('numpy', lambda: np.matmul(x, W, out=y)),
                     ('np_cblas', lambda: np_cblas(x, W, y)), ('scipy', lambda: sp_fort(x, W, y))]:
        y = np.empty((M,N), np.float32); fn()
        assert np.allclose(y, y0, rtol=1e-4, atol=1e-3), name
        ts=[]
        for r in range(7):
            t=time.thread_time(); n=0
            while time.thread_time()-t < 0.05: fn(); n+=1
            ts.append((time.thread_time()-t)/n)
        print(f"{M}x{K}x{N} {name:9s} {2*M*K*N/np.median(ts)/1e9:6.1f} GFLOP/s  "
              f"same bits as numpy: {np.array_equal(y, y0)}")
