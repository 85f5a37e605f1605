"""Adaptive Label Smoothing (Krothapalli & Abbott 2020, "Adaptive Label Smoothing", arXiv:2009.06432).

No official code exists; this is our reading of the paper: the smoothing of a training sample is
1 minus the fraction of its random crop covered by the boxes of its label, clamped to [eps_min, eps_max];
a crop with no object gets eps_max, a crop filled by the object eps_min, and an image without box
annotations the fixed ``eps_no_box``. Under mixing augmentation a sample's target is the mix, weighted as
its labels, of the ALS targets of its images, each smoothed by its own crop's fraction.
"""
import torch

from ..target import SoftTarget
from .base import Strategy, hard_target

__all__ = ["AdaptiveLabelSmoothing"]


class AdaptiveLabelSmoothing(Strategy):
    """Per-sample smoothing eps = clamp(1 - o, eps_min, eps_max) from the batch's ``object_fraction`` o
    (the data layer writes -1 for an image without boxes, which gets ``eps_no_box``).

    Args:
        eps_min (float): smoothing of a crop the object fills. Default: 0.0.
        eps_max (float): smoothing of a background-only crop. Default: 1.0.
        eps_no_box (float): smoothing of images without boxes. Default: 0.1.
    """

    name = "als"

    def __init__(self, eps_min: float = 0.0, eps_max: float = 1.0, eps_no_box: float = 0.1):
        if not 0.0 <= eps_min <= eps_max <= 1.0 or not 0.0 <= eps_no_box <= 1.0:
            raise ValueError(f"need 0 <= eps_min <= eps_max <= 1 and eps_no_box in [0, 1], got "
                             f"{eps_min}, {eps_max}, {eps_no_box}")
        self.eps_min, self.eps_max, self.eps_no_box = float(eps_min), float(eps_max), float(eps_no_box)

    def smoothing(self, object_fraction: torch.Tensor) -> torch.Tensor:
        """The per-sample smoothing for object fractions in [0, 1] (or -1: no box)."""
        eps = (1.0 - object_fraction.float()).clamp(self.eps_min, self.eps_max)
        return torch.where(object_fraction < 0, torch.full_like(eps, self.eps_no_box), eps)

    def targets(self, batch, model=None):
        self._check_batch(batch)
        if "object_fraction" not in batch:
            raise ValueError("als: the batch needs 'object_fraction' (load the data with --boxes)")
        eps = self.smoothing(batch["object_fraction"])
        if batch.get("label2") is None:
            return hard_target(batch, smoothing=eps)
        if "object_fraction2" not in batch:
            raise ValueError("als: a mixed batch needs 'object_fraction2', the object fractions of the 'label2' "
                             "images (pysoftlabel's Mixup, CutMix and RICAP add it)")
        # lam * ALS(y, eps) + (1 - lam) * ALS(y2, eps2) in the operator's form: smoothing
        # s = lam eps + (1 - lam) eps2 and, of the 1 - s left to the labels, lam (1 - eps) to y.
        eps2, lam = self.smoothing(batch["object_fraction2"]), batch["lam"]  # a float stays one: no copy to the GPU
        smoothing = lam * eps + (1.0 - lam) * eps2
        hard = 1.0 - smoothing
        lam_hard = torch.where(hard > 0, lam * (1.0 - eps) / hard.clamp_min(1e-12), lam).clamp(0.0, 1.0)
        return SoftTarget(batch["label"], smoothing=smoothing, labels2=batch["label2"], lam=lam_hard)
