#!/usr/bin/env python3
"""Images per second of the DALI ImageNet training pipeline beside torchvision's ImageFolder + DataLoader
and the model-only training speed of ResNet-50 (synthetic tensors, bf16, channels-last), in one run.

    python tools/bench_loader.py --device cuda --out gpu-results/bench_loader.json
    python tools/bench_loader.py --device cpu --images 400 --workers 2        # a smoke run

The ImageNet-sized JPEGs are written by the synthetic generator (--image-side pixels) into --data unless
it already holds a dataset.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data.imagenet import MEAN, STD, ImageNetLoader


def images_per_second(loader, device, batches):
    seen, start = 0, None
    for i, batch in enumerate(loader):
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


def torchvision_loader(root, batch_size, crop, workers):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])])
    dataset = ImageFolder(str(Path(root) / "train"), tf)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), drop_last=True,
                                       persistent_workers=workers > 0)


def model_only(device, batch_size, crop, steps):
    import torchvision
    model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, crop, crop, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="/tmp/psl-bench-imagenet", help="dataset folder (written if empty)")
    p.add_argument("--images", type=int, default=6000, help="training images to write (default: 6000)")
    p.add_argument("--image-side", type=int, default=400, help="JPEG side in pixels (default: 400)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader (default: 20)")
    p.add_argument("--workers", type=int, default=16, help="torchvision DataLoader workers (default: 16)")
    p.add_argument("--threads", type=int, default=8, help="DALI threads (default: 8)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    root = Path(args.data)
    if not (root / "train").is_dir():
        per_class = max(1, args.images // 10)
        print(f"writing {10 * per_class} {args.image_side}px JPEGs to {root} ...", flush=True)
        make_synthetic_dataset(root, 10, per_class, 1, args.image_side, seed=0)
    rows = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "batch_size": args.batch_size,
            "crop": args.crop}
    dali = ImageNetLoader(root, "train", args.batch_size, args.crop, device, num_threads=args.threads)
    rows["dali_img_per_s"] = images_per_second(dali, device, args.batches)
    rows["torchvision_img_per_s"] = images_per_second(torchvision_loader(root, args.batch_size, args.crop, args.workers),
                                                      device, args.batches)
    rows["resnet50_model_only_img_per_s"] = model_only(device, args.batch_size if device.type == "cuda" else 8,
                                                       args.crop, 20 if device.type == "cuda" else 2)
    rows["dali_vs_torchvision"] = rows["dali_img_per_s"] / rows["torchvision_img_per_s"]
    rows["dali_vs_resnet50"] = rows["dali_img_per_s"] / rows["resnet50_model_only_img_per_s"]
    print(json.dumps(rows, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
