#!/usr/bin/env python3
"""Evaluate checkpoints, saved outputs or a library's pretrained weights: the calibration report, and a
comparison of several (--help for the inputs and options).

The program is pysoftlabel.cli.evaluate; installed, it is also `psl-evaluate`."""
from pysoftlabel.cli.evaluate import main

if __name__ == "__main__":
    main()
