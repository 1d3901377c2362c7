"""Named parameter arrays that live in one flat buffer.

Every parameter is a view into one contiguous 1-D buffer, so the optimizer updates the whole model
with one fused kernel call, a checkpoint is one array, and the gradients can live in a buffer of
the same layout. Assigning an array to a name copies it into its view (same shape required), so
``model.params["enc0.W"] = W`` changes the model and the buffer stays shared.
"""
from collections.abc import MutableMapping

import numpy as np

from ._device import array_module


class ParamStore(MutableMapping):
    """shapes: ordered {name: shape}; the names and shapes are fixed at construction."""

    def __init__(self, shapes, dtype=np.float32, xp=np):
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in shapes.items()}
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes.values()]
        self.flat = xp.zeros(sum(sizes), dtype=dtype)   # (P,)
        self._views, start = {}, 0
        for (name, shape), size in zip(self.shapes.items(), sizes):
            self._views[name] = self.flat[start:start + size].reshape(shape)
            start += size

    def __getitem__(self, name):
        return self._views[name]

    def __setitem__(self, name, value):
        if name not in self._views:
            raise KeyError(f"unknown parameter {name!r}; the parameters are {list(self._views)}")
        value = np.asarray(value) if not hasattr(value, "shape") else value
        if tuple(value.shape) != self.shapes[name]:
            raise ValueError(f"params[{name!r}] must have shape {self.shapes[name]}, got "
                             f"{tuple(value.shape)}")
        if value.dtype.kind != "f":
            raise TypeError(f"params[{name!r}] must be a floating array, got {value.dtype}")
        view = self._views[name]
        view[...] = value if type(value) is type(view) else array_module(view).asarray(value)

    def __delitem__(self, name):
        raise TypeError("parameters cannot be removed; the architecture fixes them")

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)

    def __repr__(self):
        inner = ", ".join(f"{n}: {s}" for n, s in self.shapes.items())
        return f"ParamStore({self.flat.size} {self.flat.dtype} values; {inner})"

    def zeros_like(self):
        """A store of the same layout, filled with zeros (gradients, optimizer moments)."""
        return ParamStore(self.shapes, self.flat.dtype, array_module(self.flat))

