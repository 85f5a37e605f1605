"""Mixing augmentations that compose with every strategy: they mix the images of a batch and record the
partner labels (``label2``) and the weight of the first label (``lam``) for the target.

Mixup: Zhang et al. 2018, arXiv:1710.09412. CutMix: Yun et al. 2019, arXiv:1905.04899. One lam per
batch, partners by a random permutation; randomness from a numpy Generator and a torch Generator seeded
by ``seed`` (no global state), so a resumed run can restore them from ``state_dict()``.
"""
import numpy as np
import torch

__all__ = ["Mixup", "CutMix"]


class _Mix:
    def __init__(self, alpha: float, seed: int):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _partners(self, n):
        return torch.randperm(n, generator=self.generator)

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
        images, labels = batch["image"], batch["label"]
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = self._partners(len(labels)).to(labels.device)
        mixed = images * lam + images[perm] * (1.0 - lam)
        return {**batch, "image": mixed, "label2": labels[perm], "lam": lam}


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
        images, labels = batch["image"], batch["label"]
        height, width = images.shape[-2:]
        top, bottom, left, right = self.box(height, width, float(self.rng.beta(self.alpha, self.alpha)))
        perm = self._partners(len(labels)).to(labels.device)
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return {**batch, "image": mixed, "label2": labels[perm], "lam": lam}
