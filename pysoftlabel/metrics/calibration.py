"""CalibrationStats: a mergeable O(M) accumulator of confidence-calibration statistics."""
import torch
from torch import Tensor

from ..ops.calibration import calibration_update
from ..target import check_label_dtype
from .state import SummedState, count_argument

__all__ = ["CalibrationStats", "calibration_stats"]


class CalibrationStats(SummedState):
    r"""Expected calibration error and friends, accumulated over batches (and ranks) in O(M) state.

    Each row has confidence :math:`\hat p_i = \max_c \mathrm{softmax}(x_i)_c` and is correct when its
    argmax equals its label. With M equal-width bins, bin b holding confidences in (b/M, (b+1)/M]
    (Guo et al. 2017, "On Calibration of Modern Neural Networks", arXiv:1706.04599):

    .. math::
        \mathrm{ECE} = \sum_b \frac{|B_b|}{N} \left| \mathrm{acc}(B_b) - \mathrm{conf}(B_b) \right|,
        \qquad \mathrm{MCE} = \max_{b : |B_b| > 0} \left| \mathrm{acc}(B_b) - \mathrm{conf}(B_b) \right|

    reported as fractions, beside the mean NLL, the mean multiclass Brier score
    :math:`\sum_c (p_{ic} - [c = y_i])^2` and top-1 accuracy.

    State: ``bins`` [M, 3] float64 (count, confidence sum, correct count) and ``sums`` [3] float64
    (NLL sum, Brier sum, rows with non-finite logits). Accumulators merge with ``+`` and ``all_reduce()``.

    Rows whose logits are not finite (NaN, +inf) are never counted. By default reading a figure after such a
    row raises ValueError (on CPU tensors already ``update``); with ``skip_nonfinite`` they are only counted in
    :attr:`nonfinite`, as a training loop under fp16 loss scaling wants, where an overflowing step is skipped.

    Args:
        n_bins (int): M. Default: 15.
        device (torch.device or str, optional): where the state lives. Default: CPU.
        skip_nonfinite (bool): leave rows with non-finite logits out instead of raising. Default: False.
    """

    _state = ("bins", "sums")

    def __init__(self, n_bins: int = 15, device=None, skip_nonfinite: bool = False):
        n_bins = count_argument("n_bins", n_bins)
        self.skip_nonfinite = bool(skip_nonfinite)
        device = torch.device("cpu") if device is None else torch.device(device)
        self.bins = torch.zeros(n_bins, 3, dtype=torch.float64, device=device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    @property
    def n_bins(self):
        return self.bins.shape[0]

    def buffers(self):
        """(bins, sums): the tensors the fused loss accumulates into."""
        return self.bins, self.sums

    def update(self, logits: Tensor, labels: Tensor, ignore_index: int = -100, backend: str = "auto"):
        """Adds a batch of logits [N, C] and labels [N]. Returns self."""
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"labels must have shape [N] = [{logits.shape[0]}], got {tuple(labels.shape)}")
        check_label_dtype(labels)
        if logits.device != self.device or labels.device != self.device:
            raise ValueError(f"logits and labels must be on {self.device}, got {logits.device} and {labels.device}")
        calibration_update(logits.detach(), labels, self.bins, self.sums, ignore_index, backend)
        if self.device.type == "cpu":
            self._check_finite()  # free on the CPU; on CUDA it waits until a value is read
        return self

    def _check_finite(self):
        if self.skip_nonfinite:
            return
        bad = self.nonfinite
        if bad:
            raise ValueError(f"logits: {bad} row(s) had non-finite values (NaN or inf); they were not counted")

    @property
    def nonfinite(self) -> int:
        """Rows left out because their logits were not finite."""
        return int(self.sums[2].item())

    def _read(self):
        self._check_finite()
        return self.bins.cpu(), self.sums.cpu()

    @property
    def count(self) -> int:
        return int(self._read()[0][:, 0].sum().item())

    @property
    def accuracy(self) -> float:
        return _accuracy(self._read()[0])

    @property
    def ece(self) -> float:
        return _ece(self._read()[0])

    @property
    def mce(self) -> float:
        count, gap = _gaps(self._read()[0])
        nonempty = count > 0
        return float(gap[nonempty].max()) if nonempty.any() else float("nan")

    @property
    def nll(self) -> float:
        bins, sums = self._read()
        n = bins[:, 0].sum()
        return float(sums[0] / n) if n > 0 else float("nan")

    @property
    def brier(self) -> float:
        bins, sums = self._read()
        n = bins[:, 0].sum()
        return float(sums[1] / n) if n > 0 else float("nan")

    def reliability(self):
        """Per bin: (lower edge, upper edge, count, mean confidence, accuracy) as a [M, 5] CPU tensor."""
        bins, _ = self._read()
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)
        count = bins[:, 0]
        safe = count.clamp(min=1)
        return torch.stack([edges[:-1], edges[1:], count, bins[:, 1] / safe, bins[:, 2] / safe], dim=1)

    def summary(self) -> dict:
        """ece, mce, nll, brier, accuracy, count as plain floats."""
        return {"ece": self.ece, "mce": self.mce, "nll": self.nll, "brier": self.brier,
                "accuracy": self.accuracy, "count": self.count}

    def __repr__(self):  # never raises: rows with non-finite logits are shown, not reported as an error
        bins, sums = self.bins.cpu(), self.sums.cpu()
        count, shown = int(bins[:, 0].sum()), f"n_bins={self.n_bins}, device={self.device}"
        if count:
            shown += f", count={count}, ece={_ece(bins):.4f}, accuracy={_accuracy(bins):.4f}"
        if sums[2]:
            shown += f", nonfinite={int(sums[2])}"
        return f"CalibrationStats({shown})"


def _gaps(bins):
    """(count, |accuracy - mean confidence|) per bin of an [M, 3] table (0 for an empty bin)."""
    count = bins[:, 0]
    return count, (bins[:, 2] - bins[:, 1]).abs() / count.clamp(min=1)


def _ece(bins) -> float:
    count, gap = _gaps(bins)
    total = count.sum()
    return float((count * gap).sum() / total) if total > 0 else float("nan")


def _accuracy(bins) -> float:
    return float(bins[:, 2].sum() / bins[:, 0].sum()) if bins[:, 0].sum() > 0 else float("nan")


def calibration_stats(logits: Tensor, labels: Tensor, n_bins: int = 15, ignore_index: int = -100,
                      backend: str = "auto") -> CalibrationStats:
    """A new :class:`CalibrationStats` on ``logits.device``, updated once with ``logits`` and ``labels``."""
    return CalibrationStats(n_bins, logits.device).update(logits, labels, ignore_index, backend)
