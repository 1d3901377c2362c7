"""CUDA backend: CuPy launchers (this package) for the CUDA C kernels in kernels/ (package data).

Layout per op, same file stem everywhere (see fastvae/cuda/adam.py + kernels/adam.cu, the template):

- ``kernels/<stem>.cu``: math only. A ``template <typename T> __device__`` body ``<name>_kernel``
  (outputs, then inputs, then sizes; shapes in comments; ``// math: fastvae/_reference.py::<fn>``)
  written with ``FV_KERNEL_F32_F64``, which generates its ``extern "C" __global__`` kernels
  ``<name>_kernel_f32`` / ``<name>_kernel_f64``. Shared helpers (that macro, NaN-propagating max,
  softplus/sigmoid, warp/block reductions, Philox normals, -inf and log 2 pi constants) are in
  ``kernels/common.cuh``; row sums that two ops share in ``kernels/kl.cuh`` and
  ``kernels/loglik.cuh``.
- ``fastvae/cuda/<stem>.py``: launchers with exactly the names and signatures of
  ``fastvae/cpu/<stem>.py`` (``fastvae.ops`` and the model call either backend the same way).
  The contract of both backends: ``fastvae.ops`` validates a user's arrays (errors naming the
  argument); a launcher asserts the shapes and dtypes it relies on (AssertionError), and raises
  ValueError only for limits of its own (CUDA: sizes below 2^31). Launchers allocate outputs
  with ``array_module(x)`` (``xp.empty``), pick the kernel with
  ``kernel(stem, f"<name>_kernel_{dtype_suffix(dtype)}")``, choose grid and block from
  module-level constants (``THREADS_PER_BLOCK``, ``MAX_BLOCKS``: bound from the defaults in
  ``_module``, ...) and launch ``k((grid,), (block,), args)`` with scalars as NumPy scalars of
  the kernel's C types (``T(x)``, ``np.int32``, ``np.int64``).
- ``fastvae/cuda/_module.py``: where the sources are, ``OPTIONS`` (the NVRTC options), the
  per-stem ``cupy.RawModule`` cache, and ``use_module_factory`` which lets the tests run the same
  launchers on NumPy arrays through the CPU host harness (tests/cuda_host).

Adding an op, step by step: see the docstring of tests/cuda/conftest.py.
"""
