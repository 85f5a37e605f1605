"""Top-k accuracy as a mergeable accumulator."""
import torch
from torch import Tensor

from .state import SummedState, check_batch

__all__ = ["AccuracyStats"]


class AccuracyStats(SummedState):
    """Counts of rows whose label is among the k highest logits, for each k in ``ks``.

    Ties rank by class index, as :func:`torch.argmax` picks the first class of the row's max: the label
    ranks after every class with a higher logit and every class before it with the same logit, and is in
    the top k when fewer than k classes rank before it (NaN ranks highest, as in argmax). So the top-1
    accuracy is the accuracy of :class:`CalibrationStats` and of the class statistics, bf16 logits'
    frequent ties included (``torch.topk`` does not guarantee an order among tied values: it may vary
    between calls and devices, its documentation says).

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
        if logits.shape[1]:  # without classes no label is in a top k (and class 0 is no index to gather)
            rank = label_rank(logits.detach(), labels.where(valid, 0).long())  # any integer dtype
            for i, k in enumerate(self.ks):
                self.correct[i] += ((rank < k) & valid).sum()
        self.total += valid.sum()
        return self

    def accuracy(self, k: int) -> float:
        """Fraction of rows with the label in the top k (NaN before any row); k one of ``ks``."""
        if k not in self.ks:
            raise ValueError(f"AccuracyStats counts the top-k accuracy for ks={self.ks}, not for k={k}")
        total = float(self.total)
        return float(self.correct[self.ks.index(k)]) / total if total else float("nan")


def label_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """[N]: how many classes rank before the label in its row of ``logits`` [N, C], ties broken by class
    index and NaN ranking highest, as in :func:`torch.argmax` (0: the label is the row's argmax)."""
    x_y = logits.gather(1, labels[:, None])
    nan, nan_y = logits.isnan(), x_y.isnan()
    higher = (logits > x_y) | (nan & ~nan_y)
    same = (logits == x_y) | (nan & nan_y)
    before = torch.arange(logits.shape[1], device=logits.device) < labels[:, None]
    return (higher | (same & before)).sum(dim=1)
