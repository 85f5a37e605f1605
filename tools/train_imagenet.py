#!/usr/bin/env python3
"""Train an image classifier with a soft-label strategy and report its calibration (--help for the options).

The program is pysoftlabel.cli.train; installed, it is also `psl-train`."""
from pysoftlabel.cli.train import main

if __name__ == "__main__":
    main()
