"""The choices that training and evaluation must make alike, in one place: the dtype the loaders hand images
over in, and the validation loader of a dataset root (so that tools/evaluate.py measures a checkpoint on
exactly the inputs its training run was validated on)."""
import torch

from .imagenet import ImageNetLoader
from .resident import ResidentImages, ResidentLoader

__all__ = ["loader_dtype", "validation_loader"]


def loader_dtype(device) -> torch.dtype:
    """bf16 images on a GPU (half the bytes from the decoder to the model, which runs under bf16 autocast
    there), fp32 on the CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def validation_loader(root, split, batch_size, image_size, device, classes, resident=False, seed=0, num_threads=2,
                      shard_id=0, num_shards=1):
    """The evaluation batches of ``root/split`` (every image once, in order, the last partial batch kept),
    in the order of ``classes``: the resident images (``resident``, the small-dataset path), which must be
    ``image_size`` square, else the DALI pipeline (resize to image_size / 0.875 and centre crop; class folders or
    webdataset shards)."""
    if resident:
        return ResidentLoader(ResidentImages(root, split, device, classes, image_size=image_size), batch_size, False,
                              shard_id=shard_id, num_shards=num_shards)
    return ImageNetLoader(root, split, batch_size, image_size, device, shard_id=shard_id, num_shards=num_shards,
                          classes=classes, seed=seed, num_threads=num_threads, dtype=loader_dtype(device))
