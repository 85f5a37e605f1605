#!/usr/bin/env python3
"""Images per second of the DALI ImageNet training pipeline beside torchvision's ImageFolder + DataLoader
and the model-only training speed of ResNet-50 (synthetic tensors, bf16, channels-last), in one run; with
--small (CIFAR-style class folders) also the resident small-dataset path beside ImageFolder + DataLoader
(random crop with 4-pixel padding, flip) and the model-only speed of a CIFAR-stem ResNet-18.

    python tools/bench_loader.py --device cuda --small /tmp/cifar10 --out gpu-results/bench_loader.json
    python tools/bench_loader.py --device cpu --images 400 --workers 2 --batches 16 --batch-size 32  # smoke

The ImageNet-sized JPEGs are written by the synthetic generator (--image-side pixels) into --data unless
it already holds a dataset.
"""
import argparse
import os
import time
from pathlib import Path

import torch
from bench_e2e import model_only

from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data.imagenet import MEAN, STD, ImageNetLoader
from pysoftlabel.data.resident import ResidentImages, ResidentLoader
from pysoftlabel.jsontext import json_text


def images_per_second(loader, device, batches):
    """Images per second over ``batches`` batches after three of warm-up, starting further epochs as needed.
    The timed batches must far outnumber what the loader prefetches (a DataLoader holds workers x 2 batches
    ready), or its queue is what gets timed: that made torchvision look 2-3x faster on the H100 (2026-11-23)."""
    def epochs():
        while True:
            yield from loader

    seen, start = 0, None
    for i, batch in enumerate(epochs()):
        image = batch["image"] if isinstance(batch, dict) else batch[0].to(device, non_blocking=True)
        if i == 2:  # after warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            seen, start = 0, time.perf_counter()
        elif i > 2:
            seen += image.shape[0]
        if i >= batches + 2:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start) if start and seen else float("nan")


def torchvision_loader(root, batch_size, crop, workers, small=False):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.RandomCrop(crop, padding=4) if small else T.RandomResizedCrop(crop), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])])
    dataset = ImageFolder(str(Path(root) / "train"), tf)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), drop_last=True,
                                       persistent_workers=workers > 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="/tmp/psl-bench-imagenet", help="dataset folder (written if empty)")
    p.add_argument("--images", type=int, default=6000, help="training images to write (default: 6000)")
    p.add_argument("--image-side", type=int, default=400, help="JPEG side in pixels (default: 400)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batches", type=int, default=200,
                   help="timed batches per loader, at least 8 x --workers (default: 200)")
    p.add_argument("--workers", type=int, default=16, help="torchvision DataLoader workers (default: 16)")
    p.add_argument("--threads", type=int, default=8, help="DALI threads (default: 8)")
    p.add_argument("--small", default=None, help="CIFAR-style dataset root for the resident path (optional)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.batches < 8 * args.workers:  # 4x the DataLoader's prefetch (workers x prefetch_factor 2)
        p.error(f"--batches {args.batches} is less than 8 x --workers ({8 * args.workers}): the timing would be "
                "of the DataLoader's prefetched queue")
    device = torch.device(args.device)
    root = Path(args.data)
    if not (root / "train").is_dir():
        per_class = max(1, args.images // 10)
        print(f"writing {10 * per_class} {args.image_side}px JPEGs to {root} ...", flush=True)
        make_synthetic_dataset(root, 10, per_class, 1, args.image_side, seed=0, workers=os.cpu_count())
    rows = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "batch_size": args.batch_size,
            "crop": args.crop}

    def record(key, value):
        """Each figure is printed and written as soon as it is measured: a run cut short by a lease's time
        limit still gives the figures it had."""
        rows[key] = value
        print(f"{key}: {value:.4g}", flush=True)
        if args.out:
            write_text_atomically(args.out, json_text(rows, indent=1))

    dali = ImageNetLoader(root, "train", args.batch_size, args.crop, device, num_threads=args.threads)
    record("dali_img_per_s", images_per_second(dali, device, args.batches))
    record("torchvision_img_per_s", images_per_second(
        torchvision_loader(root, args.batch_size, args.crop, args.workers), device, args.batches))
    record("dali_vs_torchvision", rows["dali_img_per_s"] / rows["torchvision_img_per_s"])
    steps = 20 if device.type == "cuda" else 2
    batch = args.batch_size if device.type == "cuda" else 8
    record("resnet50_model_only_img_per_s", model_only("resnet50", 1000, batch, args.crop, device, steps))
    record("dali_vs_resnet50", rows["dali_img_per_s"] / rows["resnet50_model_only_img_per_s"])
    if args.small:
        small = ResidentLoader(ResidentImages(args.small, "train", device), args.batch_size, True)
        record("resident_img_per_s", images_per_second(small, device, args.batches))
        record("torchvision_small_img_per_s", images_per_second(
            torchvision_loader(args.small, args.batch_size, 32, args.workers, small=True), device, args.batches))
        record("resident_vs_torchvision", rows["resident_img_per_s"] / rows["torchvision_small_img_per_s"])
        record("cifar_resnet18_model_only_img_per_s",
               model_only("cifar_resnet18", 10, args.batch_size, 32, device, steps))
        record("resident_vs_cifar_resnet18", rows["resident_img_per_s"] / rows["cifar_resnet18_model_only_img_per_s"])
    print(json_text(rows, indent=1))


if __name__ == "__main__":
    main()
