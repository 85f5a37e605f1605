"""Training and evaluation loops: functions of (model, loader, strategy, optimizer, scaler), no argparse."""
from .checkpoint import (CheckpointWriter, check_checkpoint, load_checkpoint, require_keys, run_checkpoint,
                         save_checkpoint)
from .loop import AMP_CHOICES, Diverged, autocast_dtype, context_confidence, evaluate, parse_device, train_one_epoch
from .report import model_logits, output_folder, recipe_name, write_calibration_report, write_logits_report

__all__ = ["train_one_epoch", "evaluate", "context_confidence", "autocast_dtype", "AMP_CHOICES", "parse_device",
           "Diverged", "save_checkpoint", "check_checkpoint", "load_checkpoint", "require_keys", "run_checkpoint",
           "CheckpointWriter", "write_calibration_report", "write_logits_report", "model_logits", "recipe_name",
           "output_folder"]
