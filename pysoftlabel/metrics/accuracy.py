"""Top-k accuracy as a mergeable accumulator."""
import torch
from torch import Tensor

from .state import SummedState, check_batch

__all__ = ["AccuracyStats"]


class AccuracyStats(SummedState):
    """Counts of rows whose label is among the k highest logits, for each k in ``ks``.

    Args:
        ks (tuple of int): the k of each top-k accuracy. Default: (1, 5).
        device (torch.device or str, optional): where the state lives. Default: CPU.
    """

    _state = ("correct", "total")

    def __init__(self, ks=(1, 5), device=None):
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(int(k) for k in ks)
        self.correct = torch.zeros(len(self.ks), dtype=torch.float64, device=device)
        self.total = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100):
        """Adds a batch of logits [N, C] and labels [N]; k larger than C counts as C. Returns self."""
        check_batch(logits, labels, ignore_index)
        valid = labels != ignore_index
        k_max = min(max(self.ks), logits.shape[1])
        if logits.shape[0]:
            top = logits.detach().topk(k_max, dim=1).indices
        else:
            top = logits.new_zeros((0, k_max), dtype=torch.long)
        hit = (top == labels[:, None]) & valid[:, None]
        for i, k in enumerate(self.ks):
            self.correct[i] += hit[:, : min(k, k_max)].any(dim=1).sum()
        self.total += valid.sum()
        return self

    def accuracy(self, k: int) -> float:
        """Fraction of rows with the label in the top k (NaN before any row); k one of ``ks``."""
        if k not in self.ks:
            raise ValueError(f"AccuracyStats counts the top-k accuracy for ks={self.ks}, not for k={k}")
        total = float(self.total)
        return float(self.correct[self.ks.index(k)]) / total if total else float("nan")
