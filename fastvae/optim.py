"""Adam over a flat parameter buffer: one fused in-place kernel call per step."""
import math
import numbers

import numpy as np

from . import _device
from . import _validate as check


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction over ``params`` (P,), a flat buffer it
    updates in place (a model's ``params.flat``); the buffer's array type picks the device's
    kernels. State: m, v (P,) and step."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.params = params
        self.kernels = _device.kernels(_device.device_of(params))
        self.lr = check.real_scalar("lr", lr, low=0.0, low_inclusive=False)
        self.beta1 = check.real_scalar("beta1", beta1, low=0.0, high=1.0 - 1e-12)
        self.beta2 = check.real_scalar("beta2", beta2, low=0.0, high=1.0 - 1e-12)
        self.eps = check.real_scalar("eps", eps, low=0.0, low_inclusive=False)
        self.m = self.kernels.xp.zeros_like(params)   # (P,)
        self.v = self.kernels.xp.zeros_like(params)   # (P,)
        self.step = 0
        self._bounds = None   # upper bounds of (max |param|, max |m|, max v), see update

    def update(self, grad_flat, grad_abs_sum=None):
        """params -= Adam direction of grad_flat (P,), in place; advances step. -> True, or False
        when the gradient is not finite or the update could make a parameter or moment NaN/Inf
        (an lr too large for the dtype, g^2 beyond float32): then nothing is written, params, m,
        v and step stay as they are. grad_abs_sum: ``abs_sum(grad_flat)`` if already computed.

        The overflow guard costs one float64 sum |g| per step, computed by the gradient guard
        anyway (abs_sum 168 us against the 113 us of the all_finite it replaced, 652,824
        float32; the 784-400-20 batch-128 step takes 7-9 ms): running upper bounds of
        max |param|, max |m| and max v (``_next_bounds``, 3.5 us) prove the step finite. Only
        where they cannot does the exact read-only check run (``adam_stays_finite``, 0.6-0.9 ms,
        about as much as the update). In three runs of benchmarks/dev/adam_guard_cost.py the
        shipped guard was within the noise of no guard (+0.6%, +8.7%, -1.1%), an exact check on
        every step +25% to +47%, undoing a landed update (copies of param, m, v) +14% to +37%.
        Call ``params_changed`` after writing the parameters other than through this method."""
        adam = self.kernels.adam
        g = adam.abs_sum(grad_flat) if grad_abs_sum is None else grad_abs_sum
        if not math.isfinite(g):
            return False
        args = (self.params, grad_flat, self.m, self.v, self.step + 1, self.lr,
                self.beta1, self.beta2, self.eps)
        bounds = self._next_bounds(g)
        if bounds is None and not adam.adam_stays_finite(*args):
            return False
        adam.adam_update(*args)
        self.step += 1
        self._bounds = bounds      # None: measured again before the next step
        return True

    def params_changed(self):
        """Forget the bounds ``update`` keeps: the parameters or moments were written directly."""
        self._bounds = None

    def _next_bounds(self, g):
        """Upper bounds of (max |param|, max |m|, max v) after the next step, or None if they do
        not keep every value of the step below a quarter of the dtype's largest float.
        g = sum |grad| >= max |grad|. m' = b1 m + (1 - b1) g is a convex combination, so
        |m'| <= max(M, g); v' <= max(V, g^2); sqrt(v'/bc2) + eps >= eps, so
        |param'| <= P + lr |m'| / (bc1 eps). The factor 1 + 1e-5 covers float32 rounding."""
        if self._bounds is None:
            xp = self.kernels.xp
            self._bounds = tuple(float(xp.abs(a).max()) for a in (self.params, self.m, self.v))
        P, M, V = self._bounds
        slack = 1 + 1e-5
        inv_bc1 = 1.0 / (1.0 - self.beta1 ** (self.step + 1))
        inv_bc2 = 1.0 / (1.0 - self.beta2 ** (self.step + 1))
        M, V = max(M, g) * slack, max(V, g * g) * slack
        P = (P + self.lr * M * inv_bc1 / self.eps) * slack
        limit = 0.25 * float(np.finfo(self.params.dtype).max)
        if max(P, M * inv_bc1 * max(1.0, self.lr), V * inv_bc2) < limit:
            return P, M, V
        return None

    def move_to(self, params):
        """Follow the parameters to a new buffer, maybe on another device (after ``model.to``):
        m and v move to its device."""
        self.params = params
        self.kernels = _device.kernels(_device.device_of(params))
        self.m = self.kernels.xp.asarray(_device.to_host(self.m))
        self.v = self.kernels.xp.asarray(_device.to_host(self.v))
        self._bounds = None

    def settings(self):
        return dict(step=self.step, lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps)

    @classmethod
    def from_saved(cls, params, settings, m, v):
        """An Adam state from ``settings()`` and the flat moments m, v (host arrays). Every
        problem (a missing or mistyped setting, moments of another size, dtype, NaN/Inf, v < 0)
        is a ValueError, checked before anything is allocated."""
        keys = ("step", "lr", "beta1", "beta2", "eps")
        if not isinstance(settings, dict) or set(settings) != set(keys):
            raise ValueError(f"optimizer settings must be a dict with the keys {keys}, got "
                             f"{settings!r}")
        step = settings["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) \
                or step < 0:
            raise ValueError(f"optimizer step must be an integer >= 0, got {step!r}")
        size = params.size
        for name, a in (("m", m), ("v", v)):
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise ValueError(f"optimizer {name} must be an array, got {type(a).__name__}")
            if tuple(a.shape) != (size,):
                raise ValueError(f"optimizer state {name} has shape {tuple(a.shape)}, the "
                                 f"model's {size} parameters need ({size},)")
            if a.dtype.kind != "f":
                raise ValueError(f"optimizer state {name} must be a floating array, got "
                                 f"{a.dtype}")
            if not np.isfinite(_device.to_host(a)).all():
                raise ValueError(f"optimizer state {name} has NaN/Inf values")
        if (_device.to_host(v) < 0).any():
            raise ValueError("optimizer state v (the second moment) has negative values")
        try:
            opt = cls(params, settings["lr"], settings["beta1"], settings["beta2"],
                      settings["eps"])
        except TypeError as e:     # a setting of the wrong type, e.g. a string
            raise ValueError(f"optimizer setting: {e}") from None
        xp = opt.kernels.xp   # CuPy refuses a NumPy array assigned into a device array
        opt.m[...], opt.v[...] = xp.asarray(m, opt.m.dtype), xp.asarray(v, opt.v.dtype)
        opt.step = int(step)
        return opt
