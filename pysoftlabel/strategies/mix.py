"""Mixing augmentations that compose with every strategy: they mix the images of a batch and record the
partner labels (``label2``) and the weight of the first label (``lam``) for the target.

Mixup: Zhang et al. 2018, arXiv:1710.09412. CutMix: Yun et al. 2019, arXiv:1905.04899. RICAP: Takahashi
et al. 2018, arXiv:1811.09030. One lam per batch, partners by a random permutation; randomness from a numpy
Generator and a torch Generator seeded by ``seed`` (no global state), so a resumed run can restore them
from ``state_dict()``. A batch's ``object_fraction`` (ALS) travels with the labels: the partners' as
``object_fraction2``.
"""
import numpy as np
import torch

__all__ = ["Mixup", "CutMix", "RICAP", "mixed_loss"]


def mixed_loss(strategy, logits, batch, model=None, calib=None):
    """``strategy.loss`` of a batch, mixed or not. A RICAP batch has four labels; the target of every strategy
    is linear in the hard labels, so its loss is the weighted sum of the losses of two two-label batches
    (two fused passes: training calibration is gathered against the first label, in the first pass; class
    statistics in both, against each pair's first label; a teacher's forward in one).
    A strategy whose target ignores the labels (``label_free``, LDL) needs one pass."""
    if "ricap" not in batch:
        return strategy.loss(logits, batch, model, calib=calib)
    weight, second = batch["ricap"]
    first = {k: v for k, v in batch.items() if k != "ricap"}
    if strategy.label_free:
        return strategy.loss(logits, first, model, calib=calib)
    with strategy.reusing_forwards():  # a teacher's or an average's forward of the images runs once
        return (weight * strategy.loss(logits, first, model, calib=calib)
                + (1.0 - weight) * strategy.loss(logits, {**first, **second}, model))


class _Mix:
    def __init__(self, alpha: float, seed: int):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _partners(self, n, device):
        """A random permutation of n rows on ``device``. Drawn on the CPU (one generator on every device, in the
        checkpoint) and copied from pinned memory asynchronously: a copy from pageable memory would make the
        host wait for the GPU at every step."""
        perm = torch.randperm(n, generator=self.generator)
        return perm.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else perm

    @staticmethod
    def _partner_fractions(batch, first, second):
        """ALS's object fractions of the images whose labels are ``label`` / ``label2`` (rows ``first`` /
        ``second`` of the batch; None: the sample itself); nothing for a batch without them."""
        fraction = batch.get("object_fraction")
        if fraction is None:
            return {}
        return {"object_fraction": fraction if first is None else fraction[first], "object_fraction2": fraction[second]}

    def _images_and_labels(self, batch):
        images, labels = batch.get("image"), batch.get("label")
        if not torch.is_tensor(images) or images.dim() != 4 or not torch.is_tensor(labels) \
                or labels.shape != images.shape[:1]:
            got = ", ".join(f"{k}: {tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}"
                            for k, v in batch.items())
            raise ValueError(f"{type(self).__name__}: the batch needs 'image' [N, C, H, W] and 'label' [N] "
                             f"tensors, got {got}")
        return images, labels

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])


class Mixup(_Mix):
    """image = lam * image + (1 - lam) * image[perm], lam ~ Beta(alpha, alpha).

    Args:
        alpha (float): Default: 1.0 (timm's mixup_alpha default is 0.8; the LDL paper uses 1.0).
        seed (int): Default: 0.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0):
        super().__init__(alpha, seed)

    def __call__(self, batch):
        images, labels = self._images_and_labels(batch)
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = self._partners(len(labels), labels.device)
        mixed = images * lam + images[perm] * (1.0 - lam)
        return {**batch, "image": mixed, "label2": labels[perm], "lam": lam,
                **self._partner_fractions(batch, None, perm)}


class CutMix(_Mix):
    """A box of area (1 - lam) of the image, lam ~ Beta(alpha, alpha), is pasted from the partner; lam is
    then set to the exact fraction of the image left unchanged.

    Args:
        alpha (float): Default: 1.0 (the paper).
        seed (int): Default: 0.
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0):
        super().__init__(alpha, seed)

    def box(self, height: int, width: int, lam: float):
        """(top, bottom, left, right) of a box of area about (1 - lam) * H * W at a uniform centre."""
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
        return (int(np.clip(cy - ch // 2, 0, height)), int(np.clip(cy + ch // 2, 0, height)),
                int(np.clip(cx - cw // 2, 0, width)), int(np.clip(cx + cw // 2, 0, width)))

    def __call__(self, batch):
        images, labels = self._images_and_labels(batch)
        height, width = images.shape[-2:]
        top, bottom, left, right = self.box(height, width, float(self.rng.beta(self.alpha, self.alpha)))
        perm = self._partners(len(labels), labels.device)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return {**batch, "image": mixed, "label2": labels[perm], "lam": lam,
                **self._partner_fractions(batch, None, perm)}


class RICAP(_Mix):
    """Random image cropping and patching: a boundary point (w, h) with w / W, h / H ~ Beta(beta, beta) splits
    the output into four patches, each a random crop of a different image (the first the sample itself,
    the others random partners); each label weighs its patch's area.

    The batch carries the first two patches as ``label`` / ``label2`` / ``lam`` and the other two, with
    their total weight, under ``ricap``; see :func:`mixed_loss`.

    Args:
        beta (float): Default: 0.3 (the paper).
        seed (int): Default: 0.
    """

    def __init__(self, beta: float = 0.3, seed: int = 0):
        super().__init__(beta, seed)

    def __call__(self, batch):
        images, labels = self._images_and_labels(batch)
        n, (height, width) = len(labels), images.shape[-2:]
        w = int(round(width * self.rng.beta(self.alpha, self.alpha)))
        h = int(round(height * self.rng.beta(self.alpha, self.alpha)))
        out = torch.empty_like(images)
        parts, perms = [], []
        for k, (top, left, ph, pw) in enumerate(((0, 0, h, w), (0, w, h, width - w), (h, 0, height - h, w),
                                                 (h, w, height - h, width - w))):
            perm = torch.arange(n, device=labels.device) if k == 0 else self._partners(n, labels.device)
            y, x = int(self.rng.integers(height - ph + 1)), int(self.rng.integers(width - pw + 1))
            out[..., top:top + ph, left:left + pw] = images[perm][..., y:y + ph, x:x + pw]
            parts.append((labels[perm], ph * pw / (height * width)))
            perms.append(None if k == 0 else perm)
        (y1, w1), (y2, w2), (y3, w3), (y4, w4) = parts
        first = w1 + w2
        second = {"label": y3, "label2": y4, "lam": w3 / (w3 + w4) if w3 + w4 > 0 else 1.0,
                  **self._partner_fractions(batch, perms[2], perms[3])}
        return {**batch, "image": out, "label2": y2, "lam": w1 / first if first > 0 else 1.0,
                **self._partner_fractions(batch, None, perms[1]), "ricap": (first, second)}
