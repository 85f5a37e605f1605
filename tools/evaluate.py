#!/usr/bin/env python3
"""Evaluate a checkpoint of tools/train_imagenet.py: the same validation metrics, the calibration report
(with temperature scaling fitted on the validation logits, reported beside) and the reliability diagram.

    python tools/evaluate.py runs/ldl/checkpoint.pt --data ROOT [--out DIR --image-size 32 --boxes BOXES]

Given boxes (--boxes, or DATA/boxes when it exists) it also reports the context-only confidence of Adaptive
Label Smoothing: the mean max-softmax on the largest box-free window of each validation image.
"""
import argparse
import json
from pathlib import Path

import torch

from pysoftlabel.data.imagenet import ImageNetLoader, context_crops
from pysoftlabel.engine import (AMP_CHOICES, autocast_dtype, context_confidence, load_checkpoint,
                                parse_device, write_calibration_report)
from pysoftlabel.models import create_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt written by tools/train_imagenet.py")
    p.add_argument("--data", required=True, help="ImageNet-layout root with val/")
    p.add_argument("--image-size", type=int, default=None, help="evaluation crop (default: the run's)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="autocast dtype, as in training (default: auto, bf16 on cuda, off on cpu)")
    p.add_argument("--out", default=None, help="output folder (default: beside the checkpoint, eval/)")
    p.add_argument("--boxes", default=None, help="PASCAL-VOC boxes root (default: DATA/boxes if present)")
    args = p.parse_args(argv)
    for name in ("image_size", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        device = parse_device(args.device)
    except ValueError as error:
        p.error(str(error))
    try:
        state = load_checkpoint(args.checkpoint, keys=("arch", "classes", "model"))
    except ValueError as error:
        p.error(str(error))
    if not Path(args.data, "val").is_dir():
        p.error(f"--data: {args.data} has no val/ folder")
    run_args = json.loads(Path(args.checkpoint).with_name("args.json").read_text()) \
        if Path(args.checkpoint).with_name("args.json").exists() else {}
    image_size = args.image_size or int(run_args.get("image_size", 224))
    amp = autocast_dtype(args.amp, device)
    val = ImageNetLoader(args.data, "val", args.batch_size, image_size, device, classes=state["classes"])
    model = create_model(state["arch"], len(state["classes"])).to(device)
    model.load_state_dict(state["model"])
    out = Path(args.out or Path(args.checkpoint).parent / "eval")
    boxes = Path(args.boxes) if args.boxes else Path(args.data, "boxes")
    extra = {}
    if boxes.is_dir():
        context = context_crops(args.data, "val", boxes, args.batch_size, image_size, device, state["classes"])
        if context is not None:
            extra = {"context_confidence": context_confidence(model, context, device, amp),
                     "context_crops": len(context.files)}
    elif args.boxes:
        p.error(f"--boxes: {args.boxes} does not exist")
    summary = write_calibration_report(model, val, device, out, amp, extra=extra)
    print(json.dumps({k: v for k, v in summary.items() if k != "bins"}))


if __name__ == "__main__":
    main()
