"""The command-line programs, installed as `psl-train` and `psl-evaluate` (tools/train_imagenet.py and
tools/evaluate.py in a checkout): training with a soft-label strategy, and calibration reports."""
import sys
from pathlib import Path


def program_name(module):
    """The program's name in its usage and error lines: ``python3 -m MODULE`` where it was started so, as
    argparse itself says from Python 3.14 on (before, it names the module's file, ``train.py``); None,
    argparse's default (the script's name: ``psl-train``, ``train_imagenet.py``), otherwise."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"{Path(sys.executable).name} -m {module}" if spec is not None and spec.name == module else None
