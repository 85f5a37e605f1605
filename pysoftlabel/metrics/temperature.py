"""Temperature scaling (Guo et al. 2017, arXiv:1706.04599): the post-hoc calibration baseline."""
import torch
from torch import Tensor

__all__ = ["fit_temperature"]


def fit_temperature(logits: Tensor, labels: Tensor, ignore_index: int = -100, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on held-out ``logits`` [N, C].

    Optimises log T with L-BFGS in float64 (a convex problem in 1 / T). Apply it as ``logits / T``; compare
    calibration before and after with :func:`pysoftlabel.calibration_stats`.
    """
    valid = labels != ignore_index
    x = logits.detach()[valid].double()
    y = labels[valid]
    if x.shape[0] == 0:
        raise ValueError("logits: no rows to fit a temperature on")
    log_t = torch.zeros((), dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())
