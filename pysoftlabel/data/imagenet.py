"""NVIDIA DALI pipelines for ImageNet-layout folders and webdataset shards: one definition for both machines,
GPU decoding and augmentation ("mixed") where a GPU is present, CPU-only DALI (device_id=None) elsewhere.
Training crops come with their windows, from which the object fraction of ALS is computed on the host."""
import contextlib
from pathlib import Path

import numpy as np
import torch

from .boxes import context_window, load_boxes, object_fraction
from .folder import check_fills_a_batch, drop_unreadable, scan_image_folder, unreadable_images
from .webdataset import ShardListing, class_names, find_shards, parse_class_text, scan_webdataset, source_key

__all__ = ["imagenet_pipeline", "ImageNetLoader", "context_crops"]

MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _dali():
    try:
        from nvidia import dali  # noqa: F401
    except ImportError as error:
        raise ImportError("pysoftlabel's data layer needs NVIDIA DALI (Linux): pip install nvidia-dali-cuda130; "
                          "without it, small same-size images (CIFAR-style) train and evaluate from memory "
                          "(ResidentLoader, --resident)") from error
    from nvidia.dali import fn, pipeline_def, types
    return fn, pipeline_def, types


def imagenet_pipeline(files, image_size, is_training, shard_id, num_shards, gpu, seed, batch_size, num_threads,
                      device_id, min_scale=0.08, half=False, windows=None, shard_indexes=None, source_length=None):
    """The DALI pipeline over image ``files`` (the second output is the file's index in the listing) or, with
    ``shard_indexes`` (DALI's index of each, :class:`~pysoftlabel.data.webdataset.ShardListing`), over
    webdataset tar shards (the second output is the ``.cls`` text, zero-padded).

    Train: files in a new order of the whole listing each epoch (by ``seed``), shards' samples shuffled in
    DALI's buffer; random-resized crop (area min_scale-1, ratio 3/4-4/3, decoded region only), horizontal flip,
    normalisation; also outputs the crop window (anchor, shape) and the image's shape for the object
    fraction, and with ``source_length`` each sample's ``source_info`` (``SHARD:OFFSET:MEMBER`` for shards)
    zero-padded to that length, by which the loader finds a shard sample's boxes. Val: resize the shorter
    side to image_size / 0.875, centre crop. ``windows``: decode exactly that region (fractions x0, y0, x1,
    y1) and resize it to the square (context crops); for files 4 lists of the fractions, one value per file,
    for shards a function from a sample's ``source_info`` to its window (run in Python, so the pipeline
    then runs unpipelined). Output HWC (channels-last), float16 when ``half`` else float32."""
    fn, pipeline_def, types = _dali()
    by_source = windows is not None and shard_indexes is not None
    unpipelined = dict(exec_async=False, exec_pipelined=False) if by_source else {}  # as python_function needs

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed, **unpipelined)
    def pipeline():
        common = dict(shard_id=shard_id, num_shards=num_shards, pad_last_batch=True, name="Reader", seed=seed)
        if shard_indexes is not None:
            # A container's samples are read in their stored order: shuffled within a buffer of them.
            jpegs, index = fn.readers.webdataset(paths=files, index_paths=shard_indexes, ext=["jpg;jpeg;png", "cls"],
                                                 case_sensitive_extensions=False, missing_component_behavior="error",
                                                 random_shuffle=is_training, **common)
            index = fn.pad(index, axes=[0], shape=[12], fill_value=0)
        else:
            # Files in a new order of the whole listing each epoch, by the seed, the same on every shard (which
            # reads its own block of it). random_shuffle would draw from a buffer of the next 1024 files of one
            # fixed order, the same for every seed and epoch: on ImageNet nearly the same batches every epoch.
            shuffle = dict(shuffle_after_epoch=True, shuffle_after_epoch_seed=seed) if is_training else {}
            jpegs, index = fn.readers.file(files=files, labels=list(range(len(files))), **shuffle, **common)
        decoder = "mixed" if gpu else "cpu"
        extra = ()
        if is_training:
            shape = fn.peek_image_shape(jpegs)
            anchor, crop = fn.random_crop_generator(shape, random_area=[min_scale, 1.0],
                                                    random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.decoders.image_slice(jpegs, anchor, crop, axes=[0, 1], device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            mirror = fn.random.coin_flip(probability=0.5)
            extra = (anchor, crop, shape)
            if source_length:
                extra += (fn.pad(fn.get_property(jpegs, key="source_info"), axes=[0], shape=[source_length]),)
        elif windows is not None:
            if by_source:
                window = fn.python_function(fn.get_property(jpegs, key="source_info"), function=windows,
                                            batch_processing=False)
                x0, y0, x1, y1 = (window[i] for i in range(4))
            else:
                x0, y0, x1, y1 = (fn.lookup_table(index, keys=list(range(len(files))), values=v, dtype=types.FLOAT)
                                  for v in windows)
            images = fn.decoders.image_slice(jpegs, fn.stack(y0, x0), fn.stack(y1 - y0, x1 - x0), axes=[0, 1],
                                             device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size)
            mirror = False
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(image_size / 0.875))
            mirror = False
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT16 if half else types.FLOAT, output_layout="HWC",
                                          crop=(image_size, image_size), mean=MEAN, std=STD, mirror=mirror)
        outputs = (images, index, *extra)
        # DALI's dynamic executor hands the CPU outputs of a GPU pipeline over as pinned host memory
        # (DLPack kDLCUDAHost), which torch.from_dlpack rejects ("Unsupported device_type: 3", DALI 2.4 with
        # PyTorch 2.11 on an H100): the index and the crop window travel to the GPU inside the pipeline.
        return tuple(output.gpu() for output in outputs) if gpu else outputs

    return pipeline()


class ImageNetLoader:
    """Batches ``{"image": [N, 3, S, S], "label": [N] int64, "index": [N]}`` (index: the file's position in
    ``files``) from ``root/split`` (class folders, or webdataset shards ``*.tar``: then no index), sharded
    per DDP rank; with ``boxes`` also ``"object_fraction"`` [N] (training: the fraction of each random crop
    covered by the boxes of its label, -1 without such a box; see :mod:`pysoftlabel.data.boxes`).

    Evaluation images are torchvision's ``Resize(image_size / 0.875)`` + ``CenterCrop`` + ``ToTensor`` +
    ``Normalize`` (ImageNet mean and std; at some odd margins the crop starts one pixel off torchvision's),
    so that pretrained weights and published evaluations carry over (tests/test_imagenet_loader.py).

    ``files`` are the image files, or the shards; ``samples`` counts the images to read.
    Images arrive channels-last (an NCHW view of NHWC memory) in ``dtype``. Evaluation keeps the last
    partial batch (no sample dropped or repeated); training drops it, and reads the files in a new order of
    the whole listing each epoch, a function of ``seed`` (each DDP rank its block of one order), or
    webdataset shards in a seeded order. Unreadable images (empty, truncated, not an image; files, or a
    shard's members) are skipped and listed in ``skipped``, as ``(file, reason)`` or ``("SHARD: MEMBER",
    reason)``; one that DALI still cannot decode stops the run with DALI's message.
    On a GPU machine images are decoded and augmented on the GPU.

    Args:
        root (str): dataset root in ImageNet layout. split (str): "train" or "val".
        batch_size (int), image_size (int).
        device (torch.device): "cuda" for the GPU pipeline, "cpu" for CPU-only DALI.
        shard_id, num_shards (int): this rank's share. Default: 0, 1.
        classes (list of str, optional): class order (val uses train's).
        seed (int), num_threads (int).
        min_scale (float): smallest crop area of the training random-resized crop. Default: 0.08.
        listing (tuple or ShardListing, optional): (files, labels, classes) of ``scan_image_folder(root,
            split)``, to scan a large folder once rather than for every loader; or the samples of shards to
            read (:func:`~pysoftlabel.data.webdataset.scan_webdataset`, or a selection of its).
        dtype (torch.dtype): float32, float16 or bfloat16. Default: float32.
        boxes (ImageBoxes, optional): the listing's boxes (:func:`~pysoftlabel.data.boxes.load_boxes`), a row
            per file, or per sample of the shards' listing (found by key, ImageNet's file stems).
        windows (Tensor[N, 4], optional): decode only these windows (fractions x0, y0, x1, y1) of the
            listing's images (rows as for ``boxes``), resized to the square: the context-only crops of ALS.
        check_files (bool): skip unreadable files (:func:`~pysoftlabel.data.folder.unreadable_image`);
            False when the listing was checked already. Default: True.
    """

    def __init__(self, root, split, batch_size, image_size, device, shard_id=0, num_shards=1, classes=None,
                 seed=0, num_threads=2, min_scale=0.08, listing=None, dtype=torch.float32, boxes=None, windows=None,
                 check_files=True):
        _dali()  # the message of a missing DALI, before its plugin's import fails without one
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.training, self.dtype, self.device = split == "train", dtype, torch.device(device)
        shards = find_shards(Path(root) / split) if listing is None else []
        self.webdataset, self.skipped = bool(shards) or isinstance(listing, ShardListing), []
        source_length, shard_indexes = None, None
        if self.webdataset:
            listing = listing or scan_webdataset(shards)
            for name, rows in (("boxes", None if boxes is None else boxes.boxes), ("windows", windows)):
                if rows is not None and len(rows) != listing.samples:
                    raise ValueError(f"{name}: {len(rows)} rows for the {listing.samples} samples of the shards")
            if boxes is not None and self.training:  # each sample's source names it, and so its boxes' row
                source_length = max(len(shard.encode()) for shard in listing.shards) + listing.keys.itemsize + 64
            pipeline_windows = None if windows is None else _window_by_source(listing, windows)
            self.listing, self.skipped, size = listing, list(listing.skipped), listing.samples
            self.classes = list(classes or class_names(root) or [str(c) for c in range(listing.num_classes)])
            if listing.num_classes > len(self.classes):
                raise ValueError(f"data: {root}/{split} has class index {listing.num_classes - 1}, the training set "
                                 f"{len(self.classes)} classes")
            # a new order of the shards each training epoch (seeded), on top of the reader's buffer shuffle
            order = np.random.default_rng(seed).permutation(len(listing.shards)) if self.training \
                else range(len(listing.shards))
            self.files = [listing.shards[i] for i in order]
            shard_indexes = [listing.indexes[i] for i in order]
        else:
            files, labels, self.classes = listing or scan_image_folder(root, split, classes)
            self.files, labels, self.skipped = drop_unreadable(files, labels) if check_files else (files, labels, [])
            if boxes is not None and self.skipped:
                skipped = {f for f, _ in self.skipped}  # once, not once per file
                boxes = boxes.select([f not in skipped for f in files])
            if not self.files:
                raise ValueError(f"data: none of the {len(files)} images of {root}/{split} can be read")
            self.labels = torch.tensor(labels, dtype=torch.long, device=self.device)
            size = len(self.files)
            pipeline_windows = None if windows is None else windows.t().tolist()  # looked up by file index
        self.samples = size
        if self.training:
            check_fills_a_batch(size, batch_size, num_shards, Path(root) / split)
        self.boxes = boxes
        gpu = self.device.type == "cuda"
        self.pipe = imagenet_pipeline(self.files, image_size, self.training, shard_id, num_shards, gpu, seed,
                                      batch_size, num_threads, self.device.index or 0 if gpu else None, min_scale,
                                      half=dtype != torch.float32,
                                      windows=pipeline_windows, shard_indexes=shard_indexes,
                                      source_length=source_length)
        self.pipe.build()
        policy = LastBatchPolicy.DROP if self.training else LastBatchPolicy.PARTIAL
        self.outputs = ["image", "index", "anchor", "crop", "shape"] if self.training else ["image", "index"]
        self.outputs += ["source"] if source_length else []
        with self._read_errors():  # the iterator reads its first batch already
            self.iterator = DALIGenericIterator([self.pipe], self.outputs, reader_name="Reader",
                                                last_batch_policy=policy, auto_reset=True)

    def __len__(self):
        return len(self.iterator)

    def __iter__(self):
        with self._read_errors():
            for (out,) in self.iterator:
                yield self._batch(out)

    @contextlib.contextmanager
    def _read_errors(self):
        """DALI's failure to read or decode a file (of a listing checked before the file changed, or not
        checked) as a ValueError saying what DALI encountered rather than DALI's traceback of the pipeline's
        definition; DALI's decoders do not name the file, so the listing's unreadable files are named too."""
        try:
            yield
        except RuntimeError as error:
            lines = [line.strip() for line in str(error).splitlines()]
            if "Critical error in pipeline:" not in lines:
                raise
            after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines
            message = (f"data: DALI could not read a file of {len(self.files)} in this listing"
                       f"{f' ({self.samples} samples)' if self.webdataset else ''}: "
                       f"{next(line for line in after if line)[:500]}")
            if not self.webdataset:
                bad = unreadable_images(self.files)
                if bad:
                    message += f"; {len(bad)} of its files are unreadable now, e.g. {bad[0][0]} {bad[0][1]}"
            raise ValueError(message) from None

    def _batch(self, out):
        image = out["image"].permute(0, 3, 1, 2)  # NHWC memory: channels-last NCHW
        batch = {"image": image.to(self.dtype) if image.dtype != self.dtype else image}
        if self.webdataset:
            batch["label"] = parse_class_text(out["index"]).to(self.device)
            if "source" not in out:
                return batch
            rows = torch.from_numpy(self.listing.rows_of([source_key(s) for s in out["source"].cpu().numpy()]))
        else:
            index = out["index"].reshape(-1).long().to(self.device)
            batch.update(label=self.labels[index], index=index)
            rows = index.cpu()
        if self.training and self.boxes is not None:
            anchor, crop, shape = (out[k].float().cpu() for k in ("anchor", "crop", "shape"))
            height, width = shape[:, 0:1], shape[:, 1:2]
            windows = torch.cat([anchor[:, 1:2] / width, anchor[:, 0:1] / height,
                                 (anchor[:, 1:2] + crop[:, 1:2]) / width, (anchor[:, 0:1] + crop[:, 0:1]) / height],
                                dim=1)
            batch["object_fraction"] = object_fraction(self.boxes.boxes[rows], self.boxes.own[rows],
                                                       windows).to(image.device)
        return batch


def _window_by_source(listing, windows):
    """The function from a shard sample's ``source_info`` to its row of ``windows`` [N, 4], a row per sample
    of ``listing`` (found by the sample's key), for the pipeline's ``python_function``."""
    rows = windows.float().numpy()
    return lambda source: rows[listing.rows_of([source_key(source)])[0]]


def context_crops(root, split, boxes_root, batch_size, image_size, device, classes, min_area=0.1, **kwargs):
    """The context-only crops of ``root/split`` for the ALS evaluation: of each image with boxes, the largest
    window that overlaps no box of any object (:func:`~pysoftlabel.data.boxes.context_window`), when it
    covers at least ``min_area`` of the image. Returns an :class:`ImageNetLoader` of those crops (labels are
    the images' classes, unused by the metric), or None when no image has such a window. The images of
    shards are found by their keys (ImageNet's file stems)."""
    shards = find_shards(Path(root) / split)
    if shards:
        samples = scan_webdataset(shards)
        files, labels = [key.decode() for key in samples.keys], samples.labels.tolist()
    else:
        files, labels, classes = scan_image_folder(root, split, classes)
        files, labels, _ = drop_unreadable(files, labels)
    boxes = load_boxes(boxes_root, files, labels, classes)
    rows, windows = [], []
    for i in range(len(files)):
        window = context_window(boxes.boxes[i][boxes.valid[i]].numpy(), min_area) if boxes.valid[i].any() else None
        if window is not None:
            rows.append(i)
            windows.append(window)
    if not rows:
        return None
    listing = samples.select(rows) if shards else ([files[i] for i in rows], [labels[i] for i in rows], classes)
    return ImageNetLoader(root, split, batch_size, image_size, device, classes=classes, listing=listing,
                          windows=torch.tensor(windows), check_files=False, **kwargs)
