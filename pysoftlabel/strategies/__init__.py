"""Soft-label strategies: each turns a batch into the SoftTarget of the fused cross-entropy.

    ce, ls            hard.py       cross-entropy, label smoothing
    ols               ols.py        Online Label Smoothing (Zhang et al. 2021)
    als               als.py        Adaptive Label Smoothing (Krothapalli & Abbott 2020; our reading)
    ldl, online-ldl   ldl.py        label distribution learning (Hong et al. 2023; online: our interpretation)
    kd                kd.py         knowledge distillation (Hinton et al. 2015)
    mixup, cutmix,    mix.py        mixing augmentations that compose with all of them
    ricap
"""
from .als import AdaptiveLabelSmoothing
from .base import Strategy, hard_target
from .hard import CrossEntropy, LabelSmoothing
from .kd import KnowledgeDistillation
from .ldl import LabelDistribution, OnlineLabelDistribution
from .mix import RICAP, CutMix, Mixup, mixed_loss
from .ols import OnlineLabelSmoothing

__all__ = ["Strategy", "hard_target", "CrossEntropy", "LabelSmoothing", "OnlineLabelSmoothing",
           "AdaptiveLabelSmoothing", "LabelDistribution", "OnlineLabelDistribution", "KnowledgeDistillation",
           "Mixup", "CutMix", "RICAP", "mixed_loss"]
