"""Calibration statistics in one pass over the logits: ``torch.ops.pysoftlabel.calibration_update``."""
import torch
from torch import Tensor

from .. import reference
from .._extension import _C, choose_backend
from .fake_checks import check_fake_args

__all__ = ["calibration_update"]


def calibration_update(logits: Tensor, labels: Tensor, bins: Tensor, sums: Tensor, ignore_index: int = -100,
                       backend: str = "auto") -> None:
    """Adds one batch to a calibration histogram, in place.

    Row i has confidence :math:`\\max_c \\mathrm{softmax}(x_i)_c` and is correct when its argmax is
    ``labels[i]``; it adds 1, its confidence and its correctness to bin b with confidence in
    (b/M, (b+1)/M], and its NLL :math:`-\\log p_{i,y_i}` and Brier score
    :math:`\\sum_c (p_{ic} - [c = y_i])^2` to ``sums``. Rows labelled ``ignore_index`` are skipped;
    rows whose logits are not finite (NaN, +inf) are counted in ``sums[2]`` and skipped.

    Args:
        logits (Tensor[N, C]): scores, any floating dtype.
        labels (Tensor[N]): classes.
        bins (Tensor[M, 3], float64): count, confidence sum, correct count per bin (updated).
        sums (Tensor[3], float64): NLL sum, Brier sum, non-finite rows (updated).
        ignore_index (int): label of rows to skip. Default: -100.
        backend (str): ``'auto'``, ``'native'`` or ``'reference'``. Default: ``'auto'``.
    """
    if choose_backend(backend, logits.device):
        torch.ops.pysoftlabel.calibration_update(logits, labels, ignore_index, bins, sums)
    else:
        new_bins, new_sums = reference.calibration_update(logits, labels, bins, sums, ignore_index)
        bins.copy_(new_bins)
        sums.copy_(new_sums)


if _C is not None:
    @torch.library.register_fake("pysoftlabel::calibration_update")
    def _(logits, labels, ignore_index, bins, sums):
        check_fake_args(logits, labels=labels, bins=bins, sums=sums)
        return None
