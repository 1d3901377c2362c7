"""fastvae's fused ELBO, IWAE loss and reparameterization as differentiable PyTorch ops.

Each op is registered with ``torch.library.custom_op`` (namespace ``fastvae``, with fake
implementations, ``register_autograd`` and a ``register_vmap`` rule), so the same kernels run in
eager mode, under ``torch.compile(fullgraph=True)`` and under ``torch.func`` (grad, vmap).

    import torch
    import fastvae.torch as fvt

    enc, dec = torch.nn.Linear(784, 2 * 20), torch.nn.Linear(20, 784)
    sample = fvt.Reparameterize()        # seed drawn from torch's generator; a buffer, as offset
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    for epoch in range(epochs):
        for x in batches:                                   # x (N, 784) in [0, 1]
            mu, logvar = enc(x).chunk(2, dim=1)             # (N, 20) each
            z = sample(mu, logvar)                          # fresh noise every call
            loss = fvt.elbo_loss(x, dec(z), mu, logvar)     # dec(z): logits, not probabilities
            opt.zero_grad()
            loss.backward()
            opt.step()

- ``elbo_loss(x, dec_out, ...)``: note the order (data first, then the decoder's output), unlike
  ``F.binary_cross_entropy(recon, x)``; for "bernoulli" ``dec_out`` are logits and x must lie in
  [0, 1] (the kernel refuses other values). ``reduction`` is "mean" (default), "sum" or "none",
  as in ``torch.nn`` losses. One fused pass computes the loss and every gradient; the backward
  scales the saved gradients.
- ``iwae_loss``: ``-(logsumexp_k log w_nk - log K)``, fused with its backward (the softmax
  weights), never materializing the (N, K, D) log-likelihood terms.
- ``reparameterize`` / ``Reparameterize`` draw the noise inside the kernel from fastvae's Philox
  stream (``eps = fastvae.random.normal((N, L), seed, offset)``); the backward regenerates it.
  ``Reparameterize`` advances its own offset by ``mu.numel()`` per call and keeps seed and offset
  as buffers (state_dict), so epochs and partial last batches get fresh noise and a resumed run
  continues the stream.
- dtypes: float32 and float64 compute as they are (mixed: float64); bfloat16 and float16 inputs
  compute in float32 and the result comes back in the inputs' promoted dtype (so autocast works);
  each gradient has its input's dtype.
- Double backward: when the backward runs with grad mode on (``create_graph=True``, e.g. a
  gradient penalty, or ``torch.func.grad``), the gradients are computed with differentiable torch
  ops from the saved inputs instead of the kernels' saved results, so higher-order gradients are
  exact (``iwae_loss`` then materializes its (N, K, D) terms). Forward-mode AD (``torch.func.jvp``,
  dual tensors) raises NotImplementedError. Saved inputs modified in place before the backward
  raise (PyTorch's version counter).
- Paths: plain CPU tensors in eager mode run the kernels directly from autograd.Functions (no
  dispatcher round trip: ``reparameterize`` forward + backward costs about what PyTorch's own
  three ops cost at (128, 20), benchmarks/dev/torch_overhead.py); torch.compile traces the
  ``torch.ops.fastvae.*`` custom ops; torch.func runs functorch-ready Functions over them.
- Threads: CPU kernels follow ``torch.set_num_threads`` unless ``fastvae.set_num_threads`` was
  called (or ``FASTVAE_NUM_THREADS`` set).
"""
import numbers
from typing import Optional, Tuple

import numpy as np
import torch

from . import _threads, ops
from . import random as _random
from ._reference import INDEX_LIMIT, LIKELIHOODS, LOG_2PI
from .cpu import reparam as _cpu_reparam

__all__ = ["reparameterize", "Reparameterize", "elbo_loss", "ELBOLoss", "iwae_loss"]

REDUCTIONS = ("mean", "sum", "none")
_T = torch.Tensor


# ---------------------------------------------------------------------------------------------
# cheap argument checks (errors name the argument and the type the caller passed)
# ---------------------------------------------------------------------------------------------
def _tensor(name, t, ndim):
    if not isinstance(t, _T):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/64, bfloat16, float16), got "
                        f"dtype {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _real(name, value):
    """A Python number or a 0-d tensor -> float (beta >= 0 is checked by fastvae.ops)."""
    if isinstance(value, _T):
        if value.ndim != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number or a 0-d real tensor, got a Tensor of "
                            f"shape {tuple(value.shape)} and dtype {value.dtype}")
        return float(value.item())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _integer(name, value, high, keep_tensor=False):
    """A Python int or a 0-d integer tensor in [0, high] -> int (or the tensor, when asked)."""
    if isinstance(value, _T):
        if value.ndim != 0 or value.is_floating_point() or value.dtype == torch.bool \
                or value.is_complex():
            raise TypeError(f"{name} must be an int or a 0-d integer tensor, got a Tensor of "
                            f"shape {tuple(value.shape)} and dtype {value.dtype}")
        if keep_tensor:
            return value
        value = int(value.item())
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value}")
    return value


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _dtypes(*tensors):
    """-> (compute dtype, result dtype): float64 if any input is, else float32; the result is
    the inputs' promoted dtype (bfloat16 stays bfloat16)."""
    out = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            out = torch.promote_types(out, t.dtype)
    return (torch.float64 if out == torch.float64 else torch.float32), out


def _cast(dtype, *tensors):
    """Differentiable casts to the compute dtype (autograd casts the gradients back)."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


# ---------------------------------------------------------------------------------------------
# eager fast path or custom op; threads
# ---------------------------------------------------------------------------------------------
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _direct(*tensors):
    """True when the kernels can run right here on these tensors (plain CPU tensors, eager):
    else the custom op (FakeTensors under torch.compile, functorch's wrapped tensors)."""
    if torch.compiler.is_compiling():
        return False
    return all(type(t) in _PLAIN and not _is_wrapped(t) for t in tensors if isinstance(t, _T))


_JVP = torch._C._functorch.TransformType.Jvp
_forward_ad = torch.autograd.forward_ad


def _refuse_forward_mode(*tensors):
    """Forward-mode AD would get a silently zero tangent through these ops: refuse it."""
    if torch.compiler.is_compiling():
        return
    stack = torch._C._functorch.get_interpreter_stack()
    dual = bool(stack) and any(i.key() == _JVP for i in stack)
    if not dual and _forward_ad._current_level >= 0:
        dual = any(isinstance(t, _T) and _forward_ad.unpack_dual(t).tangent is not None
                   for t in tensors)
    if dual:
        raise NotImplementedError(
            "fastvae.torch's ops support reverse-mode autograd only (backward, autograd.grad, "
            "torch.func.grad / vjp / vmap); forward mode (torch.func.jvp, jacfwd, "
            "torch.autograd.forward_ad dual tensors) is not implemented")


_torch_threads_seen = [None]   # torch.get_num_threads() when last looked at


def _follow_torch_threads():
    """Use torch's thread count for fastvae's CPU kernels, unless the user chose fastvae's own
    (fastvae.set_num_threads or FASTVAE_NUM_THREADS). ~0.3 us when nothing changed."""
    n = torch.get_num_threads()
    if n != _torch_threads_seen[0]:
        _torch_threads_seen[0] = n
        _threads.follow(n)


def _np(t):
    """A NumPy view of a CPU tensor (the tensor itself on other devices: fastvae.ops takes it
    through DLPack); None stays None."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


def _back(a, like):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(
        a, device=like.device)


def _vmap_by_loop(op):
    """A register_vmap rule that runs ``op`` once per vmapped index and stacks the results."""
    def rule(info, in_dims, *args):
        def pick(i):
            return [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        outs = [op(*pick(i)) for i in range(info.batch_size)]
        if isinstance(outs[0], tuple):
            stacked = tuple(torch.stack(parts) for parts in zip(*outs))
            return stacked, (0,) * len(stacked)
        return torch.stack(outs), 0
    return rule


def _register(op, fake, setup=None, backward=None):
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup)
    torch.library.register_vmap(op, _vmap_by_loop(op))


def _function(name, forward, setup, backward):
    """Two autograd.Functions with the custom op's inputs, outputs, setup and backward: the
    functorch-ready one (setup_context, generated vmap rule) for torch.func, and a plain
    ``forward(ctx, ...)`` one for eager calls (``apply`` of the former binds its arguments with
    inspect.signature: ~25 us a call)."""
    def eager_forward(ctx, *args):
        out = forward(*args)
        setup(ctx, args, out)
        return out

    body = {"setup_context": staticmethod(setup), "backward": staticmethod(backward),
            "generate_vmap_rule": True, "forward": staticmethod(forward)}
    functorch_ready = type(name, (torch.autograd.Function,), body)
    eager = type(name + "Eager", (torch.autograd.Function,), {
        "forward": staticmethod(eager_forward), "backward": staticmethod(backward)})
    return functorch_ready, eager


def _apply(functions, *args):
    """The eager Function on plain tensors, the functorch-ready one on wrapped tensors."""
    functorch_ready, eager = functions
    return (eager if _direct(*args) else functorch_ready).apply(*args)


# ---------------------------------------------------------------------------------------------
# reparameterize
# ---------------------------------------------------------------------------------------------
def _stream(seed, offset, numel):
    """(seed, offset) as Python ints from ints or int64 tensors (seeds >= 2^63 travel as their
    two's complement in an int64 tensor)."""
    seed = int(seed) % (1 << 64)
    offset = int(offset)
    if offset < 0 or offset + numel >= INDEX_LIMIT:
        raise ValueError(f"offset must be in [0, 2^62 - N L), got {offset}")
    return seed, offset


_NP = {torch.float32: np.float32, torch.float64: np.float64}
_keys = {}   # seed -> the kernels' Philox key (np.uint64 pair): kernel_key costs ~6 us


def _key(seed):
    key = _keys.get(seed)
    if key is None:
        if len(_keys) > 64:
            _keys.clear()
        key = _keys[seed] = _cpu_reparam.kernel_key(seed)
    return key


def _flat_np(t):
    """A C-contiguous flat NumPy array of a CPU tensor's values (a view when possible)."""
    return t.numpy(force=True).ravel()    # force: detached (a view; CPU, no conj/neg bits here)


def _reparam_impl(mu, logvar, seed, offset):
    """mu, logvar (N, L) of one float dtype -> z (N, L) (the kernel draws eps itself): the
    launcher of fastvae/cpu/reparam.py, called directly with a cached key."""
    if mu.device.type != "cpu":
        z, _ = ops.reparam_forward(mu.detach(), logvar.detach(), seed=int(seed) % (1 << 64),
                                   offset=int(offset))
        return z
    return _reparam_kernel(mu, logvar, *_stream(seed, offset, mu.numel()))


def _reparam_kernel(mu, logvar, seed, offset):
    """The CPU forward on checked arguments (seed, offset Python ints in range)."""
    _follow_torch_threads()
    z = np.empty(mu.shape, _NP[mu.dtype])
    kernel = (_cpu_reparam.reparam_noise_forward_kernel if z.size < _PARALLEL_MIN
              else _cpu_reparam.reparam_noise_forward_parallel_kernel)
    kernel(z.ravel(), _flat_np(mu), _flat_np(logvar), *_key(seed), np.int64(offset))
    return torch.from_numpy(z)


def _reparam_dlogvar_impl(dz, logvar, seed, offset):
    """dz, logvar (N, L) -> dlogvar = dz eps exp(logvar / 2) / 2, the noise regenerated."""
    if dz.device.type != "cpu":
        _, cache = ops.reparam_forward(torch.zeros_like(logvar), logvar.detach(),
                                       seed=int(seed) % (1 << 64), offset=int(offset))
        return ops.reparam_backward(dz.detach().contiguous(), cache)[1]
    return _reparam_dlogvar_kernel(dz, logvar, *_stream(seed, offset, dz.numel()))[1]


def _reparam_dlogvar_kernel(dz, logvar, seed, offset):
    """The CPU backward on checked arguments -> (dmu, dlogvar); dz may be non-contiguous."""
    _follow_torch_threads()
    dtype = _NP[dz.dtype]
    dmu, dlogvar = np.empty(dz.shape, dtype), np.empty(dz.shape, dtype)
    kernel = (_cpu_reparam.reparam_noise_backward_kernel if dmu.size < _PARALLEL_MIN
              else _cpu_reparam.reparam_noise_backward_parallel_kernel)
    kernel(dmu.ravel(), dlogvar.ravel(), _flat_np(dz), _flat_np(logvar), *_key(seed),
           np.int64(offset))
    # dmu = dz, a fresh copy: autograd can adopt it as mu.grad instead of cloning dz
    return torch.from_numpy(dmu), torch.from_numpy(dlogvar)


_PARALLEL_MIN = _cpu_reparam.PARALLEL_MIN_ELEMENTS


# The custom ops carry the stream position as ``stream``, an int64 (2,) tensor [seed (its two's
# complement for seeds >= 2^63), offset]. ``reparam`` returns the stream it used as a second
# output, which the backward saves: under torch.compile the caller's offset buffer is advanced
# in place after the call, and a saved (or recomputed) input would be read after that change.
@torch.library.custom_op("fastvae::reparam", mutates_args=())
def _reparam_op(mu: _T, logvar: _T, seed: _T, offset: _T) -> Tuple[_T, _T]:
    return _reparam_op_impl(mu, logvar, seed, offset)


@torch.library.custom_op("fastvae::reparam_dlogvar", mutates_args=())
def _reparam_dlogvar_op(dz: _T, logvar: _T, stream: _T) -> _T:
    seed, offset = stream.tolist()
    return _reparam_dlogvar_impl(dz, logvar, seed, offset)


@torch.library.custom_op("fastvae::normal_like", mutates_args=())
def _normal_like_op(like: _T, stream: _T) -> _T:
    """The noise the reparam kernels draw, as a tensor shaped and typed like ``like``."""
    seed, offset = stream.tolist()
    dtype = np.float64 if like.dtype == torch.float64 else np.float32
    eps = _random.normal(tuple(like.shape), seed % (1 << 64), offset, dtype=dtype)
    return torch.from_numpy(eps).to(like.device)


def _state_tensors(seed, offset):
    """Python ints -> int64 tensors for the custom ops (tensors pass through)."""
    if not isinstance(seed, _T):
        seed = torch.tensor(seed - (1 << 64) if seed >= 1 << 63 else seed, dtype=torch.int64)
    if not isinstance(offset, _T):
        offset = torch.tensor(offset, dtype=torch.int64)
    return seed, offset


def _reparam_forward(mu, logvar, seed, offset):
    """-> (z, stream): the custom op's outputs (the functorch-ready Function's forward)."""
    seed, offset = _state_tensors(seed, offset)
    if _direct(mu, logvar):
        return _reparam_op_impl(mu, logvar, seed, offset)
    return _reparam_op(mu, logvar, seed, offset)


def _reparam_op_impl(mu, logvar, seed, offset):
    z = _reparam_impl(mu, logvar, seed.item(), offset.item())
    return z, torch.stack([seed.reshape(()), offset.reshape(())]).to("cpu", torch.int64)


def _reparam_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(inputs[1], output[1])     # logvar, stream


def _reparam_backward(ctx, dz, _dstream):
    logvar, stream = ctx.saved_tensors          # raises if logvar was modified in place since
    dmu = dz if ctx.needs_input_grad[0] else None
    if not ctx.needs_input_grad[1]:
        return dmu, None, None, None
    if torch.is_grad_enabled():                 # create_graph: differentiable torch ops
        eps = _normal_like_op(logvar.detach(), stream)
        return dmu, dz * eps * torch.exp(0.5 * logvar) * 0.5, None, None
    if _direct(dz, logvar):
        seed, offset = stream.tolist()
        return dmu, _reparam_dlogvar_impl(dz, logvar, seed, offset), None, None
    return dmu, _reparam_dlogvar_op(dz, logvar, stream), None, None


_register(_reparam_op, lambda mu, logvar, seed, offset: (
    torch.empty_like(mu), torch.empty((2,), dtype=torch.int64)), _reparam_setup, _reparam_backward)
_register(_reparam_dlogvar_op, lambda dz, logvar, stream: torch.empty_like(dz))
_register(_normal_like_op, lambda like, stream: torch.empty_like(like))
_REPARAM = _function("_Reparam", _reparam_forward, _reparam_setup, _reparam_backward)


class _ReparamEager(torch.autograd.Function):
    """The eager CPU path with the fewest Python steps (issue 13's overhead target): plain
    tensors of one dtype, Python-int seed and offset, all checked by ``_fast_reparam_args``."""

    @staticmethod
    def forward(ctx, mu, logvar, seed, offset):
        ctx.stream = (seed, offset)
        ctx.save_for_backward(logvar)
        return _reparam_kernel(mu, logvar, seed, offset)

    @staticmethod
    def backward(ctx, dz):
        (logvar,) = ctx.saved_tensors            # raises if logvar was modified in place since
        if not ctx.needs_input_grad[1]:
            return dz, None, None, None
        seed, offset = ctx.stream
        if torch.is_grad_enabled():              # create_graph: differentiable torch ops
            stream = torch.stack(_state_tensors(seed, offset))
            eps = _normal_like_op(logvar.detach(), stream)
            return dz, dz * eps * torch.exp(0.5 * logvar) * 0.5, None, None
        dmu, dlogvar = _reparam_dlogvar_kernel(dz, logvar, seed, offset)
        return dmu, dlogvar, None, None


# _ReparamEager's C-level apply: Function.apply only adds functorch's unwrapping of dead
# wrappers (~3 us a call), and the fast path takes plain, unwrapped tensors only.
_reparam_eager_apply = super(torch.autograd.Function, _ReparamEager).apply


def _fast_reparam_args(mu, logvar, seed, offset):
    """True when the eager CPU path can take these arguments as they are (and they are valid);
    False sends them to the general path, which checks and reports everything."""
    if not (type(mu) in _PLAIN and type(logvar) in _PLAIN and type(seed) is int
            and type(offset) is int and mu.dtype == logvar.dtype and mu.dtype in _NP
            and mu.is_cpu and logvar.is_cpu and mu.ndim == 2 and logvar.ndim == 2):
        return False
    if torch.compiler.is_compiling() or _is_wrapped(mu) or _is_wrapped(logvar) \
            or _forward_ad._current_level >= 0:
        return False
    n, l = mu.shape
    return (n, l) == tuple(logvar.shape) and n * l > 0 and 0 <= seed < 1 << 64 \
        and 0 <= offset and offset + n * l < INDEX_LIMIT


def reparameterize(mu, logvar, seed, offset=0):
    """``z = mu + exp(logvar / 2) * eps`` with ``eps = fastvae.random.normal((N, L), seed,
    offset)`` generated in the kernel (and regenerated in the backward, never stored).

    mu, logvar (N, L) tensors -> z (N, L) in their promoted dtype, differentiable in mu and
    logvar. seed in [0, 2^64), offset >= 0: Python ints or 0-d integer tensors. Two calls with the
    same (seed, offset) draw the same noise: advance offset by ``mu.numel()`` per call (or use
    ``Reparameterize``, which does it for you). Under torch.compile pass tensors (a changing
    Python int offset is a new constant each step); there 0-d tensors are not range-checked.
    Under torch.func.vmap every vmapped call uses the same (seed, offset), hence the same noise.
    """
    if _fast_reparam_args(mu, logvar, seed, offset):
        if torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad):
            return _reparam_eager_apply(mu, logvar, seed, offset)
        return _reparam_kernel(mu, logvar, seed, offset)
    _tensor("mu", mu, 2)
    _tensor("logvar", logvar, 2)
    _refuse_forward_mode(mu, logvar)
    if tuple(mu.shape) != tuple(logvar.shape):
        raise ValueError(f"mu and logvar must have the same shape (N, L), got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")
    if mu.numel() == 0:
        raise ValueError(f"mu must not be empty, got shape {tuple(mu.shape)}")
    keep = torch.compiler.is_compiling()
    seed = _integer("seed", seed, (1 << 64) - 1, keep_tensor=keep)
    offset = _integer("offset", offset, INDEX_LIMIT - 1, keep_tensor=keep)
    compute, out = (mu.dtype, mu.dtype) if mu.dtype == logvar.dtype and mu.dtype in (
        torch.float32, torch.float64) else _dtypes(mu, logvar)
    if compute != mu.dtype or compute != logvar.dtype:
        mu, logvar = _cast(compute, mu, logvar)
    if keep:
        z = _reparam_op(mu, logvar, *_state_tensors(seed, offset))[0]
    elif torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad):
        z = _apply(_REPARAM, mu, logvar, seed, offset)[0]
    else:
        z = _reparam_forward(mu, logvar, seed, offset)[0]
    return z if z.dtype == out else z.to(out)


class Reparameterize(torch.nn.Module):
    """A stateful sampler: ``z = mu + exp(logvar / 2) * eps`` with fresh Philox noise per call.

    ``seed`` (an int in [0, 2^63); None: drawn with ``torch.randint`` from torch's default
    generator, so ``torch.manual_seed`` makes it reproducible) and ``offset`` (the stream position)
    are int64 buffers: they are in ``state_dict`` and a resumed run continues the stream. Each call
    in training mode uses the noise at ``offset`` and then advances ``offset`` by ``mu.numel()``
    (in place, so torch.compile does not recompile). In eval mode it returns ``mu`` (the mean of
    q(z|x)) and leaves offset alone, unless ``sample_in_eval=True``, which keeps sampling (and
    advancing) as in training.
    """

    def __init__(self, seed=None, offset=0, sample_in_eval=False):
        super().__init__()
        if seed is None:
            seed = torch.randint(0, (1 << 63) - 1, (), dtype=torch.int64)
        seed = _integer("seed", seed, (1 << 63) - 1)
        offset = _integer("offset", offset, INDEX_LIMIT - 1)
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.int64))
        self.sample_in_eval = bool(sample_in_eval)

    def forward(self, mu, logvar):
        if not (self.training or self.sample_in_eval):
            return mu
        if torch.compiler.is_compiling():
            z = reparameterize(mu, logvar, self.seed, self.offset)
        else:
            z = reparameterize(mu, logvar, int(self.seed), int(self.offset))
        with torch.no_grad():
            self.offset.add_(mu.numel())
        return z

    def extra_repr(self):
        return f"seed={int(self.seed)}, offset={int(self.offset)}, " \
               f"sample_in_eval={self.sample_in_eval}"


# ---------------------------------------------------------------------------------------------
# losses: shared pieces
# ---------------------------------------------------------------------------------------------
def _empty(like):
    return like.new_empty((0,))


def _reduce(rows, reduction):
    """(N,) per-row losses -> the reduction, summed in float64."""
    if reduction == "none":
        return rows
    total = rows.sum(dtype=torch.float64)
    return (total / rows.shape[0] if reduction == "mean" else total).to(rows.dtype)


# ---------------------------------------------------------------------------------------------
# ELBO kernels as torch functions: x, dec_out (N, D), mu, logvar (N, L), dec_logvar (D,) or None
# ---------------------------------------------------------------------------------------------
def _elbo_call(fn, x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
    _follow_torch_threads()          # Bernoulli x outside [0, 1]: the kernel's ValueError
    return fn(_np(x), _np(dec_out), _np(mu), _np(logvar), likelihood=likelihood,
              dec_logvar=_np(dec_logvar), beta=beta)


def _elbo_rows_impl(x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
    """-> -ELBO_n (N,)."""
    elbo, _ = _elbo_call(ops.elbo_forward, x, dec_out, mu, logvar, dec_logvar, likelihood, beta)
    return -_back(elbo, mu)


def _elbo_grads_out(grads, like):
    ddec_out, dmu, dlogvar, *ddec_logvar = [_back(g, like) for g in grads]
    return ddec_out, dmu, dlogvar, ddec_logvar[0] if ddec_logvar else _empty(dmu)


def _elbo_rows_backward_impl(g, x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
    """g (N,) -> gradients of sum_n g_n (-ELBO_n): (ddec_out, dmu, dlogvar, ddec_logvar)."""
    _, cache = _elbo_call(ops.elbo_forward, x, dec_out, mu, logvar, dec_logvar, likelihood, beta)
    grads = ops.elbo_backward(_np((-g.detach()).contiguous()), cache)
    return _elbo_grads_out(grads, mu)


def _elbo_fused_impl(x, dec_out, mu, logvar, dec_logvar, likelihood, beta, sum_rows):
    """-> (loss 0-d, ddec_out, dmu, dlogvar, ddec_logvar ((0,) for Bernoulli)) of the mean (or
    with sum_rows, the sum) of -ELBO_n, in one fused pass."""
    loss, grads = _elbo_call(ops.elbo_loss_and_grads, x, dec_out, mu, logvar, dec_logvar,
                             likelihood, beta)
    n = x.shape[0]
    if sum_rows:
        loss = loss * n
        for a in grads:
            a *= n
    grads = _elbo_grads_out(grads, mu)
    return (torch.tensor(loss, dtype=mu.dtype, device=mu.device), *grads)


_OptT = Optional[_T]
_T4 = Tuple[_T, _T, _T, _T]


@torch.library.custom_op("fastvae::elbo_rows", mutates_args=())
def _elbo_rows_op(x: _T, dec_out: _T, mu: _T, logvar: _T, dec_logvar: _OptT, likelihood: str,
                  beta: float) -> _T:
    return _elbo_rows_impl(x, dec_out, mu, logvar, dec_logvar, likelihood, beta)


@torch.library.custom_op("fastvae::elbo_rows_backward", mutates_args=())
def _elbo_rows_backward_op(g: _T, x: _T, dec_out: _T, mu: _T, logvar: _T, dec_logvar: _OptT,
                           likelihood: str, beta: float) -> _T4:
    return _elbo_rows_backward_impl(g, x, dec_out, mu, logvar, dec_logvar, likelihood, beta)


@torch.library.custom_op("fastvae::elbo_fused", mutates_args=())
def _elbo_fused_op(x: _T, dec_out: _T, mu: _T, logvar: _T, dec_logvar: _OptT, likelihood: str,
                   beta: float, sum_rows: bool) -> Tuple[_T, _T, _T, _T, _T]:
    return _elbo_fused_impl(x, dec_out, mu, logvar, dec_logvar, likelihood, beta, sum_rows)


def _elbo_grads_fake(x, dec_out, mu, logvar, dec_logvar):
    ddec_logvar = _empty(mu) if dec_logvar is None else torch.empty_like(dec_logvar)
    return (torch.empty_like(dec_out), torch.empty_like(mu), torch.empty_like(logvar),
            ddec_logvar)


def _elbo_torch_grads(w, x, dec_out, mu, logvar, dec_logvar, likelihood, beta):
    """Gradients of sum_n w_n (-ELBO_n) in differentiable torch ops (the double-backward path):
    w (N, 1) or 0-d -> (dx, ddec_out (N, D), dmu, dlogvar (N, L), ddec_logvar (D,) or None)."""
    dmu = w * beta * mu
    dlogvar = w * beta * 0.5 * (torch.exp(logvar) - 1)
    if likelihood == "bernoulli":
        return -w * dec_out, w * (torch.sigmoid(dec_out) - x), dmu, dlogvar, None
    inv_var = torch.exp(-dec_logvar)
    r = (x - dec_out) * inv_var
    ddec_logvar = (w * 0.5 * (1 - (x - dec_out) * r)).sum(0)
    return w * r, -w * r, dmu, dlogvar, ddec_logvar


def _elbo_setup(ctx, inputs, output):
    # inputs (x, dec_out, mu, logvar, dec_logvar, likelihood, beta[, sum_rows]): the fused op
    # has sum_rows, and its outputs after the loss are the gradients the backward scales
    x, dec_out, mu, logvar, dec_logvar, ctx.likelihood, ctx.beta = inputs[:7]
    ctx.fused = len(inputs) == 8
    ctx.sum_rows = ctx.fused and inputs[7]
    grads = list(output[1:]) if ctx.fused else []
    if grads:
        ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(x, dec_out, mu, logvar, dec_logvar, *grads)


def _elbo_backward(ctx, g, *_unused):
    x, dec_out, mu, logvar, dec_logvar, *grads = ctx.saved_tensors
    needs = ctx.needs_input_grad
    args = (x, dec_out, mu, logvar, dec_logvar, ctx.likelihood, ctx.beta)
    n = x.shape[0]
    if not ctx.fused:
        w = g[:, None]
    else:
        w = g if ctx.sum_rows else g / n
    if torch.is_grad_enabled():                 # create_graph: differentiable torch ops
        out = _elbo_torch_grads(w, *args)
    else:
        if ctx.fused:
            grads = [gr * g for gr in grads]
        elif _direct(g, x, dec_out, mu, logvar, dec_logvar):
            grads = _elbo_rows_backward_impl(g, *args)
        else:
            grads = _elbo_rows_backward_op(g, *args)
        dx = None
        if needs[0]:
            dx = -w * dec_out if ctx.likelihood == "bernoulli" else -grads[0]
        out = (dx, *grads[:3], grads[3] if dec_logvar is not None else None)
    out = [o if need else None for o, need in zip(out, needs[:5])]
    return (*out, None, None) + ((None,) if ctx.fused else ())


def _elbo_fused_forward(*args):
    fn = _elbo_fused_impl if _direct(*args[:5]) else _elbo_fused_op
    return fn(*args)


def _elbo_rows_forward(*args):
    fn = _elbo_rows_impl if _direct(*args[:5]) else _elbo_rows_op
    return fn(*args)


_register(_elbo_rows_op, lambda x, dec_out, mu, *rest: mu.new_empty((x.shape[0],)),
          _elbo_setup, _elbo_backward)
_register(_elbo_rows_backward_op, lambda g, *args: _elbo_grads_fake(*args[:5]))
_register(_elbo_fused_op, lambda *args: (args[2].new_empty(()), *_elbo_grads_fake(*args[:5])),
          _elbo_setup, _elbo_backward)
_ELBO_FUSED = _function("_ELBOFused", _elbo_fused_forward, _elbo_setup, _elbo_backward)
_ELBO_ROWS = _function("_ELBORows", _elbo_rows_forward, _elbo_setup, _elbo_backward)


def _run_loss(fused, rows, fused_fn, rows_fn, args, reduction, tensors):
    """Pick the fused op (mean, sum) or the per-row op (none; and everything without autograd)
    and the eager/func Function or the custom op (torch.compile)."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in tensors)
    compiling = torch.compiler.is_compiling()
    if needs_grad and reduction != "none":
        sum_rows = reduction == "sum"
        if compiling:
            return fused(*args, sum_rows)[0]
        return _apply(fused_fn, *args, sum_rows)[0]
    if needs_grad:
        return rows(*args) if compiling else _apply(rows_fn, *args)
    with torch.no_grad():
        return _reduce(rows(*args) if compiling else rows_fn[0].forward(*args), reduction)


def elbo_loss(x, dec_out, mu, logvar, likelihood="bernoulli", dec_logvar=None, beta=1.0,
              reduction="mean"):
    """The negative ELBO, ``-ELBO_n = -log p(x_n | dec_out_n) + beta KL(q(z | x_n) || N(0, I))``,
    reduced over the batch: "mean" (the default; note pytorch/examples sums), "sum", or "none"
    (the (N,) per-row values).

    x (N, D) the data; dec_out (N, D) the decoder's output: *logits* for "bernoulli" (before any
    sigmoid; probabilities are silently the wrong model), means for "gaussian"; note the order,
    data first, unlike ``F.binary_cross_entropy(recon, x)``. For "bernoulli" x must lie in
    [0, 1] (the kernel raises ValueError otherwise, which also catches swapped arguments).
    mu, logvar (N, L); dec_logvar (D,) for "gaussian" only (the decoder's learnable
    per-dimension log-variance); beta >= 0, a number or 0-d tensor. Gradients flow to dec_out,
    mu, logvar, dec_logvar and x. The result has the inputs' promoted dtype (bfloat16 and float16
    compute in float32).
    """
    _choice("likelihood", likelihood, LIKELIHOODS)
    _choice("reduction", reduction, REDUCTIONS)
    beta = _real("beta", beta)
    for name, t, ndim in (("x", x, 2), ("dec_out", dec_out, 2), ("mu", mu, 2),
                          ("logvar", logvar, 2)):
        _tensor(name, t, ndim)
    if dec_logvar is not None:
        _tensor("dec_logvar", dec_logvar, 1)
    _refuse_forward_mode(x, dec_out, mu, logvar, dec_logvar)
    compute, out = _dtypes(x, dec_out, mu, logvar, dec_logvar)
    tensors = _cast(compute, x, dec_out, mu, logvar, dec_logvar)
    loss = _run_loss(_elbo_fused_op, _elbo_rows_op, _ELBO_FUSED, _ELBO_ROWS,
                     (*tensors, likelihood, beta), reduction, tensors)
    return loss if loss.dtype == out else loss.to(out)


class ELBOLoss(torch.nn.Module):
    """``elbo_loss`` as a module: ``ELBOLoss(likelihood, beta, reduction)(x, dec_out, mu, logvar,
    dec_logvar=None)``. The decoder's ``dec_logvar`` stays a parameter of the model (pass it in),
    so this module holds no state."""

    def __init__(self, likelihood="bernoulli", beta=1.0, reduction="mean"):
        super().__init__()
        _choice("likelihood", likelihood, LIKELIHOODS)
        _choice("reduction", reduction, REDUCTIONS)
        self.likelihood, self.beta, self.reduction = likelihood, beta, reduction

    def forward(self, x, dec_out, mu, logvar, dec_logvar=None):
        return elbo_loss(x, dec_out, mu, logvar, likelihood=self.likelihood,
                         dec_logvar=dec_logvar, beta=self.beta, reduction=self.reduction)

    def extra_repr(self):
        return f"likelihood={self.likelihood!r}, beta={self.beta}, reduction={self.reduction!r}"


# ---------------------------------------------------------------------------------------------
# IWAE: x (N, D), dec_out (N, K, D), mu, logvar (N, L), eps (N, K, L), dec_logvar (D,) or None
# ---------------------------------------------------------------------------------------------
def _log_weights(x, dec_out, mu, logvar, eps, dec_logvar, likelihood):
    _follow_torch_threads()          # Bernoulli x outside [0, 1]: the kernel's ValueError
    return ops.log_weight_forward(_np(x), _np(dec_out), _np(mu), _np(logvar), _np(eps),
                                  likelihood=likelihood, dec_logvar=_np(dec_logvar))


def _iwae_rows_impl(x, dec_out, mu, logvar, eps, dec_logvar, likelihood):
    """-> -(logsumexp_k log w_nk - log K), (N,)."""
    logw, _ = _log_weights(x, dec_out, mu, logvar, eps, dec_logvar, likelihood)
    est, _ = ops.iwae_forward(logw)
    return -_back(est, mu)


def _iwae_grads(dest, lw_cache, iw_cache, like):
    """dest (N,) the upstream of the estimate -> (dlogw (N, K), ddec_out (N, K, D), dmu,
    dlogvar (N, L), ddec_logvar (D,) or (0,))."""
    dlogw = ops.iwae_backward(dest, iw_cache)
    ddec_out, dmu, dlogvar, *ddec_logvar = ops.log_weight_backward(dlogw, lw_cache)
    grads = [_back(a, like) for a in (dlogw, ddec_out, dmu, dlogvar, *ddec_logvar)]
    return tuple(grads) + (() if ddec_logvar else (_empty(grads[2]),))


def _iwae_rows_backward_impl(g, x, dec_out, mu, logvar, eps, dec_logvar, likelihood):
    logw, lw_cache = _log_weights(x, dec_out, mu, logvar, eps, dec_logvar, likelihood)
    _, iw_cache = ops.iwae_forward(logw)
    return _iwae_grads(_np((-g.detach()).contiguous()), lw_cache, iw_cache, mu)


def _iwae_fused_impl(x, dec_out, mu, logvar, eps, dec_logvar, likelihood, sum_rows):
    """-> (loss 0-d, dlogw, ddec_out, dmu, dlogvar, ddec_logvar) of the mean (sum) of the rows."""
    logw, lw_cache = _log_weights(x, dec_out, mu, logvar, eps, dec_logvar, likelihood)
    est, iw_cache = ops.iwae_forward(logw)
    n = est.shape[0]
    weight = 1.0 if sum_rows else 1.0 / n
    loss = -float(_back(est, mu).sum(dtype=torch.float64)) * weight
    dest = _np(torch.full((n,), -weight, dtype=mu.dtype, device=mu.device))
    grads = _iwae_grads(dest, lw_cache, iw_cache, mu)
    return (torch.tensor(loss, dtype=mu.dtype, device=mu.device), *grads)


_T5 = Tuple[_T, _T, _T, _T, _T]


@torch.library.custom_op("fastvae::iwae_rows", mutates_args=())
def _iwae_rows_op(x: _T, dec_out: _T, mu: _T, logvar: _T, eps: _T, dec_logvar: _OptT,
                  likelihood: str) -> _T:
    return _iwae_rows_impl(x, dec_out, mu, logvar, eps, dec_logvar, likelihood)


@torch.library.custom_op("fastvae::iwae_rows_backward", mutates_args=())
def _iwae_rows_backward_op(g: _T, x: _T, dec_out: _T, mu: _T, logvar: _T, eps: _T,
                           dec_logvar: _OptT, likelihood: str) -> _T5:
    return _iwae_rows_backward_impl(g, x, dec_out, mu, logvar, eps, dec_logvar, likelihood)


@torch.library.custom_op("fastvae::iwae_fused", mutates_args=())
def _iwae_fused_op(x: _T, dec_out: _T, mu: _T, logvar: _T, eps: _T, dec_logvar: _OptT,
                   likelihood: str, sum_rows: bool) -> Tuple[_T, _T, _T, _T, _T, _T]:
    return _iwae_fused_impl(x, dec_out, mu, logvar, eps, dec_logvar, likelihood, sum_rows)


def _iwae_grads_fake(x, dec_out, mu, logvar, eps, dec_logvar):
    ddec_logvar = _empty(mu) if dec_logvar is None else torch.empty_like(dec_logvar)
    return (mu.new_empty(dec_out.shape[:2]), torch.empty_like(dec_out), torch.empty_like(mu),
            torch.empty_like(logvar), ddec_logvar)


def _iwae_torch_grads(w, x, dec_out, mu, logvar, eps, dec_logvar, likelihood):
    """Gradients of sum_n w_n loss_n in differentiable torch ops (the double-backward path; it
    materializes (N, K, D)): w (N,) -> (dx, ddec_out, dmu, dlogvar, eps', ddec_logvar | None)."""
    sigma = torch.exp(0.5 * logvar)[:, None, :]                      # (N, 1, L)
    z = mu[:, None, :] + sigma * eps                                  # (N, K, L)
    xk = x[:, None, :]                                                # (N, 1, D)
    if likelihood == "bernoulli":
        ll = (xk * dec_out - torch.logaddexp(dec_out, torch.zeros_like(dec_out))).sum(-1)
        dll = xk - torch.sigmoid(dec_out)                             # dll/ddec_out (N, K, D)
    else:
        inv_var = torch.exp(-dec_logvar)
        ll = -0.5 * (LOG_2PI + dec_logvar + (xk - dec_out) ** 2 * inv_var).sum(-1)
        dll = (xk - dec_out) * inv_var
    logw = ll - 0.5 * (z * z).sum(-1) + 0.5 * (logvar[:, None, :] + eps * eps).sum(-1)
    dlogw = -w[:, None] * torch.softmax(logw, dim=1)                  # (N, K)
    dl = dlogw[..., None]
    ddec_out = dl * dll
    dx = (dl * dec_out).sum(1) if likelihood == "bernoulli" else -ddec_out.sum(1)
    dmu = -(dl * z).sum(1)
    dlogvar = (dl * (0.5 - 0.5 * z * eps * sigma)).sum(1)
    deps = dl * (eps - z * sigma)
    ddec_logvar = None
    if likelihood == "gaussian":
        ddec_logvar = (dl * -0.5 * (1 - (xk - dec_out) * dll)).sum((0, 1))
    return dx, ddec_out, dmu, dlogvar, deps, ddec_logvar


def _iwae_setup(ctx, inputs, output):
    # inputs (x, dec_out, mu, logvar, eps, dec_logvar, likelihood[, sum_rows]), as _elbo_setup
    x, dec_out, mu, logvar, eps, dec_logvar, ctx.likelihood = inputs[:7]
    ctx.fused = len(inputs) == 8
    ctx.sum_rows = ctx.fused and inputs[7]
    grads = list(output[1:]) if ctx.fused else []
    if grads:
        ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(x, dec_out, mu, logvar, eps, dec_logvar, *grads)


def _iwae_backward(ctx, g, *_unused):
    x, dec_out, mu, logvar, eps, dec_logvar, *grads = ctx.saved_tensors
    inputs = (x, dec_out, mu, logvar, eps, dec_logvar)
    n = x.shape[0]
    if torch.is_grad_enabled():                 # create_graph: differentiable torch ops
        w = g if not ctx.fused else (g if ctx.sum_rows else g / n).expand(n)
        out = _iwae_torch_grads(w, *inputs, ctx.likelihood)
    else:
        if ctx.fused:
            grads = [gr * g for gr in grads]
        elif _direct(g, *inputs):
            grads = _iwae_rows_backward_impl(g, *inputs, ctx.likelihood)
        else:
            grads = _iwae_rows_backward_op(g, *inputs, ctx.likelihood)
        _, ddec_out, dmu, dlogvar, ddec_logvar = grads
        dx, deps = _iwae_x_eps_grads(ctx, grads, *inputs)
        out = (dx, ddec_out, dmu, dlogvar, deps, ddec_logvar)
    needs = ctx.needs_input_grad
    out = [o if need else None for o, need in zip(out, needs[:6])]
    if dec_logvar is None:
        out[5] = None
    return (*out, None) + ((None,) if ctx.fused else ())


def _iwae_x_eps_grads(ctx, grads, x, dec_out, mu, logvar, eps, dec_logvar):
    """dx (N, D) and deps (N, K, L) from dlogw (N, K): dlogw/dx = dec_out (Bernoulli) or
    -(x - m) / var (Gaussian); dlogw/deps = eps - z sigma."""
    dlogw, ddec_out = grads[0], grads[1]
    dx = deps = None
    if ctx.needs_input_grad[0]:
        dx = (torch.einsum("nk,nkd->nd", dlogw, dec_out) if ctx.likelihood == "bernoulli"
              else -ddec_out.sum(1))
    if ctx.needs_input_grad[4]:
        sigma = torch.exp(0.5 * logvar)[:, None, :]
        deps = dlogw[..., None] * (eps - (mu[:, None, :] + sigma * eps) * sigma)
    return dx, deps


def _iwae_fused_forward(*args):
    fn = _iwae_fused_impl if _direct(*args[:6]) else _iwae_fused_op
    return fn(*args)


def _iwae_rows_forward(*args):
    fn = _iwae_rows_impl if _direct(*args[:6]) else _iwae_rows_op
    return fn(*args)


_register(_iwae_rows_op, lambda x, dec_out, mu, *rest: mu.new_empty((x.shape[0],)),
          _iwae_setup, _iwae_backward)
_register(_iwae_rows_backward_op, lambda g, *args: _iwae_grads_fake(*args[:6]))
_register(_iwae_fused_op, lambda *args: (args[2].new_empty(()), *_iwae_grads_fake(*args[:6])),
          _iwae_setup, _iwae_backward)
_IWAE_FUSED = _function("_IWAEFused", _iwae_fused_forward, _iwae_setup, _iwae_backward)
_IWAE_ROWS = _function("_IWAERows", _iwae_rows_forward, _iwae_setup, _iwae_backward)


def iwae_loss(x, dec_out, mu, logvar, eps, likelihood="bernoulli", dec_logvar=None,
              reduction="mean"):
    """The importance-weighted loss ``loss_n = -(logsumexp_k log w_nk - log K)``, reduced over
    the batch ("mean", "sum" or "none": (N,)), fused with its backward (the softmax weights).

    ``log w_nk = log p(x_n | dec_out_nk) + log N(z_nk; 0, I) - log q(z_nk | x_n)`` with
    ``z_nk = mu_n + exp(logvar_n / 2) eps_nk``. x (N, D) the data (in [0, 1] for "bernoulli");
    dec_out (N, K, D) the decoder at z (logits for "bernoulli", means for "gaussian"); mu, logvar
    (N, L); eps (N, K, L) the noise that made z; dec_logvar (D,) for "gaussian". The gradients
    hold eps fixed (the path through the decoder's input z is autograd's, via dec_out); they
    reach dec_out, mu, logvar, dec_logvar, x and eps. The (N, K, D) log-likelihood terms are
    never materialized (except in a double backward).
    """
    _choice("likelihood", likelihood, LIKELIHOODS)
    _choice("reduction", reduction, REDUCTIONS)
    for name, t, ndim in (("x", x, 2), ("dec_out", dec_out, 3), ("mu", mu, 2),
                          ("logvar", logvar, 2), ("eps", eps, 3)):
        _tensor(name, t, ndim)
    if dec_logvar is not None:
        _tensor("dec_logvar", dec_logvar, 1)
    _refuse_forward_mode(x, dec_out, mu, logvar, eps, dec_logvar)
    compute, out = _dtypes(x, dec_out, mu, logvar, eps, dec_logvar)
    tensors = _cast(compute, x, dec_out, mu, logvar, eps, dec_logvar)
    loss = _run_loss(_iwae_fused_op, _iwae_rows_op, _IWAE_FUSED, _IWAE_ROWS,
                     (*tensors, likelihood), reduction, tensors)
    return loss if loss.dtype == out else loss.to(out)
