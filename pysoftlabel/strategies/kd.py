"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531), the baseline the LDL paper finds to hurt calibration."""
import torch

from ..ops.soft_cross_entropy import soft_cross_entropy
from ..target import SoftTarget
from .base import Strategy, hard_target

__all__ = ["KnowledgeDistillation"]


class KnowledgeDistillation(Strategy):
    r"""loss = CE(z, y) + alpha T^2 KL(softmax(t / T) || softmax(z / T)), KL averaged over the batch.

    The hard cross-entropy at full weight plus the distillation term; T^2 keeps that term's gradients at the
    scale of the hard term's whatever T is (Hinton et al.). Both terms go through the fused operator: the KL
    term is the soft cross-entropy of z / T against the teacher's softmax(t / T) minus the teacher's entropy
    (a constant for the student, subtracted so that the reported loss holds the KL itself).

    Args:
        teacher (nn.Module): trained teacher; eval mode, no gradient.
        alpha (float): weight of the distillation term, at least 0. Default: 0.1.
        temperature (float): T. Default: 3.
    """

    name = "kd"

    def __init__(self, teacher: torch.nn.Module, alpha: float = 0.1, temperature: float = 3.0):
        if not 0.0 <= alpha < float("inf") or not 0.0 < temperature < float("inf"):
            raise ValueError(f"need alpha >= 0 and temperature > 0 (finite), got {alpha}, {temperature}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def targets(self, batch, model=None):
        """The hard part of the loss (the distillation part needs the student's temperature: see ``loss``)."""
        self._check_batch(batch)
        return hard_target(batch)

    def loss(self, logits, batch, model=None, calib=None):
        t = self.temperature
        target = self.targets(batch)  # checks the batch before the teacher runs on it
        teacher_logits = self.frozen_forward(self.teacher, batch["image"]).float()
        with torch.no_grad():
            log_p = torch.log_softmax(teacher_logits / t, dim=1)
            entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
        hard = soft_cross_entropy(logits, target, stats=self.stats, calib=calib)
        soft = soft_cross_entropy(logits / t, SoftTarget(batch["label"], dense=teacher_logits, dense_logits=True,
                                                         dense_weight=1.0, temperature=t))
        return hard + self.alpha * t * t * (soft - entropy)
