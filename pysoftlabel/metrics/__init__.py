"""Mergeable metric accumulators (update, merge, state_dict, all_reduce; no printing) and reports."""
from .accuracy import AccuracyStats
from .binned import AdaptiveCalibrationStats, ClasswiseCalibrationStats
from .bootstrap import ece_difference_interval, ece_interval
from .calibration import CalibrationStats, calibration_stats
from .class_stats import ClassStats
from .context import ContextConfidence
from .report import calibration_report, ece_with_interval, reliability_diagram, reliability_diagrams
from .state import rows_with_softmax
from .temperature import fit_temperature, heldout_temperature_ece

__all__ = ["AccuracyStats", "AdaptiveCalibrationStats", "ClasswiseCalibrationStats", "CalibrationStats",
           "calibration_stats", "ClassStats", "ContextConfidence", "calibration_report", "reliability_diagram",
           "reliability_diagrams", "fit_temperature", "heldout_temperature_ece", "ece_interval",
           "ece_difference_interval", "ece_with_interval", "rows_with_softmax"]
