"""The command-line programs, installed as `psl-train` and `psl-evaluate` (tools/train_imagenet.py and
tools/evaluate.py in a checkout): training with a soft-label strategy, and calibration reports."""
