"""The shared behaviour of accumulators whose state is tensors that add up."""
import copy

import torch

__all__ = ["SummedState"]


class SummedState:
    """Accumulators whose state (the tensor attributes named in ``_state``) is a sum over rows: merging is
    ``+``, ``all_reduce()`` sums over the ranks of a torch.distributed group, and the state dict holds
    copies of those tensors."""

    _state: tuple = ()

    def __add__(self, other):
        if type(other) is not type(self) or any(getattr(self, n).shape != getattr(other, n).shape for n in self._state):
            raise ValueError(f"can only add a {type(self).__name__} of the same configuration")
        out = copy.copy(self)
        for name in self._state:
            setattr(out, name, getattr(self, name) + getattr(other, name).to(getattr(self, name).device))
        return out

    def reset(self):
        for name in self._state:
            getattr(self, name).zero_()
        return self

    def all_reduce(self, group=None):
        """Sums the state over the ranks of ``group`` (no-op without an initialised process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for name in self._state:
                torch.distributed.all_reduce(getattr(self, name), group=group)
        return self

    def state_dict(self):
        return {name: getattr(self, name).clone() for name in self._state}

    def load_state_dict(self, state):
        for name in self._state:
            current, value = getattr(self, name), state[name]
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"state {name!r} has shape {tuple(value.shape)}, this {type(self).__name__} "
                                 f"{tuple(current.shape)}")
            current.copy_(value)
