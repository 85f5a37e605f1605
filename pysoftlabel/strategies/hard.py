"""Hard labels (cross-entropy) and label smoothing (Szegedy et al. 2016, arXiv:1512.00567, §7)."""
from .base import Strategy, hard_target

__all__ = ["CrossEntropy", "LabelSmoothing"]


class CrossEntropy(Strategy):
    """Plain cross-entropy on the (possibly mixed) hard labels."""

    name = "ce"

    def targets(self, batch, model=None):
        self._check_batch(batch)
        return hard_target(batch)


class LabelSmoothing(Strategy):
    """Label smoothing: ``(1 - eps)`` on the label, ``eps / C`` on every class, as
    ``F.cross_entropy(label_smoothing=eps)``.

    Args:
        eps (float): smoothing. Default: 0.1 (Szegedy et al.).
    """

    name = "ls"

    def __init__(self, eps: float = 0.1):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {eps}")
        self.eps = float(eps)

    def targets(self, batch, model=None):
        self._check_batch(batch)
        return hard_target(batch, smoothing=self.eps)
