"""Context-only confidence, the evaluation of Adaptive Label Smoothing (Krothapalli & Abbott 2020,
arXiv:2009.06432): the mean max-softmax on crops that contain no object. A well calibrated model is
unsure on them (ideally 1 / C)."""
import torch
from torch import Tensor

from .state import SummedState, check_batch

__all__ = ["ContextConfidence"]


class ContextConfidence(SummedState):
    """Accumulates max-softmax confidences of context-only (background) crops; mergeable."""

    _state = ("sums",)

    def __init__(self, device=None):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # confidence sum, crops

    def update(self, logits: Tensor):
        """Adds the logits [N, C] of N context-only crops. Returns self."""
        check_batch(logits)
        conf = torch.softmax(logits.detach().double(), dim=1).amax(dim=1)
        self.sums += torch.stack([conf.sum(), conf.new_tensor(float(conf.numel()))])
        return self

    @property
    def count(self) -> int:
        """Crops added."""
        return int(self.sums[1])

    @property
    def mean(self) -> float:
        total, n = self.sums.tolist()
        return total / n if n else float("nan")
