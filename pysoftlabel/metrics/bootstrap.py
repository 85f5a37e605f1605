"""How far an ECE could move on another draw of the same size: a percentile bootstrap over the rows."""
import math

import torch
from torch import Tensor

__all__ = ["ece_interval"]


@torch.no_grad()
def ece_interval(logits: Tensor, labels: Tensor, n_bins: int = 15, level: float = 0.95, resamples: int = 1000,
                 ignore_index: int = -100, seed: int = 0) -> tuple:
    """(low, high): the percentile bootstrap interval of the ECE (Guo et al. 2017, bins as
    :class:`~pysoftlabel.CalibrationStats`) of ``logits`` [N, C] and ``labels`` [N], at ``level``.

    Each of ``resamples`` draws takes N rows with replacement (from a generator seeded by ``seed``) and
    measures their ECE; the interval holds the middle ``level`` of those figures. On a validation set of a
    few hundred images the ECE moves by a few points from draw to draw, and two models whose intervals
    overlap widely are not told apart by it. (ECE is biased upwards on small sets, and so is the interval.)
    (nan, nan) without valid rows.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    valid = labels != ignore_index
    probs = torch.softmax(logits.detach()[valid].double(), dim=1)
    n = probs.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels[valid]).double()
    # bin b holds confidences in (b/M, (b+1)/M]; a confidence of 1.0 is in the last bin
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    generator = torch.Generator().manual_seed(seed)
    figures = []
    chunk = max(1, 4_000_000 // n)  # resamples drawn at once: chunk x n indices
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        rows = torch.randint(n, (r, n), generator=generator).to(probs.device)
        cell = (torch.arange(r, device=probs.device)[:, None] * n_bins + bins[rows]).flatten()
        gap = torch.zeros(r * n_bins, dtype=torch.float64, device=probs.device)
        gap.index_add_(0, cell, (correct[rows] - confidence[rows]).flatten())
        figures.append(gap.view(r, n_bins).abs().sum(dim=1) / n)  # sum_b |correct_b - confidence_b| / n
    figures = torch.cat(figures).sort().values.cpu()
    tail = (1 - level) / 2
    return (float(figures[math.floor(tail * (resamples - 1))]), float(figures[math.ceil((1 - tail) * (resamples - 1))]))
