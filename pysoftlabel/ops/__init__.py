"""Ops over the native kernels, one file each; every one falls back to pysoftlabel.reference."""
from .calibration import calibration_update
from .class_stats import class_stats_update
from .soft_cross_entropy import SoftCrossEntropyLoss, soft_cross_entropy

__all__ = ["soft_cross_entropy", "SoftCrossEntropyLoss", "calibration_update", "class_stats_update"]
