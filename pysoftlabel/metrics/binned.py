"""Calibration errors that need more than the top-label histogram: adaptive (equal-mass) ECE and
classwise ECE, both streaming and mergeable in fixed-size state."""
import torch
from torch import Tensor

from .state import SummedState, check_batch, count_argument

__all__ = ["AdaptiveCalibrationStats", "ClasswiseCalibrationStats"]


class AdaptiveCalibrationStats(SummedState):
    r"""Adaptive (equal-mass) ECE of the top label: bins hold equal numbers of rows instead of equal confidence
    widths (AdaECE, Mukhoti et al. 2020, arXiv:2002.09437; the binning of Nixon et al. 2019, arXiv:1904.01685,
    whose ACE also averages over every class).

    Streaming: rows go into a fine histogram of ``resolution`` equal-width confidence cells (count,
    confidence sum, correct count); :attr:`ece` groups consecutive cells into ``n_bins`` bins of about
    equal mass. The result equals the exact sort-based value up to the cell width (1 / resolution): rows
    of one cell are never split between bins.

    Args:
        n_bins (int): equal-mass bins. Default: 15.
        resolution (int): fine cells. Default: 10000.
        device (torch.device or str, optional): Default: CPU.
    """

    _state = ("cells",)

    def __init__(self, n_bins: int = 15, resolution: int = 10000, device=None):
        n_bins, resolution = count_argument("n_bins", n_bins), count_argument("resolution", resolution)
        if resolution < n_bins:
            raise ValueError(f"need n_bins <= resolution, got n_bins={n_bins}, resolution={resolution}")
        self.n_bins = n_bins
        self.cells = torch.zeros(resolution, 3, dtype=torch.float64, device=device)

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100):
        check_batch(logits, labels, ignore_index)
        valid = labels != ignore_index
        p = torch.softmax(logits.detach()[valid].double(), dim=1)
        conf, pred = p.max(dim=1) if p.numel() else (p.new_zeros(0), labels.new_zeros(0))
        cell = (torch.ceil(conf * len(self.cells)).long() - 1).clamp(0, len(self.cells) - 1)
        self.cells[:, 0].index_add_(0, cell, torch.ones_like(conf))
        self.cells[:, 1].index_add_(0, cell, conf)
        self.cells[:, 2].index_add_(0, cell, (pred == labels[valid]).double())
        return self

    @property
    def ece(self) -> float:
        cells = self.cells.cpu()
        total = float(cells[:, 0].sum())
        if total == 0:
            return float("nan")
        # Bin b collects the cells whose cumulative count falls in (b/M, (b+1)/M] of the total.
        cum = cells[:, 0].cumsum(0)
        bin_of_cell = torch.ceil(cum / total * self.n_bins).long().clamp(1, self.n_bins) - 1
        bins = torch.zeros(self.n_bins, 3, dtype=torch.float64).index_add_(0, bin_of_cell, cells)
        return float((bins[:, 2] - bins[:, 1]).abs().sum() / total)  # sum_b |correct_b - conf_b| / N


class ClasswiseCalibrationStats(SummedState):
    r"""Classwise ECE (Kull et al. 2019, arXiv:1910.12656): for every class c, an equal-width histogram of
    :math:`p_c` over all rows with the frequency of label c in each bin;
    :math:`\mathrm{cwECE} = \frac{1}{C} \sum_c \sum_b \frac{|B_{cb}|}{N} |\mathrm{freq}_{cb} - \mathrm{conf}_{cb}|`.
    State [C, M, 3] (count, probability sum, label count): no N x C storage across batches.

    Args:
        num_classes (int): C.
        n_bins (int): Default: 15.
        device (torch.device or str, optional): Default: CPU.
    """

    _state = ("bins", "rows")

    def __init__(self, num_classes: int, n_bins: int = 15, device=None):
        self.num_classes, self.n_bins = count_argument("num_classes", num_classes), count_argument("n_bins", n_bins)
        self.bins = torch.zeros(self.num_classes, self.n_bins, 3, dtype=torch.float64, device=device)
        self.rows = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100):
        check_batch(logits, labels, ignore_index, self.num_classes)
        valid = labels != ignore_index
        p = torch.softmax(logits.detach()[valid].double(), dim=1)
        y = labels[valid]
        b = (torch.ceil(p * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)  # [n, C]
        flat = (torch.arange(self.num_classes, device=p.device) * self.n_bins + b).reshape(-1)
        onehot = torch.nn.functional.one_hot(y.long(), self.num_classes).double().reshape(-1)
        view = self.bins.view(-1, 3)
        view[:, 0].index_add_(0, flat, torch.ones_like(onehot))
        view[:, 1].index_add_(0, flat, p.reshape(-1))
        view[:, 2].index_add_(0, flat, onehot)
        self.rows += valid.sum()
        return self

    @property
    def ece(self) -> float:
        rows = float(self.rows)
        if rows == 0:
            return float("nan")
        bins = self.bins.cpu()
        return float((bins[..., 2] - bins[..., 1]).abs().sum() / rows / self.num_classes)
