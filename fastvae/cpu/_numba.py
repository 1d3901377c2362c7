"""Shared Numba settings for every CPU kernel.

FASTMATH leaves out ``nnan`` and ``ninf``: log-sum-exp must see -inf, and NaN/Inf in the inputs must
propagate instead of being optimized into wrong finite numbers (stumpy does the same).
``afn`` (approximate libm) is also left out: it changed exp/log results in the last bits between
numba versions and buys little next to the GEMMs.
"""
import os

# Numba's parallel kernels run on its OpenMP layer (GNU libgomp here), whose idle threads spin by
# default. Between OpenBLAS GEMMs, and whenever the machine holds more busy threads than cores,
# those spinning threads steal the cores the GEMMs need. A training step (784-400-20, batch 128,
# float32, 2 threads, benchmarks/dev/omp_wait_policy.py, same run, other jobs loading the
# machine to a load
# average of 3): default wait policy 8.7 ms/step in one round and 68 ms median (min 8.9) in the
# next; OMP_WAIT_POLICY=PASSIVE 8.8 and 9.0 ms. Passive costs nothing measurable when the machine
# is idle and removes the collapse. libgomp reads the variable once, when Numba's thread pool
# starts, so it is set only for that moment (unless the user chose a policy) and then removed,
# so that it does not reach other OpenMP runtimes loaded later in the process (PyTorch's own).
import numba  # noqa: E402


def _start_numba_threads_passive():
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from numba.np.ufunc import parallel
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_start_numba_threads_passive()

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

# Elementwise/row kernels: compiled once per dtype signature, cached on disk, GIL released.
jit = numba.njit(cache=True, fastmath=set(FASTMATH), nogil=True, error_model="numpy")
# Row-parallel kernels (prange over rows).
jit_parallel = numba.njit(cache=True, fastmath=set(FASTMATH), nogil=True, parallel=True,
                          error_model="numpy")

# Scalar math helpers (fastvae/cpu/_math.py): the same set without ``reassoc``, so that range
# reductions such as (x - n ln2_hi) - n ln2_lo and fdlibm's log1p keep their IEEE evaluation order.
# Fast-math flags are per instruction: the helpers keep their order when LLVM inlines them into
# the fast-math kernels.
MATH_FASTMATH = FASTMATH - {"reassoc"}
jit_math = numba.njit(cache=True, fastmath=set(MATH_FASTMATH), nogil=True, error_model="numpy")

# Rows below this count run the serial variant: thread start-up (~5-20 us) outweighs the work.
PARALLEL_MIN_ELEMENTS = 1 << 15
