"""Online Label Smoothing (Zhang et al. 2021, "Delving Deep into Label Smoothing", IEEE TIP,
arXiv:2011.12562; official code: github.com/zhangchbin/OnlineLabelSmoothing)."""
import torch

from ..metrics.class_stats import ClassStats
from .base import Strategy, hard_target

__all__ = ["OnlineLabelSmoothing"]


class OnlineLabelSmoothing(Strategy):
    """loss = alpha * CE(z, y) + (1 - alpha) * CE(z, S[y]), with S the C x C table of the mean softmax of
    the correctly classified training samples of each class in the previous epoch.

    The statistics of the current epoch are gathered by the fused loss itself (pass ``strategy.stats`` as
    ``stats=``); ``end_epoch()`` sets S to their mean rows (uniform for a class with no correct sample)
    and resets them. With mixing augmentation the table part mixes like the labels:
    lam * S[y] + (1 - lam) * S[y2].

    Args:
        num_classes (int): C.
        alpha (float): weight of the hard label. Default: 0.5 (the paper).
        init (str): the table of the first epoch, ``"zeros"`` (CIFAR / ImageNet recipe: the soft term
            is 0 in epoch 0) or ``"uniform"`` (fine-grained recipe). Default: ``"zeros"``.
        freeze_at (float, optional): a row whose largest value reaches this stays as it is from then on,
            as the official fine-grained recipe does with 0.88. Default: None (never).
        device: where the table and statistics live.
    """

    name = "ols"

    def __init__(self, num_classes: int, alpha: float = 0.5, init: str = "zeros", freeze_at=None, device=None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if init not in ("zeros", "uniform"):
            raise ValueError(f"init must be 'zeros' or 'uniform', got {init!r}")
        if freeze_at is not None and not 0.0 < freeze_at <= 1.0:  # above 1 no row would ever freeze
            raise ValueError(f"freeze_at must be in (0, 1] or None, got {freeze_at}")
        self.alpha = float(alpha)
        self.freeze_at = freeze_at
        self.stats = ClassStats(num_classes, device)
        fill = 0.0 if init == "zeros" else 1.0 / num_classes
        self.table = torch.full((num_classes, num_classes), fill, device=self.stats.device)
        self.frozen = torch.zeros(num_classes, dtype=torch.bool, device=self.stats.device)

    def targets(self, batch, model=None):
        self._check_batch(batch)
        if self.alpha == 1.0:  # all weight on the hard label: the table takes no part
            return hard_target(batch)
        return hard_target(batch, table=self.table, table_weight=1.0 - self.alpha)

    def end_epoch(self):
        new = self.stats.table()
        self.table = torch.where(self.frozen[:, None], self.table, new)
        if self.freeze_at is not None:
            self.frozen |= self.table.amax(dim=1) >= self.freeze_at
        self.stats.reset()

    def state_dict(self):
        return {"table": self.table.clone(), "frozen": self.frozen.clone(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state):
        self.table.copy_(state["table"])
        self.frozen.copy_(state["frozen"])
        self.stats.load_state_dict(state["stats"])
