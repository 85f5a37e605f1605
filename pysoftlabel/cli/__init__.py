"""The command-line programs, installed as `psl-train` and `psl-evaluate` (tools/train_imagenet.py and
tools/evaluate.py in a checkout): training with a soft-label strategy, and calibration reports."""
import argparse
import sys
from pathlib import Path


def program_name(module):
    """The program's name in its usage and error lines: ``python3 -m MODULE`` where it was started so, as
    argparse itself says from Python 3.14 on (before, it names the module's file, ``train.py``); None,
    argparse's default (the script's name: ``psl-train``, ``train_imagenet.py``), otherwise."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"{Path(sys.executable).name} -m {module}" if spec is not None and spec.name == module else None


class ArgumentParser(argparse.ArgumentParser):
    """The programs' parser: named as started (:func:`program_name` of ``module``), ``description`` shown as
    written, and a bad argument is one line, ``PROG: error: ...``, without argparse's usage block of twenty
    lines above it, which pushed the line that matters out of view (``--help`` shows the usage)."""

    def __init__(self, description, module=None):
        super().__init__(prog=program_name(module) if module else None, description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
