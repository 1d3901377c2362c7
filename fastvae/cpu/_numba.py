"""Shared Numba settings for every CPU kernel.

FASTMATH leaves out ``nnan`` and ``ninf``: log-sum-exp must see -inf, and NaN/Inf in the inputs must
propagate instead of being optimized into wrong finite numbers (stumpy does the same).
``afn`` (approximate libm) is also left out: it changed exp/log results in the last bits between
numba versions and buys little next to the GEMMs.
"""
import numba

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
