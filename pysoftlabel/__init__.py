"""pysoftlabel: soft labels, calibrated.

Fused soft-target cross-entropy (label smoothing, Online Label Smoothing tables, mixup/CutMix,
label distribution learning, distillation) with calibration statistics in the same pass.
"""
from . import data, reference, strategies
from ._extension import extension_info
from .metrics import CalibrationStats, ClassStats, calibration_stats
from .ops import SoftCrossEntropyLoss, soft_cross_entropy
from .target import SoftTarget

__version__ = "0.1.0"
__all__ = ["SoftTarget", "soft_cross_entropy", "SoftCrossEntropyLoss", "reference", "ClassStats", "CalibrationStats",
           "calibration_stats", "extension_info"]
