"""NVIDIA DALI pipelines for ImageNet-layout data: one definition for both machines, GPU decoding and
augmentation ("mixed") where a GPU is present, CPU-only DALI (device_id=None) elsewhere."""
import torch

from .folder import scan_image_folder

__all__ = ["imagenet_pipeline", "ImageNetLoader"]

MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _dali():
    try:
        from nvidia import dali  # noqa: F401
    except ImportError as error:
        raise ImportError("pysoftlabel's data layer needs NVIDIA DALI: pip install nvidia-dali-cuda130") from error
    from nvidia.dali import fn, pipeline_def, types
    return fn, pipeline_def, types


def imagenet_pipeline(files, labels, image_size, is_training, shard_id, num_shards, gpu, seed, batch_size,
                      num_threads, device_id, min_scale=0.08):
    """The DALI pipeline. Train: random-resized crop (scale min_scale-1, ratio 3/4-4/3), horizontal flip,
    normalisation. Val: resize the shorter side to image_size / 0.875, centre crop. Output: float CHW."""
    fn, pipeline_def, types = _dali()

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=is_training, shard_id=shard_id,
                                       num_shards=num_shards, pad_last_batch=True, name="Reader", seed=seed)
        decoder = "mixed" if gpu else "cpu"
        if is_training:
            images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                                   random_area=[min_scale, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(image_size / 0.875))
            mirror = False
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(image_size, image_size), mean=MEAN, std=STD, mirror=mirror)
        return images, label

    return pipeline()


class ImageNetLoader:
    """Batches ``{"image": [N, 3, S, S] float, "label": [N] int64}`` from ``root/split``, sharded per DDP rank.

    Evaluation keeps the last partial batch (no sample dropped or repeated); training drops it. On a GPU
    machine images are decoded and augmented on the GPU and arrive there.

    Args:
        root (str): dataset root in ImageNet layout. split (str): "train" or "val".
        batch_size (int), image_size (int).
        device (torch.device): "cuda" for the GPU pipeline, "cpu" for CPU-only DALI.
        shard_id, num_shards (int): this rank's share. Default: 0, 1.
        classes (list of str, optional): class order (val uses train's).
        seed (int), num_threads (int).
        min_scale (float): smallest crop area of the training random-resized crop. Default: 0.08.
        listing (tuple, optional): (files, labels, classes) of ``scan_image_folder(root, split)``, to scan a
            large folder once rather than for every loader.
    """

    def __init__(self, root, split, batch_size, image_size, device, shard_id=0, num_shards=1, classes=None,
                 seed=0, num_threads=2, min_scale=0.08, listing=None):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.files, self.labels, self.classes = listing or scan_image_folder(root, split, classes)
        self.training = split == "train"
        gpu = torch.device(device).type == "cuda"
        self.pipe = imagenet_pipeline(self.files, self.labels, image_size, self.training, shard_id, num_shards, gpu,
                                      seed, batch_size, num_threads, torch.device(device).index or 0 if gpu else None,
                                      min_scale)
        self.pipe.build()
        policy = LastBatchPolicy.DROP if self.training else LastBatchPolicy.PARTIAL
        self.iterator = DALIGenericIterator([self.pipe], ["image", "label"], reader_name="Reader",
                                            last_batch_policy=policy, auto_reset=True)

    def __len__(self):
        return len(self.iterator)

    def __iter__(self):
        for (out,) in self.iterator:
            yield {"image": out["image"], "label": out["label"].reshape(-1).long()}
