"""Class statistics of Online Label Smoothing: ``torch.ops.pysoftlabel.class_stats_update``."""
import torch
from torch import Tensor

from .. import reference
from .._extension import _C, choose_backend
from .fake_checks import check_fake_args

__all__ = ["class_stats_update"]


def class_stats_update(logits: Tensor, labels: Tensor, class_sum: Tensor, class_count: Tensor,
                       ignore_index: int = -100, backend: str = "auto") -> None:
    """Rows classified correctly (argmax == label) add their softmax to ``class_sum[label]`` and 1 to
    ``class_count[label]``, in place (Zhang et al. 2021, Online Label Smoothing).

    Args:
        logits (Tensor[N, C]): scores, any floating dtype.
        labels (Tensor[N]): classes; ``ignore_index`` rows are skipped.
        class_sum (Tensor[C, C], float32): per-class sums of softmax rows (updated).
        class_count (Tensor[C], float32): per-class counts of correct rows (updated).
        ignore_index (int): Default: -100.
        backend (str): ``'auto'``, ``'native'`` or ``'reference'``. Default: ``'auto'``.
    """
    if choose_backend(backend, logits.device):
        torch.ops.pysoftlabel.class_stats_update(logits, labels, ignore_index, class_sum, class_count)
    else:
        new_sum, new_count = reference.class_stats_update(logits, labels, class_sum, class_count, ignore_index)
        class_sum.copy_(new_sum)
        class_count.copy_(new_count)


if _C is not None:
    @torch.library.register_fake("pysoftlabel::class_stats_update")
    def _(logits, labels, ignore_index, class_sum, class_count):
        check_fake_args(logits, labels=labels, class_sum=class_sum, class_count=class_count)
        return None
