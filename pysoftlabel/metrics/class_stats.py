"""ClassStats: Online Label Smoothing's per-class statistics, mergeable across DDP ranks."""
import torch
from torch import Tensor

from ..ops.class_stats import class_stats_update
from ..target import check_label_dtype
from .state import SummedState, count_argument

__all__ = ["ClassStats"]


class ClassStats(SummedState):
    """Per class c: the sum of the softmax vectors of training rows of class c that the model classified
    correctly, and their count (Zhang et al. 2021, "Delving Deep into Label Smoothing", arXiv:2011.12562).

    ``table()`` is the OLS soft-label table: row c = sum_c / count_c, the uniform row 1/C where
    count_c = 0. State: ``sum`` [C, C] and ``count`` [C], float32, on ``device``.

    Args:
        num_classes (int): C.
        device (torch.device or str, optional): where the state lives (the logits' device). Default: CPU.
    """

    _state = ("sum", "count")

    def __init__(self, num_classes: int, device=None):
        self.num_classes = count_argument("num_classes", num_classes)
        device = torch.device("cpu") if device is None else torch.device(device)
        self.sum = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float32, device=device)
        self.count = torch.zeros(self.num_classes, dtype=torch.float32, device=device)

    def buffers(self):
        """(sum, count): the tensors the fused loss accumulates into."""
        return self.sum, self.count

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100, backend: str = "auto"):
        """Adds the rows of ``logits`` classified correctly (argmax == label) to their class; rows with non-finite
        logits (NaN, +inf, all -inf) have no softmax and are left out. Returns self."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [N, {self.num_classes}], got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"labels must have shape [N] = [{logits.shape[0]}], got {tuple(labels.shape)}")
        check_label_dtype(labels)
        if logits.device != self.device or labels.device != self.device:
            raise ValueError(f"logits and labels must be on {self.device}, got {logits.device} and {labels.device}")
        class_stats_update(logits.detach(), labels, self.sum, self.count, ignore_index, backend)
        return self

    def table(self) -> Tensor:
        """[C, C] float32: the mean correct softmax row per class, uniform where a class had none."""
        uniform = torch.full_like(self.sum, 1.0 / self.num_classes)
        mean = self.sum / self.count.clamp(min=1)[:, None]
        return torch.where(self.count[:, None] > 0, mean, uniform)

    def __repr__(self):
        return (f"ClassStats(num_classes={self.num_classes}, device={self.device}, "
                f"correct={int(self.count.sum())}, classes_seen={int((self.count > 0).sum())})")
