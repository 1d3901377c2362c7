"""Adam over a model's flat parameter buffer: one fused in-place kernel call per step."""
from . import _validate as check
from ._backend import to_host as _to_host


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction. State: m, v (flat, like params) and step."""

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        self.model = model
        self.lr = check.real_scalar("lr", lr, low=0.0, low_inclusive=False)
        self.beta1 = check.real_scalar("beta1", beta1, low=0.0, high=1.0 - 1e-12)
        self.beta2 = check.real_scalar("beta2", beta2, low=0.0, high=1.0 - 1e-12)
        self.eps = check.real_scalar("eps", eps, low=0.0, low_inclusive=False)
        self.m = model.k.xp.zeros_like(model.params.flat)   # (P,)
        self.v = model.k.xp.zeros_like(model.params.flat)   # (P,)
        self.step = 0

    def update(self, grad_flat):
        """params -= Adam direction of grad_flat (P,), in place; advances step."""
        self.step += 1
        self.model.k.adam.adam_update(self.model.params.flat, grad_flat, self.m, self.v,
                                      self.step, self.lr, self.beta1, self.beta2, self.eps)

    def move_to(self, model):
        """Re-home m and v on the model's device (after ``model.to``)."""
        self.model = model
        self.m = model.k.xp.asarray(_to_host(self.m))
        self.v = model.k.xp.asarray(_to_host(self.v))

    def settings(self):
        return dict(step=self.step, lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps)

    @classmethod
    def from_saved(cls, model, settings, m, v):
        opt = cls(model, settings["lr"], settings["beta1"], settings["beta2"], settings["eps"])
        if m.shape != opt.m.shape or v.shape != opt.v.shape:
            raise ValueError(f"optimizer state has {m.size} values, the model {opt.m.size}")
        opt.m[...], opt.v[...] = m, v
        opt.step = int(settings["step"])
        return opt
