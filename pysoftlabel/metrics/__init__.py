"""Mergeable metric accumulators (update, merge, state_dict, all_reduce; no printing)."""
from .calibration import CalibrationStats, calibration_stats
from .class_stats import ClassStats

__all__ = ["CalibrationStats", "calibration_stats", "ClassStats"]
