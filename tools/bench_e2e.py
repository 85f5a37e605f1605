#!/usr/bin/env python3
r"""End-to-end training speed: tools/train_imagenet.py with each strategy against the model-only training step
(synthetic tensors already on the device; same model, batch, AMP dtype and channels-last), in one run.

    # GPU (tools/gpu_check.sh stage e2e): ResNet-50 on ImageNet-sized JPEGs written here
    python tools/bench_e2e.py --device cuda --arch resnet50 --image-size 224 --batch-size 256 --jpeg-side 400
    # CIFAR-10 resident path
    python tools/bench_e2e.py --device cuda --data /tmp/cifar10 --resident --val-split test --arch cifar_resnet18 \
        --image-size 32 --batch-size 512
    # this CPU
    python tools/bench_e2e.py --device cpu --data .data/cifar10 --resident --val-split test --arch resnet20 \
        --image-size 32 --batch-size 128 --train-per-class 500 --repeats 3

Reports images per second of the training loop (data, augmentation, forward, fused loss, backward, step; not
evaluation), the median over the epochs of each run after the first (which holds the warm-up), its ratio to
the model-only step and to `ce`. With --repeats K the whole list (and the model-only step) is measured K
times, interleaved, and the median is reported with the range: on a shared CPU one measurement moves by ±15%.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.cli import train as train_cli
from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.engine import AMP_CHOICES, autocast_dtype
from pysoftlabel.jsontext import json_text
from pysoftlabel.models import create_model


def model_only(arch, num_classes, batch_size, image_size, device, steps, amp="auto"):
    """Images per second of forward + cross-entropy + backward + SGD step on one resident synthetic batch, under
    the autocast of the ``--amp`` choice ``amp`` (as tools/train_imagenet.py; fp16 without loss scaling)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as tools/train_imagenet.py
    model = create_model(arch, num_classes, image_size).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    dtype = autocast_dtype(amp, device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(max(3, steps // 5)):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="dataset root (default: synthetic JPEGs of --jpeg-side px)")
    p.add_argument("--jpeg-side", type=int, default=400, help="side of the synthetic JPEGs (default: 400)")
    p.add_argument("--images", type=int, default=12800, help="synthetic training images (default: 12800)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per run; the median over all but the first is taken (default: 3)")
    p.add_argument("--strategies", nargs="+", default=["ce", "ls", "ols", "ldl", "online-ldl", "kd"])
    p.add_argument("--steps", type=int, default=50, help="model-only timed steps (default: 50)")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES, help="autocast of both sides (default: auto)")
    p.add_argument("--repeats", type=int, default=1, help="measure everything this many times (default: 1)")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args, train_args = p.parse_known_args(argv)  # the rest goes to train_imagenet.py (--resident, --threads, ...)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    data = args.data
    if data is None:
        data = work / "data"
        print(f"writing {args.images} {args.jpeg_side}px JPEGs to {data} ...", flush=True)
        make_synthetic_dataset(data, 10, args.images // 10, 2, args.jpeg_side, seed=0, workers=os.cpu_count())
    common = ["--data", str(data), "--arch", args.arch, "--image-size", str(args.image_size), "--batch-size",
              str(args.batch_size), "--epochs", str(args.epochs), "--warmup-epochs", "0", "--device", args.device,
              "--amp", args.amp, *train_args]
    header = (f"{args.arch}, batch {args.batch_size}, {args.image_size}px, {device}, amp {args.amp}, "
              f"extra {' '.join(train_args)}, median of {args.repeats}")
    rows, reference = {}, []

    def write(complete):
        """Written after every run: a benchmark cut short by a lease's time limit keeps what it measured."""
        if args.out:
            write_text_atomically(args.out, json_text(
                {"setup": header, "complete": complete, "model_only": reference, "train_imagenet": rows,
                 "median": {s: statistics.median(v) for s, v in rows.items()}}, indent=1))

    for repeat in range(args.repeats):
        for strategy in ["ce"] + [s for s in args.strategies if s != "ce"]:
            out = work / f"{strategy}-{repeat}"
            extra = ["--teacher", str(work / "ce-0" / "checkpoint.pt")] if strategy in ("ldl", "kd") else []
            train_cli.main(common + ["--strategy", strategy, "--out", str(out), *extra])
            epochs = [json.loads(line)["img_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
            rows.setdefault(strategy, []).append(statistics.median(epochs[1:] or epochs))
            print(f"bench_e2e: {strategy}, repeat {repeat + 1}: {rows[strategy][-1]:.0f} img/s", flush=True)
            if strategy == "ce":  # the model-only step beside each repeat's ce: the ratio survives a cut-short run
                num_classes = len(torch.load(out / "checkpoint.pt", weights_only=True)["classes"])
                reference.append(model_only(args.arch, num_classes, args.batch_size, args.image_size, device,
                                            args.steps, args.amp))
                print(f"bench_e2e: model only, repeat {repeat + 1}: {reference[-1]:.0f} img/s", flush=True)
            write(complete=False)
    write(complete=True)
    median = {s: statistics.median(v) for s, v in rows.items()}
    ref = statistics.median(reference)

    def spread(values):
        return f" ({min(values):.0f}–{max(values):.0f})" if len(values) > 1 else ""

    lines = ["| run | img/s | / model-only | / ce |", "| --- | --- | --- | --- |",
             f"| model only (synthetic tensors) | {ref:.0f}{spread(reference)} | 1.00 | |"]
    lines += [f"| train_imagenet.py --strategy {s} | {median[s]:.0f}{spread(v)} | {median[s] / ref:.2f} | "
              f"{median[s] / median['ce']:.3f} |" for s, v in rows.items()]
    print("\n" + header + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
