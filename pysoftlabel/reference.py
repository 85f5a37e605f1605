"""Pure-PyTorch references of every native op: the DESIGN.md formulas line by line, no fusion, no
in-place writes, float64-safe. They are the ground truth of the parity tests and the "reference"
backend (also used where the extension is not built)."""
import torch
import torch.nn.functional as F
from torch import Tensor

from .target import SoftTarget

__all__ = ["target_distribution", "soft_cross_entropy", "class_stats_update", "calibration_update"]


def _rows(weight, n, like):
    """A weight (float or Tensor[N]) as a column [N, 1] in the dtype and device of ``like``."""
    if torch.is_tensor(weight):
        return weight.to(like).reshape(n, 1)
    return torch.full((n, 1), float(weight), dtype=like.dtype, device=like.device)


def target_distribution(target: SoftTarget, num_classes: int, dtype=torch.float32) -> Tensor:
    """The N x C target of ``target`` (rows of ignored samples are zero), differentiable in the target's
    floating-point tensors."""
    labels = target.labels
    n, c = labels.shape[0], num_classes
    like = torch.empty((), dtype=dtype, device=labels.device)
    valid = labels != target.ignore_index
    y = torch.where(valid, labels, 0).long()
    has_mix = target.labels2 is not None
    y2 = torch.where(valid, target.labels2, 0).long() if has_mix else y
    lam = _rows(target.lam, n, like) if has_mix else _rows(1.0, n, like)
    s = _rows(target.smoothing, n, like)
    a = _rows(target.table_weight, n, like)
    d = _rows(target.dense_weight, n, like)

    classes = torch.arange(c, device=labels.device)
    # Comparisons, not F.one_hot, which reads its indices (and so cannot run under torch.vmap).
    h = lam * (classes == y[:, None]).to(dtype) + (1 - lam) * (classes == y2[:, None]).to(dtype)
    t = (1 - s - a - d) * h + s / c
    if target.table is not None:
        table = target.table.to(dtype)
        t = t + a * (lam * table[y] + (1 - lam) * table[y2])
    if target.dense is not None:
        dense = target.dense.to(dtype)
        D = torch.softmax(dense / target.temperature, dim=1) if target.dense_logits else dense
        t = t + d * D
    return torch.where(valid[:, None], t, torch.zeros((), dtype=dtype, device=t.device))


def soft_cross_entropy(logits: Tensor, target: SoftTarget, reduction: str = "mean") -> Tensor:
    """loss_i = -sum_c t_ic log softmax(x_i)_c, reduced like F.cross_entropy (fp32 or fp64 result)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    t = target_distribution(target, x.shape[1], x.dtype)
    valid = target.labels != target.ignore_index
    x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))  # ignored rows: no NaN
    log_p = torch.log_softmax(x, dim=1)
    # A class of target weight 0 adds 0 even where its logit is -inf (a masked class): 0 log 0 = 0. Only
    # there is log p replaced: elsewhere a zero weight keeps its gradient, -log p, for a target that needs it.
    log_p = torch.where((t == 0) & log_p.isneginf(), torch.zeros((), dtype=x.dtype, device=x.device), log_p)
    loss = -(t * log_p).sum(dim=1)
    loss = torch.where(valid, loss, torch.zeros((), dtype=x.dtype, device=x.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


def _argmax_correct(logits, labels, ignore_index):
    """The rows' softmax and its max, and which rows are valid (not ignore_index), finite (a finite log-sum-exp:
    no NaN or +inf logit, not all -inf; other rows have no softmax) and correct (finite, argmax == label)."""
    x = logits.detach().double()
    valid = labels != ignore_index
    finite = torch.isfinite(torch.logsumexp(x, dim=1))
    p = torch.softmax(x, dim=1)
    confidence, prediction = p.max(dim=1)
    correct = (prediction == labels) & valid & finite
    return x, p, confidence, correct, valid, finite


def class_stats_update(logits: Tensor, labels: Tensor, class_sum: Tensor, class_count: Tensor,
                       ignore_index: int = -100):
    """Returns (class_sum, class_count) after rows with argmax == label add their softmax to their class (rows
    with non-finite logits have no softmax and are left out)."""
    _, p, _, correct, _, _ = _argmax_correct(logits, labels, ignore_index)
    y = labels[correct].long()
    new_sum = class_sum.index_add(0, y, p[correct].to(class_sum.dtype))
    new_count = class_count.index_add(0, y, torch.ones(len(y), dtype=class_count.dtype, device=y.device))
    return new_sum, new_count


def calibration_update(logits: Tensor, labels: Tensor, bins: Tensor, sums: Tensor, ignore_index: int = -100):
    """Returns (bins, sums) after one batch: bins [M, 3] = count, confidence sum, correct count over
    confidence bins (b/M, (b+1)/M]; sums [3] = NLL sum, Brier sum, rows with non-finite logits."""
    x, p, confidence, correct, valid, finite = _argmax_correct(logits, labels, ignore_index)
    use = valid & finite
    m = bins.shape[0]
    b = (torch.ceil(confidence * m).long() - 1).clamp(0, m - 1)
    y = torch.where(valid, labels, 0).long()
    counts = torch.zeros_like(bins)
    counts[:, 0].index_add_(0, b[use], torch.ones_like(confidence[use]))
    counts[:, 1].index_add_(0, b[use], confidence[use])
    counts[:, 2].index_add_(0, b[use], correct[use].double())
    nll = -torch.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    brier = ((p - F.one_hot(y, x.shape[1]).double()) ** 2).sum(dim=1)
    delta = torch.stack([nll[use].sum(), brier[use].sum(), (valid & ~finite).sum().double()])
    return bins + counts, sums + delta
