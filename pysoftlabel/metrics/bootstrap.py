"""How far an ECE could move on another draw of the same size: a percentile bootstrap over the rows, for one
model's ECE and for the difference between two models' ECEs on the same rows."""
import math

import torch
from torch import Tensor

from .calibration import calibration_stats
from .state import check_batch

__all__ = ["ece_interval", "ece_difference_interval"]


@torch.no_grad()
def ece_interval(logits: Tensor, labels: Tensor, n_bins: int = 15, level: float = 0.95, resamples: int = 1000,
                 ignore_index: int = -100, seed: int = 0) -> tuple:
    """(low, high): the percentile bootstrap interval of the ECE (Guo et al. 2017, bins as
    :class:`~pysoftlabel.CalibrationStats`) of ``logits`` [N, C] and ``labels`` [N], at ``level``.

    Each of ``resamples`` draws takes N rows with replacement (from a generator seeded by ``seed``) and
    measures their ECE; the interval holds the middle ``level`` of those figures. On a validation set of a
    few hundred images the ECE moves by a few points from draw to draw, and two models whose intervals
    overlap widely are not told apart by it (:func:`ece_difference_interval` compares two models on the same
    draws). (ECE is biased upwards on small sets, and so is the interval.) (nan, nan) without valid rows.
    """
    _check(level, resamples, labels, ignore_index, logits)
    valid = labels != ignore_index
    figures = _resampled_eces([_row_parts(logits[valid], labels[valid], n_bins)], n_bins, resamples, seed)
    return _percentiles(figures[0], level) if figures is not None else (float("nan"), float("nan"))


@torch.no_grad()
def ece_difference_interval(logits_a: Tensor, logits_b: Tensor, labels: Tensor, n_bins: int = 15,
                            level: float = 0.95, resamples: int = 1000, ignore_index: int = -100,
                            seed: int = 0) -> tuple:
    """(difference, low, high): ECE(``logits_b``) − ECE(``logits_a``) on the same rows (``labels`` [N]) and
    its paired percentile bootstrap interval at ``level``: each draw takes the same N rows for both models,
    so that the luck of the validation set, which moves both ECEs together, cancels. An interval that holds
    0 does not tell the two apart; one that does not is a difference the data support, where the two
    models' own intervals may still overlap. (nan, nan, nan) without valid rows.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits_a and logits_b must have the same shape, got {tuple(logits_a.shape)} and "
                         f"{tuple(logits_b.shape)}")
    _check(level, resamples, labels, ignore_index, logits_a, logits_b)
    valid = labels != ignore_index
    parts = [_row_parts(logits[valid], labels[valid], n_bins) for logits in (logits_a, logits_b)]
    figures = _resampled_eces(parts, n_bins, resamples, seed)
    if figures is None:
        return float("nan"), float("nan"), float("nan")
    whole = [calibration_stats(logits, labels, n_bins, ignore_index).ece for logits in (logits_a, logits_b)]
    return (whole[1] - whole[0], *_percentiles(figures[1] - figures[0], level))


def _check(level, resamples, labels, ignore_index, *logits):
    """ValueErrors for the arguments, and for a batch that CalibrationStats refuses (read on every device:
    an interval is computed once, and a NaN row or a label out of range would make it silently wrong)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    for x in logits:
        check_batch(x, labels, ignore_index, read_values=True)


def _row_parts(logits, labels, n_bins):
    """(bin, correct − confidence) of each row, in float64: what a row adds to the ECE's sum."""
    probs = torch.softmax(logits.detach().double(), dim=1)
    confidence, predicted = probs.max(dim=1)
    # bin b holds confidences in (b/M, (b+1)/M]; a confidence of 1.0 is in the last bin
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    return bins, (predicted == labels).double() - confidence


def _resampled_eces(parts, n_bins, resamples, seed):
    """[models, resamples]: the ECE of each model (``parts``: its rows' :func:`_row_parts`) on each draw of
    N rows with replacement, the same rows for every model; None without rows."""
    n = len(parts[0][1])
    if n == 0:
        return None
    device = parts[0][1].device
    generator = torch.Generator().manual_seed(seed)
    figures = [[] for _ in parts]
    chunk = max(1, 4_000_000 // n)  # resamples drawn at once: chunk x n indices
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        rows = torch.randint(n, (r, n), generator=generator).to(device)
        for model, (bins, gap) in enumerate(parts):
            cell = (torch.arange(r, device=device)[:, None] * n_bins + bins[rows]).flatten()
            sums = torch.zeros(r * n_bins, dtype=torch.float64, device=device).index_add_(0, cell, gap[rows].flatten())
            figures[model].append(sums.view(r, n_bins).abs().sum(dim=1) / n)  # sum_b |correct_b - confidence_b| / n
    return torch.stack([torch.cat(f) for f in figures]).cpu()


def _percentiles(figures, level):
    """(low, high): the middle ``level`` of ``figures``."""
    figures, count = figures.sort().values, len(figures)
    tail = (1 - level) / 2
    return float(figures[math.floor(tail * (count - 1))]), float(figures[math.ceil((1 - tail) * (count - 1))])
