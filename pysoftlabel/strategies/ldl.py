"""Label distribution learning (Hong et al. 2023, "Rethinking Soft Label in Label Distribution
Learning Perspective", arXiv:2301.13444), and its online variant.

LDL: the target of each sample is the distribution a trained teacher predicts for the same augmented
batch (T = 1, no hard-label term); with mixup / CutMix / RICAP the teacher sees the mixed image and the
mixed hard labels are not used.

Online LDL is not defined in anything we could read. Ours: the distribution comes from an exponential
moving average of the student itself (no pre-trained teacher), mixed with the hard labels by a weight that
ramps up from 0 while the average is still uninformative, as progressive self-knowledge distillation does
(PS-KD, Kim et al. 2021, arXiv:2006.12000: weight 0.8 reached linearly over training). The hard term must
stay: with weight 1 the uniform prediction is a fixed point of self-distillation, and our first version
(weight 1 after 5 epochs, decay 0.999) collapsed to chance on CIFAR-10 at exactly that epoch.
"""
import copy

import torch

from ..target import SoftTarget
from .base import Strategy, hard_target

__all__ = ["LabelDistribution", "OnlineLabelDistribution"]


class LabelDistribution(Strategy):
    """Targets from a frozen teacher on the same (augmented, mixed) images.

    Args:
        teacher (nn.Module): trained with hard CE on the same recipe; put in eval mode, no gradient.
        temperature (float): of the teacher's softmax. Default: 1 (the paper).
    """

    name = "ldl"
    label_free = True

    def __init__(self, teacher: torch.nn.Module, temperature: float = 1.0):
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = float(temperature)

    def targets(self, batch, model=None):
        self._check_batch(batch)
        teacher_logits = self.frozen_forward(self.teacher, batch["image"])
        return SoftTarget(batch["label"], dense=teacher_logits, dense_logits=True, dense_weight=1.0,
                          temperature=self.temperature)


class OnlineLabelDistribution(Strategy):
    """Targets from an exponential moving average of the student (our interpretation of online LDL).

    target = (1 - w) * hard labels + w * softmax(ema(image)), with w rising linearly from 0 to ``weight``
    over ``warmup_epochs``.

    Args:
        model (nn.Module): the student; the average starts as a copy of it.
        decay (float): EMA decay per step. Default: 0.999.
        weight (float): final weight of the EMA distribution. Default: 0.8 (PS-KD's alpha_T).
        warmup_epochs (int): epochs over which w ramps up (PS-KD: all of them). Default: 5.
    """

    name = "online-ldl"

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, weight: float = 0.8, warmup_epochs: int = 5):
        if not 0.0 <= decay < 1.0 or not 0.0 <= weight <= 1.0 or warmup_epochs < 0:
            raise ValueError(f"need decay in [0, 1), weight in [0, 1], warmup_epochs >= 0; got {decay}, {weight}, "
                             f"{warmup_epochs}")
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.weight, self.warmup_epochs = float(decay), float(weight), int(warmup_epochs)
        self.epoch = 0

    def current_weight(self) -> float:
        if self.warmup_epochs == 0:
            return self.weight
        return self.weight * min(1.0, self.epoch / self.warmup_epochs)

    def targets(self, batch, model=None):
        self._check_batch(batch)
        w = self.current_weight()
        if w == 0.0:
            return hard_target(batch)
        ema_logits = self.frozen_forward(self.ema, batch["image"])
        return hard_target(batch, dense=ema_logits, dense_logits=True, dense_weight=w)

    @torch.no_grad()
    def after_step(self, model=None):
        student = model.module if hasattr(model, "module") else model  # DDP wraps the student
        pairs = list(zip(self.ema.state_dict().values(), student.state_dict().values()))
        floats = [(avg, new.to(avg.dtype)) for avg, new in pairs if avg.is_floating_point()]
        if floats:  # one multi-tensor launch, not one per tensor (a ResNet-50 has over 300 of them)
            torch._foreach_lerp_([avg for avg, _ in floats], [new for _, new in floats], 1.0 - self.decay)
        for avg, new in pairs:
            if not avg.is_floating_point():
                avg.copy_(new)

    def end_epoch(self):
        self.epoch += 1

    def state_dict(self):
        return {"ema": self.ema.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state):
        self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
