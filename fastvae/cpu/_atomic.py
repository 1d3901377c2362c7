"""Atomic integer operations on int64 array elements, for Numba kernels (LLVM ``atomicrmw``).

The worker pool (fastvae/_threads.py) hands out tiles through a shared counter: each thread
claims the next tile index with ``fetch_add(counter, 0, 1)``, so no tile belongs to a fixed thread
and a thread the OS deschedules only delays the tile it holds.
"""
import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastvae.cpu._numba import jit


@intrinsic
def fetch_add(typingctx, array, index, value):
    """``old = array[index]; array[index] += value`` atomically (sequentially consistent);
    returns old. array: a C-contiguous int64 array."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    sig = types.int64(array, index, value)

    def codegen(context, builder, signature, args):
        array_value, index_value, add = args
        array_type, index_type, value_type = signature.args
        ary = context.make_array(array_type)(context, builder, array_value)
        index_value = context.cast(builder, index_value, index_type, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [index_value])
        add = context.cast(builder, add, value_type, types.int64)
        return builder.atomic_rmw("add", ptr, add, "seq_cst")

    return sig, codegen


@intrinsic
def load(typingctx, array, index):
    """``array[index]`` as an atomic (acquire) read: the compiler may not hoist it out of a
    spin loop, and unlike an atomic add it does not take the cache line away from the threads
    that write it."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64):
        return None
    sig = types.int64(array, index)

    def codegen(context, builder, signature, args):
        array_value, index_value = args
        array_type, index_type = signature.args
        ary = context.make_array(array_type)(context, builder, array_value)
        index_value = context.cast(builder, index_value, index_type, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [index_value])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@jit
def spin_while_equal(array, index, value, spins):
    # array[index] after it differs from value, or value after ``spins`` reads (bounded spin)
    for _ in range(spins):
        now = load(array, index)
        if now != value:
            return now
    return value


@jit
def spin_until_at_least(array, index, target, spins):
    # True once array[index] >= target, False after ``spins`` reads
    for _ in range(spins):
        if load(array, index) >= target:
            return True
    return False


@numba.njit(cache=True)
def add(array, index, value):
    # fetch_add, callable from Python (an intrinsic is not). It keeps the GIL: released here,
    # a worker that had just seen a new phase took the GIL for its Python prologue and the
    # caller waited for it before starting its own tiles.
    return fetch_add(array, index, value)


@numba.njit(cache=True)
def read(array, index):
    # load, callable from Python
    return load(array, index)
