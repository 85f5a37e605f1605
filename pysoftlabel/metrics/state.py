"""The shared behaviour of accumulators whose state is tensors that add up."""
import copy
import operator

import torch

from ..target import check_label_dtype, check_label_range

__all__ = ["SummedState", "count_argument", "check_labels", "check_batch", "rows_with_softmax"]


def rows_with_softmax(logits):
    """The rows of ``logits`` [N, C] that have a softmax: a finite log-sum-exp. -inf logits (masked classes)
    are fine; a NaN, a +inf or a row of -inf only is not."""
    return torch.logsumexp(logits, dim=1).isfinite()


def count_argument(name, value):
    """``value`` as an int >= 1 (a bin or class count), or a ValueError naming ``name``."""
    try:
        count = operator.index(value)  # int, numpy integer, 0-d integer tensor; not 2.5
    except TypeError:
        count = None
    if count is None or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if count < 1:
        raise ValueError(f"{name} must be >= 1, got {count}")
    return count


def check_labels(logits, labels, ignore_index=-100, read_values=None):
    """ValueErrors naming what is wrong with ``labels`` for ``logits`` [N, C]: not a tensor of shape [N], not
    integer class indices (any integer dtype), and, where the values are read, a label outside [0, C) that
    is not ``ignore_index``. ``read_values``: default (None) on CPU tensors only, since on CUDA reading them
    is a host synchronisation per batch. Returns the rows that are not ``ignore_index``, or None when the
    values were not read."""
    if not torch.is_tensor(labels) or labels.shape != (logits.shape[0],):
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must have shape [N] = [{logits.shape[0]}], got {shape}")
    check_label_dtype(labels)
    if read_values is None:
        read_values = logits.device.type == "cpu"
    return check_label_range(labels, logits.shape[1], ignore_index) if read_values else None


def check_batch(logits, labels=None, ignore_index=-100, num_classes=None, read_values=None):
    """ValueErrors naming what is wrong with a batch of ``logits`` [N, C] (of ``num_classes`` classes when
    given) and ``labels`` [N] (:func:`check_labels`); where the values are read (``read_values``, as there),
    also rows whose logits are not finite (NaN, +inf, or all -inf), as CalibrationStats reports them."""
    if not torch.is_tensor(logits) or logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {getattr(logits, 'shape', type(logits).__name__)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape [N, {num_classes}], got {tuple(logits.shape)}")
    if read_values is None:
        read_values = logits.device.type == "cpu"
    valid = None if labels is None else check_labels(logits, labels, ignore_index, read_values)
    if not read_values:
        return
    if valid is None:
        valid = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    if logits.shape[1]:
        nonfinite = valid & ~rows_with_softmax(logits.detach().double())
        if bool(nonfinite.any()):
            raise ValueError(f"logits: {int(nonfinite.sum())} row(s) have non-finite values (NaN, inf or all -inf)")


class SummedState:
    """Accumulators whose state (the tensor attributes named in ``_state``) is a sum over rows: merging is
    ``+``, ``all_reduce()`` sums over the ranks of a torch.distributed group, and the state dict holds
    copies of those tensors."""

    _state: tuple = ()

    @property
    def device(self):
        return getattr(self, self._state[0]).device

    def to(self, device):
        """Moves the state to ``device``, in place (as ``nn.Module.to``); returns self."""
        for name in self._state:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def _shapes(self):
        return ", ".join(f"{name} {tuple(getattr(self, name).shape)}" for name in self._state)

    def __add__(self, other):
        if type(other) is not type(self) or any(getattr(self, n).shape != getattr(other, n).shape for n in self._state):
            got = other._shapes() if type(other) is type(self) else type(other).__name__
            raise ValueError(f"can only add a {type(self).__name__} of the same configuration ({self._shapes()}), "
                             f"got {got}")
        out = copy.copy(self)
        for name in self._state:
            setattr(out, name, getattr(self, name) + getattr(other, name).to(getattr(self, name).device))
        return out

    def __radd__(self, other):
        if type(other) is int and other == 0:  # sum(accumulators) starts from 0
            out = copy.copy(self)
            for name in self._state:
                setattr(out, name, getattr(self, name).clone())
            return out
        return self.__add__(other)

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
        missing = [name for name in self._state if name not in state]
        if missing:
            raise ValueError(f"{type(self).__name__} state dict lacks {missing} (has {sorted(state)})")
        for name in self._state:
            current, value = getattr(self, name), state[name]
            if not torch.is_tensor(value):
                raise ValueError(f"state {name!r} must be a tensor, got {type(value).__name__}")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"state {name!r} has shape {tuple(value.shape)}, this {type(self).__name__} "
                                 f"{tuple(current.shape)}")
            current.copy_(value)
