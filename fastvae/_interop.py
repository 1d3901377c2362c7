"""PyTorch tensors and JAX arrays in ``fastvae.ops``, exchanged through DLPack without copies.

Every public op of ``fastvae.ops`` is wrapped by ``takes_foreign_arrays``: torch tensors and JAX
arrays among its arguments become NumPy arrays (CPU) or CuPy arrays (CUDA, which then run
``fastvae.cuda``) that view the caller's memory, and the arrays it returns go back as the caller's
type, viewing the kernel's output buffers::

    import torch
    from fastvae import ops

    mu, logvar = torch.randn(128, 20), torch.randn(128, 20)
    kl, cache = ops.kl_forward(mu, logvar)            # kl: a torch tensor (128,)
    dmu, dlogvar = ops.kl_backward(torch.ones(128), cache)   # torch tensors (128, 20)

The rules:

- Copies. Inputs are viewed, not copied, when they are C-contiguous and of the computing dtype
  (float32 or float64); otherwise they are copied once, as NumPy inputs are. Outputs wrap the
  kernel's buffers. JAX on the CPU only adopts a buffer aligned to 64 bytes (XLA's rule) and
  copies the others once (NumPy allocates with 16-byte alignment, so most outputs to JAX CPU
  arrays are copied; inputs from JAX are never copied).
- Which type comes back. The arrays returned are torch tensors if any array argument of the call
  is a torch tensor, JAX arrays if any is a JAX array, else NumPy/CuPy as before. NumPy arrays may
  be mixed into a torch or JAX call (they are used as they are); torch and JAX in one call is a
  ``TypeError``. A backward's gradients follow its ``dout``: a torch ``dout`` gives torch
  gradients whatever the forward was called with. Scalars (the loss of ``elbo_loss_and_grads``)
  and caches are returned as they are.
- Autograd. ``fastvae.ops`` records no autograd history, so a torch tensor that requires grad is a
  ``TypeError``: pass ``t.detach()`` (the same memory), or use ``fastvae.torch``, whose
  custom ops (``torch.library.custom_op``) run these kernels as differentiable PyTorch ops.
  Traced JAX values (inside ``jax.jit`` / ``jax.grad``) are a ``TypeError`` too: use
  ``fastvae.jax``.
- In place. ``adam_update`` updates torch tensors in place through the view (pass
  ``p.detach()`` for a parameter: the tensor ``p`` changes). JAX arrays are immutable, so
  ``adam_update`` refuses them.
- Devices. CPU tensors/arrays run the Numba kernels; CUDA ones become CuPy arrays
  (``cupy.from_dlpack``, with DLPack's stream synchronization) and run ``fastvae.cuda``.

torch and jax are never imported here unless an argument's type comes from them
(``type(a).__module__``), so ``import fastvae`` stays free of both.
"""
import functools
import inspect
import sys

import numpy as np

__all__ = ["to_native", "takes_foreign_arrays"]

_JAX_MODULES = ("jax", "jaxlib")


def foreign_kind(a):
    """"torch", "jax" or None (anything else: NumPy, CuPy, scalars, None, caches)."""
    top = type(a).__module__.partition(".")[0]
    if top == "torch":
        return "torch" if isinstance(a, sys.modules["torch"].Tensor) else None
    if top in _JAX_MODULES:   # jaxlib's ArrayImpl, and tracers (jax._src.*)
        return "jax" if isinstance(a, sys.modules["jax"].Array) else None
    return None


def to_native(array, name="array"):
    """-> (native, back): ``native`` a NumPy (CPU) or CuPy (CUDA) array viewing ``array``'s memory
    when it is a torch tensor or a JAX array (``array`` itself otherwise), and ``back(native)``
    the function that turns a native result into ``array``'s type without a copy (the identity for
    NumPy/CuPy). ``name`` names the argument in errors."""
    kind = foreign_kind(array)
    if kind == "torch":
        return _torch_to_native(array, name), _native_to_torch
    if kind == "jax":
        return _jax_to_native(array, name), _native_to_jax
    return array, _same


def _same(native):
    return native


def _import_cupy(name, what):
    try:
        import cupy
    except ImportError:
        raise TypeError(f"{name} is a CUDA {what}; fastvae runs CUDA arrays through CuPy: "
                        f"pip install 'fastvae[cuda]'") from None
    return cupy


def _torch_to_native(t, name):
    if t.requires_grad:
        raise TypeError(f"{name} is a torch tensor that requires grad; fastvae.ops records no "
                        f"autograd history: pass {name}.detach() (the same memory), or use "
                        f"fastvae.torch for differentiable ops")
    device = t.device.type
    if device == "cuda":
        return _import_cupy(name, "torch tensor").from_dlpack(t)
    if device != "cpu":
        raise TypeError(f"{name} is a torch tensor on {t.device}; fastvae runs on 'cpu' and "
                        f"'cuda' tensors")
    return _from_dlpack(np.from_dlpack, t, name, t.dtype)


def _jax_to_native(a, name):
    if isinstance(a, sys.modules["jax"].core.Tracer):
        raise TypeError(f"{name} is a traced JAX value (inside jax.jit, jax.grad or jax.vmap); "
                        f"fastvae.ops runs eagerly on concrete arrays: use fastvae.jax for "
                        f"jit-compatible, differentiable ops")
    devices = a.devices()
    if len(devices) != 1:
        raise TypeError(f"{name} is a JAX array sharded over {len(devices)} devices; fastvae "
                        f"takes arrays on one device")
    platform = next(iter(devices)).platform
    if platform in ("gpu", "cuda"):
        return _import_cupy(name, "JAX array").from_dlpack(a)
    if platform != "cpu":
        raise TypeError(f"{name} is a JAX array on {platform}; fastvae runs on CPU and CUDA")
    return _from_dlpack(np.from_dlpack, a, name, a.dtype)   # read-only: JAX arrays are immutable


def _from_dlpack(from_dlpack, a, name, dtype):
    try:
        return from_dlpack(a)
    except (BufferError, RuntimeError, TypeError) as e:   # e.g. bfloat16 has no NumPy dtype
        raise TypeError(f"{name} (dtype {dtype}) cannot be viewed as a NumPy array ({e}); "
                        f"fastvae takes float32 or float64 arrays") from None


def _native_to_torch(native):
    return sys.modules["torch"].from_dlpack(native)


def _native_to_jax(native):
    # Zero-copy when the buffer meets XLA's alignment (64 bytes on the CPU); else jax copies.
    return sys.modules["jax"].dlpack.from_dlpack(native)


def _to_caller(result, back):
    """Apply ``back`` to every NumPy/CuPy array in ``result`` (nested in tuples and lists)."""
    if isinstance(result, (tuple, list)):
        return type(result)(_to_caller(r, back) for r in result)
    if isinstance(result, np.ndarray) or type(result).__module__.partition(".")[0] == "cupy":
        return back(result)
    return result


def takes_foreign_arrays(func=None, *, in_place=()):
    """Decorator for a ``fastvae.ops`` function: torch tensors and JAX arrays in, the same type
    out (module docstring). ``in_place`` names the arguments the function writes into; JAX arrays
    are refused there. A call without torch/JAX arguments goes straight to ``func``.

    Cost per call (2 shared cores, noisy, min of 5 x 2000 calls): NumPy arguments ~2-4 us (a
    type check per argument; kl_forward 128x20 float32 80 -> 84 us); with torch tensors about
    7 us binding + 10 us per np.from_dlpack + 4 us per torch.from_dlpack; a JAX output ~150 us
    (jax.dlpack.from_dlpack, about what jnp.asarray costs)."""
    if func is None:
        return functools.partial(takes_foreign_arrays, in_place=in_place)
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if not any(foreign_kind(a) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)   # let the function report the bad call itself
        back = _caller_type(func.__name__, bound.arguments, in_place)
        for name, value in bound.arguments.items():
            bound.arguments[name] = to_native(value, name)[0]
        return _to_caller(func(*bound.args, **bound.kwargs), back)

    return wrapper


def _caller_type(op, arguments, in_place):
    """The converter back to the caller's array type; refuses torch + JAX and JAX in place."""
    kinds = {name: foreign_kind(value) for name, value in arguments.items()}
    found = set(kinds.values()) - {None}
    if len(found) > 1:
        raise TypeError(f"{op}: cannot mix torch tensors and JAX arrays in one call; convert one "
                        f"side first (torch.from_dlpack / jax.dlpack.from_dlpack share memory)")
    for name in in_place:
        if kinds.get(name) == "jax":
            raise TypeError(f"{op} updates {name} in place, but {name} is a JAX array and JAX "
                            f"arrays are immutable; use torch tensors or NumPy arrays for the "
                            f"state, or a functional optimizer (e.g. optax) in JAX")
    return _native_to_torch if "torch" in found else _native_to_jax
