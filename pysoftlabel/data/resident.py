"""Small datasets (CIFAR-style class folders of small images) decoded once and kept resident, on the GPU
when there is one, with each batch augmented by tensor ops on that device: random crop with zero padding,
horizontal flip, optional Cutout (DeVries & Taylor 2017, arXiv:1708.04552), normalisation."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folder import check_fills_a_batch, scan_image_folder
from .imagenet import MEAN, STD

__all__ = ["ResidentImages", "ResidentLoader"]


def _decode(path):
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as error:
        raise ValueError(f"data: cannot decode {path}: {error}") from None


class ResidentImages:
    """All images of ``root/split`` as one uint8 tensor [N, 3, H, W] on ``device`` plus labels [N].

    Images must share one size; unreadable files raise ValueError naming the file. ``per_class``: keep the
    first N images of each class (see :func:`scan_image_folder`). ``image_size``: the side the caller's run
    is for (its model, its reports); ValueError when the images have another, since they are taken as they are.
    """

    def __init__(self, root, split, device="cpu", classes=None, per_class=None, image_size=None):
        self.folder = Path(root) / split
        files, labels, self.classes = scan_image_folder(root, split, classes, per_class)
        # Pillow releases the GIL while it decodes: threads make the 60,000 CIFAR-10 files a few seconds.
        with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(_decode, files))
        sizes = sorted({a.shape[:2] for a in arrays})
        if len(sizes) != 1:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (", ..." if len(sizes) > 3 else "")
            raise ValueError(f"data: images of {self.folder} differ in size ({shown}); the resident path "
                             "needs one size (use the DALI pipeline for such data)")
        height, width = arrays[0].shape[:2]
        if image_size is not None and (height, width) != (image_size, image_size):
            raise ValueError(f"data: the images of {self.folder} are {height}x{width}, and the resident path takes "
                             f"them at their own size, not at image size {image_size}: give that size, or resize "
                             "them with the DALI pipeline (not resident)")
        self.images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.tensor(labels, dtype=torch.long, device=device)

    def __len__(self):
        return len(self.labels)


class ResidentLoader:
    """Batches ``{"image": float [B, 3, H, W], "label": [B]}`` from :class:`ResidentImages`.

    Training: a fresh permutation per epoch (a torch Generator seeded by ``seed`` and the epoch, so a
    resumed run sees the same batches), random crop after ``pad`` pixels of zero padding, flip, Cutout of
    side ``cutout`` (0: none) filled with the mean colour; the last partial batch is dropped. Evaluation: in
    order, every row once. ``shard_id`` / ``num_shards`` split the rows between DDP ranks.
    """

    def __init__(self, data: ResidentImages, batch_size, training, pad=4, flip=True, cutout=0, seed=0,
                 shard_id=0, num_shards=1):
        self.data, self.batch_size, self.training = data, int(batch_size), bool(training)
        self.pad, self.flip, self.cutout = int(pad), bool(flip), int(cutout)
        self.seed, self.shard_id, self.num_shards, self.epoch = int(seed), int(shard_id), int(num_shards), 0
        if self.training:
            check_fills_a_batch(len(data), self.batch_size, self.num_shards, data.folder)
        device = data.images.device
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def _rows(self):
        n = len(self.data)
        if self.training:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return order[self.shard_id::self.num_shards]

    @property
    def classes(self) -> list:
        """The class names, in label order (as :class:`~pysoftlabel.data.imagenet.ImageNetLoader`'s)."""
        return self.data.classes

    def __len__(self):
        rows = len(range(self.shard_id, len(self.data), self.num_shards))  # this rank's share, not drawn
        return rows // self.batch_size if self.training else -(-rows // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _draw(self, g):
        """The random numbers of one training batch, from the CPU generator ``g``."""
        b, (h, w) = self.batch_size, self.data.images.shape[2:]
        draws = {}
        if self.pad:
            draws["dy"] = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
            draws["dx"] = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
        if self.flip:
            draws["flip"] = torch.rand(b, generator=g) < 0.5
        if self.cutout:
            draws["cy"] = torch.randint(0, h, (b,), generator=g)
            draws["cx"] = torch.randint(0, w, (b,), generator=g)
        return draws

    def _augment(self, images, draws):
        b, _, h, w = images.shape
        device = images.device
        if self.pad:  # random crop of the zero-padded image: per-row offsets, one gather
            padded = torch.nn.functional.pad(images, (self.pad,) * 4)
            ys = (draws["dy"][:, None] + torch.arange(h, device=device))[:, :, None]
            xs = (draws["dx"][:, None] + torch.arange(w, device=device))[:, None, :]
            batch = torch.arange(b, device=device)[:, None, None]
            images = padded[batch, :, ys, xs].permute(0, 3, 1, 2)  # [b, h, w, 3] -> [b, 3, h, w]
        if self.flip:
            images = torch.where(draws["flip"][:, None, None, None], images.flip(3), images)
        if self.cutout:  # DeVries & Taylor's square: side cutout from (cy, cx) - cutout // 2, clipped to the image
            ys = torch.arange(h, device=device)[None, :, None] - (draws["cy"] - self.cutout // 2)[:, None, None]
            xs = torch.arange(w, device=device)[None, None, :] - (draws["cx"] - self.cutout // 2)[:, None, None]
            inside = (ys >= 0) & (ys < self.cutout) & (xs >= 0) & (xs < self.cutout)
            # the mean colour, 0 once normalised: their code cuts the normalised image
            images = torch.where(inside[:, None], self.mean, images)
        return images

    def __iter__(self):
        device = self.data.images.device
        count = len(self)
        # The epoch's rows and random numbers go to the device in one copy each, drawn batch by batch in the
        # generator's order: a copy from pageable memory per batch made the host wait for the GPU at every
        # step (CIFAR-10 on the H100 trained at 0.89 of the model-only speed).
        rows = self._rows().to(device)
        draws = {}
        if self.training and count:
            # per rank: the same seed everywhere would give every rank the same crops and flips
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch + 7 + 1000003 * self.shard_id)
            per_batch = [self._draw(g) for _ in range(count)]
            draws = {key: torch.stack([d[key] for d in per_batch]).to(device) for key in per_batch[0]}
        for i in range(count):
            index = rows[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.data.images[index].float()
            if self.training:
                images = self._augment(images, {key: value[i] for key, value in draws.items()})
            yield {"image": (images - self.mean) / self.std, "label": self.data.labels[index]}
        if self.training:
            self.epoch += 1
