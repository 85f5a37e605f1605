"""Temperature scaling (Guo et al. 2017, arXiv:1706.04599): the post-hoc calibration baseline."""
import torch
from torch import Tensor

from .calibration import CalibrationStats
from .state import check_labels

__all__ = ["fit_temperature", "heldout_temperature_ece"]


def fit_temperature(logits: Tensor, labels: Tensor, ignore_index: int = -100, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on held-out ``logits`` [N, C].

    Optimises log T with L-BFGS in float64 (a convex problem in 1 / T). Apply it as ``logits / T``; compare
    calibration before and after with :func:`pysoftlabel.calibration_stats`.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    valid = check_labels(logits, labels, ignore_index, read_values=True)
    x = logits.detach()[valid].double()
    y = labels[valid].long()
    if x.shape[0] == 0:
        raise ValueError("logits: no rows to fit a temperature on")
    # One such row makes the NLL NaN or inf at every T: the fit would return nonsense without a word.
    bad = int((~torch.nn.functional.cross_entropy(x, y, reduction="none").isfinite()).sum())
    if bad:
        raise ValueError(f"logits: {bad} row(s) have a non-finite NLL (NaN or +inf logits, or -inf on the label); "
                         "a temperature cannot be fitted on them")
    # Masked classes (logit -inf) stay out at every T; divided as they are, their gradient is NaN (-inf / T²).
    masked = x.isneginf()
    x = x.masked_fill(masked, 0.0)
    log_t = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy((x / log_t.exp()).masked_fill(masked, float("-inf")), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def heldout_temperature_ece(logits: Tensor, labels: Tensor, folds: int = 2, n_bins: int = 15,
                            ignore_index: int = -100, seed: int = 0) -> float:
    """The ECE after temperature scaling, held out: the rows are dealt into ``folds`` parts (a permutation
    drawn from ``seed``), each part is scaled by the temperature fitted on the other parts, and the ECE is
    taken over all rows. Where one validation set serves for fitting and for measuring, this is the honest
    figure; the ECE after a temperature fitted on the very rows it is measured on is optimistic. NaN when
    there are fewer valid rows than ``2 * folds``."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    keep = (labels != ignore_index).nonzero()[:, 0]
    if keep.numel() < 2 * folds:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    order = keep[torch.randperm(keep.numel(), generator=generator).to(keep.device)]
    parts = order.tensor_split(folds)
    cal = CalibrationStats(n_bins, logits.device)
    for k, part in enumerate(parts):
        rest = torch.cat([p for j, p in enumerate(parts) if j != k])
        t = fit_temperature(logits[rest], labels[rest])
        cal.update(logits[part].float() / t, labels[part])
    return cal.ece
