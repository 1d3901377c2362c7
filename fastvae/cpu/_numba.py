"""Shared Numba settings for every CPU kernel.

FASTMATH leaves out ``nnan`` and ``ninf``: log-sum-exp must see -inf, and NaN/Inf in the inputs must
propagate instead of being optimized into wrong finite numbers (stumpy does the same).
``afn`` (approximate libm) is also left out: it changed exp/log results in the last bits between
numba versions and buys little next to the GEMMs.
"""
import types

import numba

from fastvae._threads import start_numba_threads

start_numba_threads()   # OpenMP's passive wait policy for Numba's pool (fastvae/_threads.py)

FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

# Elementwise/row kernels: compiled once per dtype signature, cached on disk, GIL released.
jit = numba.njit(cache=True, fastmath=set(FASTMATH), nogil=True, error_model="numpy")
# Row-parallel kernels (prange over rows).
jit_parallel = numba.njit(cache=True, fastmath=set(FASTMATH), nogil=True, parallel=True,
                          error_model="numpy")


def jit_twins(kernel):
    """``(jit(kernel), jit_parallel(twin))``: one kernel body, written with ``prange``, compiled
    serially (where Numba's prange is range) and in parallel. The twin is the same code under the
    name ``<name>_parallel``: Numba's on-disk cache names its files by the function's qualname
    and keys them by bytecode and signature, not by the ``parallel`` option, so two variants
    under one name would load each other's code."""
    name = kernel.__name__ + "_parallel"
    twin = types.FunctionType(kernel.__code__, kernel.__globals__, name, kernel.__defaults__,
                              kernel.__closure__)
    twin.__qualname__ = kernel.__qualname__ + "_parallel"
    twin.__doc__ = kernel.__doc__
    return jit(kernel), jit_parallel(twin)


# Scalar math helpers (fastvae/cpu/_math.py): the same set without ``reassoc``, so that range
# reductions such as (x - n ln2_hi) - n ln2_lo and fdlibm's log1p keep their IEEE evaluation order.
# Fast-math flags are per instruction: the helpers keep their order when LLVM inlines them into
# the fast-math kernels.
MATH_FASTMATH = FASTMATH - {"reassoc"}
jit_math = numba.njit(cache=True, fastmath=set(MATH_FASTMATH), nogil=True, error_model="numpy")

# Rows below this count run the serial variant: thread start-up (~5-20 us) outweighs the work.
PARALLEL_MIN_ELEMENTS = 1 << 15
