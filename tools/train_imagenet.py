#!/usr/bin/env python3
"""Train an image classifier with a soft-label strategy and report its calibration.

    python tools/train_imagenet.py --strategy ldl                 # built-in synthetic data, teacher included
    python tools/train_imagenet.py --strategy ols --data ROOT --arch resnet50 --image-size 224 --epochs 90

With no --data the built-in synthetic dataset is written once (to --data-cache) and used. For ldl and kd
without --teacher, a teacher is first trained with ce on the same recipe (OUT/teacher), then the student.
Each epoch appends one JSON object to OUT/metrics.jsonl and writes OUT/checkpoint.pt atomically; --resume
continues from it exactly (model, optimiser, scheduler, strategy state, augmentation and RNG states); SIGTERM
or Ctrl-C writes it after the running step, inside an epoch if need be, and exits. At the
end: OUT/report.md (with ECE after temperature scaling) and OUT/reliability.png; TensorBoard logs in OUT/tb
when tensorboard is installed.

Several GPUs or nodes: torchrun --nproc_per_node 8 tools/train_imagenet.py ... (DDP; --batch-size is per
process; data sharded per rank; strategy statistics and metrics all-reduced). On CPUs torchrun uses gloo.
"""
import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pysoftlabel import strategies as S
from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.data import make_synthetic_dataset, synthetic_summary
from pysoftlabel.data.boxes import load_boxes
from pysoftlabel.data.folder import drop_unreadable, scan_image_folder, skipped_line
from pysoftlabel.data.imagenet import ImageNetLoader, context_crops
from pysoftlabel.data.loaders import loader_dtype, validation_loader
from pysoftlabel.data.resident import ResidentImages, ResidentLoader
from pysoftlabel.data.webdataset import find_shards
from pysoftlabel.engine import (AMP_CHOICES, CheckpointWriter, Diverged, autocast_dtype, context_confidence,
                                evaluate, check_checkpoint, load_checkpoint, output_folder, parse_device,
                                recipe_name, run_checkpoint, train_one_epoch, write_calibration_report)
from pysoftlabel.engine.distributed import barrier, init_distributed, is_main_process, shutdown_distributed
from pysoftlabel.jsontext import json_text
from pysoftlabel.metrics import ece_with_interval
from pysoftlabel.models import (check_model_name, create_model, default_weights, load_model, load_pretrained,
                                pretrained_weights)

STRATEGIES = ("ce", "ls", "ols", "als", "ldl", "online-ldl", "kd")
# Each optimiser's defaults of the options left out (learning rate per 64 images).
OPTIMIZERS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
              "adamw": {"lr": 6.25e-5, "weight_decay": 0.05}}
SYNTHETIC = dict(num_classes=10, train_per_class=200, val_per_class=50, image_size=48, seed=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Dataset")
    g.add_argument("--data", default=None,
                   help="ImageNet-layout root, ROOT/{train,val}/<class>/<image>, or webdataset shards, "
                        "ROOT/{train,val}/*.tar (default: the built-in synthetic dataset)")
    g.add_argument("--data-cache", default=os.path.expanduser("~/.cache/pysoftlabel/synthetic-v3"),
                   help="where the synthetic dataset is written (default: %(default)s)")
    g.add_argument("--boxes", default=None, help="PASCAL-VOC boxes root for als (default: DATA/boxes if present)")
    g.add_argument("--image-size", type=int, default=32,
                   help="training crop side; with --resident, the images' own side (default: 32)")
    g.add_argument("--batch-size", type=int, default=32, help="batch size per process (default: 32)")
    g.add_argument("--min-scale", type=float, default=None,
                   help="smallest random-resized-crop area (default: 0.08; 0.35 on the synthetic data, whose "
                        "objects smaller crops would cut away)")
    g.add_argument("--threads", type=int, default=2, help="DALI threads (default: 2)")
    g.add_argument("--val-split", default="val", help="validation folder name (default: val; CIFAR: test)")
    g.add_argument("--train-per-class", type=int, default=None,
                   help="train on the first N images (by file name) of each class: a stated subset (default: all)")
    g.add_argument("--resident", action="store_true",
                   help="small same-size images (CIFAR-style): decode once, keep them on the device, crop with "
                        "4-pixel padding + flip per batch instead of the DALI pipeline")
    g.add_argument("--cutout", type=int, default=0, help="Cutout side with --resident (default: 0, none)")
    g = p.add_argument_group("Model")
    g.add_argument("--arch", default="resnet20", help="model name: resnet20/32/44/56/110, cifar_resnet18/34, a "
                   "torchvision model (resnet50, vit_b_16, ...) or timm/<name> where timm is installed "
                   "(default: resnet20)")
    g.add_argument("--pretrained", nargs="?", const="default", default=None, metavar="FILE",
                   help="start from the ImageNet weights of --arch (torchvision's or timm's, downloaded once), or "
                        "from a file of weights (a state dict, or a checkpoint); the classifier starts new for the "
                        "data's classes (default: random initialisation)")
    g.add_argument("--teacher", default=None, help="teacher checkpoint for ldl / kd, or the folder of its run "
                   "(default: train one first)")
    g = p.add_argument_group("Strategy")
    g.add_argument("--strategy", default="ldl", help=f"one of {', '.join(STRATEGIES)} (default: ldl)")
    g.add_argument("--eps", type=float, default=0.1,
                   help="label smoothing for ls, and als without a box (default: 0.1)")
    g.add_argument("--als-eps", type=float, nargs=2, default=(0.0, 1.0), metavar=("MIN", "MAX"),
                   help="als smoothing range, eps = clamp(1 - object fraction of the crop) (default: 0 1)")
    g.add_argument("--ols-alpha", type=float, default=0.5, help="OLS hard-label weight (default: 0.5)")
    g.add_argument("--ols-init", default="zeros", choices=("zeros", "uniform"),
                   help="OLS table of the first epoch: zeros (CIFAR / ImageNet recipe: no soft term in epoch 1) or "
                        "uniform (fine-grained recipe) (default: zeros)")
    g.add_argument("--ols-freeze-at", type=float, default=None,
                   help="keep an OLS table row once its largest value reaches this (the official fine-grained "
                        "recipe: 0.88) (default: never)")
    g.add_argument("--kd-alpha", type=float, default=0.1, help="KD weight (default: 0.1)")
    g.add_argument("--kd-temperature", type=float, default=3.0, help="KD temperature (default: 3)")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="online-ldl EMA decay per step (default: 1 - 2 / steps per epoch: a half-epoch horizon)")
    g.add_argument("--online-weight", type=float, default=0.8,
                   help="online-ldl weight of the EMA distribution, reached linearly at the last epoch (default: 0.8)")
    g.add_argument("--aug", default="none", choices=("none", "mixup", "cutmix", "ricap"),
                   help="mixing augmentation (default: none)")
    g = p.add_argument_group("Optimiser and schedule")
    g.add_argument("--epochs", type=int, default=12, help="epochs (default: 12)")
    g.add_argument("--optimizer", default="sgd", choices=tuple(OPTIMIZERS),
                   help="SGD with Nesterov momentum (the papers' CNN recipes), or AdamW (ViT-style fine-tuning; no "
                        "weight decay on biases and norms) (default: sgd)")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate per 64 images, scaled with the global batch (--batch-size x processes) "
                        "(default: 0.1 with sgd, 6.25e-5 with adamw: DeiT's 5e-4 per 512)")
    g.add_argument("--momentum", type=float, default=None, help="SGD's Nesterov momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: 5e-4 with sgd, 0.05 with adamw)")
    g.add_argument("--warmup-epochs", type=int, default=1, help="linear warm-up epochs, at most --epochs (default: 1)")
    g.add_argument("--schedule", default="cosine", choices=("cosine", "multistep"),
                   help="after warm-up: cosine to 0, or x0.1 at each --milestones epoch (default: cosine)")
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="multistep epochs (default: 50%% and 75%% of --epochs)")
    g = p.add_argument_group("Run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when a GPU is visible)")
    g.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="autocast dtype of the forward passes; fp16 adds gradient scaling (default: auto, bf16 on "
                        "cuda, off on cpu)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--out", default=None, help="run folder (default: runs/<strategy>)")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (from the start, said in one line, when there is none yet)")
    g.add_argument("--overwrite", action="store_true",
                   help="train from scratch into an --out that holds a run's checkpoint (refused otherwise)")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop cleanly after this many epochs in this invocation, a teacher's included (time-sliced "
                        "jobs; --resume goes on)")
    args = p.parse_args(argv)
    if args.momentum is not None and args.optimizer != "sgd":
        p.error(f"--momentum is SGD's; --optimizer {args.optimizer} has betas (0.9, 0.999)")
    for name, value in OPTIMIZERS[args.optimizer].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_values(p, args)
    if args.strategy not in STRATEGIES:
        p.error(f"--strategy: unknown strategy {args.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if args.data is not None and not Path(args.data, "train").is_dir():
        p.error(f"--data: {args.data} has no train/ folder (ImageNet layout ROOT/train/<class>/<image>)")
    if args.data is not None and not Path(args.data, args.val_split).is_dir():
        others = sorted(d.name for d in Path(args.data).iterdir() if d.is_dir() and d.name not in ("train", "boxes"))
        p.error(f"--data: {args.data} has no {args.val_split}/ folder to validate on; "
                + (f"--val-split chooses another: {', '.join(others)}" if others else "it has no other folder"))
    if args.teacher is not None and args.strategy not in ("ldl", "kd"):
        p.error(f"--teacher: only ldl and kd learn from a teacher; --strategy {args.strategy} would ignore it")
    if args.teacher is not None:
        args.teacher = run_checkpoint(args.teacher)
    if args.teacher is not None and not Path(args.teacher).is_file():
        p.error(f"--teacher: {args.teacher} " + ("is a folder without a checkpoint.pt" if Path(args.teacher).is_dir()
                                                 else "does not exist"))
    try:
        args.out = output_folder(args.out or f"runs/{args.strategy}")
    except ValueError as error:
        p.error(str(error))
    if args.boxes is not None and not Path(args.boxes).is_dir():
        p.error(f"--boxes: {args.boxes} does not exist")
    if args.strategy == "als" and args.resident:
        p.error("--strategy als needs the DALI pipeline's crop windows: drop --resident")
    if args.cutout and not args.resident:
        p.error("--cutout: only the --resident path (small same-size images) applies Cutout; add --resident or drop it")
    if args.min_scale is not None and args.resident:
        p.error("--min-scale: the --resident path crops with 4-pixel padding, not a random-resized crop; drop it")
    if args.min_scale is None:
        args.min_scale = 0.08 if args.data is not None else 0.35
    return args


def check_values(p, args):
    """One clear line for a value out of range, before anything runs (a teacher's training included)."""
    def optional(value, ok):
        return value is None or ok(value)
    checks = [
        ("epochs", args.epochs >= 1, "at least 1"),
        ("batch_size", args.batch_size >= 1, "at least 1"),
        ("image_size", args.image_size >= 8, "at least 8 (pixels)"),
        ("threads", args.threads >= 1, "at least 1"),
        ("train_per_class", optional(args.train_per_class, lambda v: v >= 1), "at least 1"),
        ("cutout", args.cutout >= 0, "at least 0"),
        ("min_scale", optional(args.min_scale, lambda v: 0 < v <= 1), "in (0, 1]"),
        ("seed", 0 <= args.seed < 2**32, "in [0, 2**32) (numpy's seeds)"),
        ("lr", args.lr > 0, "positive"),
        ("momentum", optional(args.momentum, lambda v: 0 <= v < 1), "in [0, 1)"),
        ("weight_decay", args.weight_decay >= 0, "at least 0"),
        ("warmup_epochs", 0 <= args.warmup_epochs <= args.epochs,
         f"in [0, --epochs {args.epochs}] (the run would end inside its warm-up, never at --lr)"),
        ("milestones", optional(args.milestones, lambda v: all(1 <= m < args.epochs for m in v)),
         f"epochs in [1, --epochs {args.epochs}) (a later one never takes effect)"),
        ("eps", 0 <= args.eps <= 1, "in [0, 1]"),
        ("als_eps", 0 <= args.als_eps[0] <= args.als_eps[1] <= 1, "MIN <= MAX within [0, 1]"),
        ("ols_alpha", 0 <= args.ols_alpha <= 1, "in [0, 1]"),
        ("ols_freeze_at", optional(args.ols_freeze_at, lambda v: 0 < v <= 1), "in (0, 1]"),
        ("kd_alpha", 0 <= args.kd_alpha <= 1, "in [0, 1]"),
        ("kd_temperature", args.kd_temperature > 0, "positive"),
        ("ema_decay", optional(args.ema_decay, lambda v: 0 < v < 1), "in (0, 1)"),
        ("online_weight", 0 <= args.online_weight <= 1, "in [0, 1]"),
        ("stop_after", optional(args.stop_after, lambda v: v >= 1), "at least 1"),
    ]
    for name, ok, expected in checks:
        if not ok:
            p.error(f"--{name.replace('_', '-')} must be {expected}, got {getattr(args, name)}")
    try:
        device = parse_device(args.device)
    except ValueError as error:
        p.error(str(error))
    try:
        check_model_name(args.arch)
    except ValueError as error:
        p.error(f"--arch: {error}")
    # A typo or a model without weights is found now, not after the data is listed.
    if args.pretrained == "default":
        try:
            default_weights(args.arch)
        except ValueError as error:
            p.error(f"--pretrained: {error}")
    elif args.pretrained is not None and not Path(args.pretrained).is_file():
        kind = "is a folder, not a file of weights" if Path(args.pretrained).is_dir() else "does not exist"
        p.error(f"--pretrained: {args.pretrained} {kind}")
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out and --overwrite starts it again: give one of them")
    if device.type == "cpu" and args.amp == "fp16":
        print("note: --amp fp16 on the CPU has no fast convolution kernels (a ResNet-20 step is 100x slower "
              "than bf16 or off here): use it to test fp16 loss scaling, not to train", file=sys.stderr)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_root(args):
    if args.data is not None:
        return Path(args.data)
    root = Path(args.data_cache)
    if synthetic_summary(root) is None and is_main_process():
        print(f"writing the synthetic dataset to {root} ...", flush=True)
        make_synthetic_dataset(root, **SYNTHETIC)
    barrier()
    return root


def boxes_root(args, root):
    """--boxes, else DATA/boxes when it exists (the synthetic dataset writes its boxes there), else None."""
    if args.boxes is not None:
        return Path(args.boxes)
    return root / "boxes" if (root / "boxes").is_dir() else None


def make_val_loader(args, root, device, classes, rank=0, world=1):
    """The run's validation loader, this rank's share (tools/evaluate.py builds the same from args.json)."""
    return validation_loader(root, args.val_split, args.batch_size, args.image_size, device, classes,
                             resident=args.resident, seed=args.seed, num_threads=args.threads, shard_id=rank,
                             num_shards=world)


def make_loaders(args, root, device, rank, world, strategy_name):
    """(val loader, classes, train loader for an epoch, data facts): the DALI pipeline, or the resident
    small-image path, sharded per rank. The training loader of epoch e is a function of (seed, e), so that a
    resumed run sees the same batches. For als the training batches carry the crops' object fractions and the
    facts include the context-only crops of the validation images."""
    if args.resident:
        train_data = ResidentImages(root, "train", device, per_class=args.train_per_class, image_size=args.image_size)
        val = make_val_loader(args, root, device, train_data.classes, rank, world)
        train = ResidentLoader(train_data, args.batch_size, True, cutout=args.cutout, seed=args.seed, shard_id=rank,
                               num_shards=world)

        def train_for_epoch(epoch):
            train.set_epoch(epoch)
            return train
        return val, train_data.classes, train_for_epoch, {}
    common = dict(shard_id=rank, num_shards=world, num_threads=args.threads, dtype=loader_dtype(device))
    if find_shards(root / "train"):  # webdataset shards: the loader shuffles the shard order per epoch
        if strategy_name == "als" or args.train_per_class:
            raise ValueError("data: --strategy als and --train-per-class need ImageNet-layout folders, not shards")
        classes = ImageNetLoader(root, "train", args.batch_size, args.image_size, device, **common).classes
        return make_val_loader(args, root, device, classes, rank, world), classes, lambda epoch: ImageNetLoader(
            root, "train", args.batch_size, args.image_size, device, seed=args.seed * 1000 + epoch,
            min_scale=args.min_scale, **common), {}
    # once: seconds on ImageNet
    files, labels, classes = scan_image_folder(root, "train", per_class=args.train_per_class)
    files, labels, skipped = drop_unreadable(files, labels)
    if skipped and is_main_process():
        print(skipped_line(skipped, "training images"), flush=True)
    val = make_val_loader(args, root, device, classes, rank, world)
    if val.skipped and is_main_process():
        print(skipped_line(val.skipped, "validation images"), flush=True)
    facts = {"skipped_images": len(skipped), "skipped_val_images": len(val.skipped)}
    boxes = None
    if strategy_name == "als":
        box_root = boxes_root(args, root)
        if box_root is None:
            raise ValueError("--strategy als needs bounding boxes: --boxes ROOT (PASCAL-VOC XML, BOXES/**/<stem>.xml)")
        boxes = load_boxes(box_root, files, labels, classes)
        if boxes.matched == 0:
            raise ValueError(f"--boxes: none of the {len(files)} training images has a box of its class under "
                             f"{box_root} (BOXES/**/<image stem>.xml); ALS would be label smoothing with --eps "
                             f"{args.eps} for every image")
        facts.update(boxes_matched=boxes.matched, boxes_skipped_files=len(boxes.skipped),
                     boxes_repaired=boxes.repaired,
                     context=context_crops(root, args.val_split, box_root, args.batch_size, args.image_size, device,
                                           classes, seed=args.seed, **common))
        if is_main_process():
            print(f"boxes: {boxes.matched} of {len(files)} training images have a box of their class", flush=True)
            if boxes.skipped:
                print(f"boxes: skipped {len(boxes.skipped)} annotation files that cannot be read (their images count "
                      f"as having no box), e.g. {boxes.skipped[0][1].removeprefix('boxes: ')}", flush=True)
            if boxes.repaired:
                print(f"boxes: {boxes.repaired} boxes reached outside their image or had min > max: clipped and put "
                      f"in order, or dropped when nothing was left, e.g. in {boxes.repaired_example}", flush=True)

    def train_for_epoch(epoch):
        # A global shuffle per epoch (the same on every rank, which then reads its own block): DALI's reader
        # shuffles only within its prefetch buffer, which on a class-sorted listing gives few-class batches.
        order = np.random.default_rng([args.seed, epoch]).permutation(len(files))
        listing = ([files[i] for i in order], [labels[i] for i in order], classes)
        return ImageNetLoader(root, "train", args.batch_size, args.image_size, device, seed=args.seed * 1000 + epoch,
                              min_scale=args.min_scale, listing=listing, check_files=False,
                              boxes=None if boxes is None else boxes.select(order), **common)
    return val, classes, train_for_epoch, facts


def start_from_pretrained(model, args, num_classes):
    """Loads --pretrained into ``model``; the first process fetches the library's weights before the others,
    which then find them in the cache."""
    source = default_weights(args.arch)[0] if args.pretrained == "default" else args.pretrained
    try:
        for turn in (True, False):
            if is_main_process() == turn:
                weights = pretrained_weights(args.arch, args.pretrained, args.image_size)
            barrier()
        new = load_pretrained(model, weights, num_classes, args.arch, source)
    except ValueError as error:
        raise ValueError(f"--pretrained: {error}") from None
    if is_main_process():
        print(f"pretrained: {args.arch} from {source}"
              + (f"; new for {num_classes} classes: {', '.join(new)}" if new else ""), flush=True)


def make_strategy(name, args, model, num_classes, teacher, device, steps):
    if name == "ce":
        return S.CrossEntropy()
    if name == "ls":
        return S.LabelSmoothing(args.eps)
    if name == "ols":
        return S.OnlineLabelSmoothing(num_classes, args.ols_alpha, init=args.ols_init, freeze_at=args.ols_freeze_at,
                                      device=device)
    if name == "als":
        return S.AdaptiveLabelSmoothing(*args.als_eps, eps_no_box=args.eps)
    if name == "ldl":
        return S.LabelDistribution(teacher)
    if name == "online-ldl":
        decay = args.ema_decay if args.ema_decay is not None else min(0.9999, max(0.9, 1 - 2 / steps))
        return S.OnlineLabelDistribution(model, decay=decay, weight=args.online_weight, warmup_epochs=args.epochs)
    return S.KnowledgeDistillation(teacher, args.kd_alpha, args.kd_temperature)


def make_optimizer(args, model, lr):
    """SGD with Nesterov momentum, weight decay on every parameter (the CIFAR and ImageNet ResNet recipes); or
    AdamW without weight decay on biases and normalisation weights (the one-dimensional parameters), as
    DeiT and timm's recipes train ViTs."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, nesterov=True,
                               weight_decay=args.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def rng_states(device):
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def make_scheduler(args, optimizer, steps):
    """Linear warm-up over --warmup-epochs, then cosine to zero or x0.1 at each milestone; stepped per batch."""
    warm = args.warmup_epochs * steps
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, total_iters=max(1, warm))
    if args.schedule == "cosine":
        after = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, args.epochs * steps - warm))
    else:
        milestones = args.milestones or [args.epochs // 2, args.epochs * 3 // 4]
        after = torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, m * steps - warm) for m in milestones], 0.1)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, after], [warm])


def read_metrics(path):
    """The (line, record) pairs of a run's metrics.jsonl. Its last line is dropped, with a message, when it is
    not whole JSON: a crash or a power loss during an append leaves it cut off (its epoch is trained again). A
    bad line elsewhere is damage a resume must not hide: ValueError naming the file and the line."""
    lines = path.read_text().splitlines()
    pairs = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            pairs.append((line, record))
        elif number < len(lines):
            raise ValueError(f"{path}, line {number} is not a JSON record of an epoch: {line[:80]!r}; repair or "
                             "remove it, or start again with --overwrite")
        else:
            print(f"{path}: dropping its last line, cut off by a crash: {line[:80]}", flush=True)
    return pairs


class EpochLog:
    """Rank 0's outputs of each epoch: OUT/metrics.jsonl, the console line, TensorBoard when installed."""

    def __init__(self, out, name, epochs, start):
        self.out, self.name, self.epochs = out, name, epochs
        path = out / "metrics.jsonl"
        # A run stopped between its metrics line and its checkpoint would repeat that epoch: keep the lines
        # of the epochs the checkpoint holds.
        kept = [line for line, record in read_metrics(path) if record["epoch"] < start] \
            if start and path.exists() else []
        write_text_atomically(path, "".join(line + "\n" for line in kept))  # a kill here loses no epoch
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional
            self.tensorboard = None

    def progress(self, epoch):
        """A live progress bar for the training batches (tqdm; off when stderr is not a terminal)."""
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        bar = tqdm(desc=f"[{self.name}] epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False, disable=None)

        def update(step, steps):
            bar.total = steps
            bar.update(step - bar.n)
            if step == steps:
                bar.close()
        return update

    def write(self, record):
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json_text(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the epoch's line is on the disk before its checkpoint is written
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, record["epoch"])
            self.tensorboard.flush()
        print(f"[{self.name}] epoch {record['epoch'] + 1}/{self.epochs}  loss {record['train_loss']:.3f}  "
              f"train acc {record['train_acc1']:.3f}  val acc {record['val_acc1']:.3f}  val ECE "
              f"{record['val_ece']:.4f}  {record['img_per_s']:.0f} img/s", flush=True)


def train(args, strategy_name, out, device, rank=0, world=1, teacher_path=None, stop_after=None):
    """One run, from its checkpoint with --resume, for at most ``stop_after`` epochs in this call (None: to the
    end), taught by the checkpoint at ``teacher_path`` (ldl, kd); returns (epochs trained in this call,
    whether the run is complete)."""
    started = time.perf_counter()
    seed_everything(args.seed)
    root = data_root(args)
    val, classes, train_for_epoch, facts = make_loaders(args, root, device, rank, world, strategy_name)
    context = facts.pop("context", None)
    num_classes = len(classes)
    teacher = None if teacher_path is None else load_teacher(teacher_path, args.arch, classes, args.image_size, device)
    model = create_model(args.arch, num_classes, args.image_size).to(device, memory_format=torch.channels_last)
    ckpt_path = out / "checkpoint.pt"
    resuming = args.resume and ckpt_path.exists()
    if args.pretrained is not None and not resuming:  # a resumed run's weights are in its checkpoint
        start_from_pretrained(model, args, num_classes)
    steps_per_epoch = len(train_for_epoch(0))
    strategy = make_strategy(strategy_name, args, model, num_classes, teacher, device, steps_per_epoch)
    mix = {"none": None, "mixup": S.Mixup(seed=args.seed), "cutmix": S.CutMix(seed=args.seed),
           "ricap": S.RICAP(seed=args.seed)}[args.aug]
    lr = args.lr * args.batch_size * world / 64
    optimizer = make_optimizer(args, model, lr)
    scheduler = make_scheduler(args, optimizer, steps_per_epoch)
    amp = autocast_dtype(args.amp, device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    run_model = model
    if world > 1:
        run_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.index is not None else None)
    if args.compile:
        run_model = torch.compile(run_model)
    out.mkdir(parents=True, exist_ok=True)
    start, start_step = 0, 0
    if resuming:
        # Read on the CPU: the RNG states must stay CPU tensors (torch.set_rng_state and Generator.set_state
        # refuse others, and torch.load onto a GPU put them there); everything else is copied into place.
        state = load_checkpoint(ckpt_path, "cpu", keys=("model", "optimizer", "scheduler", "strategy", "rng", "epoch"))
        check_same_run(ckpt_path, state, {"arch": args.arch, "strategy": strategy_name, "aug": args.aug,
                                          "classes": classes, **recipe(args)})
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        strategy.load_state_dict(state["strategy"])
        if mix is not None:
            mix.load_state_dict(state["mix"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start, start_step = state["epoch"] + 1, state.get("step", 0)
        if start_step and rank != 0 and strategy.stats is not None:
            strategy.stats.reset()  # the checkpoint holds the statistics of all ranks, summed: count them once
        if is_main_process():
            print(f"resumed {out} at epoch {start}" + (f", step {start_step}" if start_step else ""), flush=True)
    if is_main_process():
        if start == 0:  # the reports of a run trained here before (--overwrite) would describe the new one
            for name in ("report.md", "report.json", "reliability.png"):
                (out / name).unlink(missing_ok=True)
        # The run's options as JSON values (paths as strings): tools/evaluate.py takes its defaults from them.
        options = vars(args) | {"strategy": strategy_name, "world_size": world}
        write_text_atomically(out / "args.json", json_text(options, indent=1, default=str))
    log = EpochLog(out, strategy_name, args.epochs, start) if is_main_process() else None

    def checkpoint(epoch, step=0):
        """The state after ``epoch`` and ``step`` steps of the next one (0: at the epoch's end)."""
        if log is not None:
            writer.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "strategy": strategy.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "mix": mix.state_dict() if mix is not None else None,
                         "rng": rng_states(device), "epoch": epoch, "step": step, "arch": args.arch,
                         "strategy_name": strategy_name, "aug": args.aug, "classes": classes,
                         "recipe": recipe(args)}, ckpt_path)

    stop = args.epochs if stop_after is None else min(args.epochs, start + stop_after)
    # The checkpoint is written while the next epoch trains; leaving this block (an interruption or an error
    # too) waits for it, and the barrier below keeps every rank (a student loading this run as its teacher)
    # until it is on disk.
    # Where a run's time goes beside training: setting up (data decoded or listed, model, resume), in the
    # first epoch record of each process, and evaluation, in every record.
    timing = {"setup_seconds": time.perf_counter() - started}
    with CheckpointWriter() as writer:
        for epoch in range(start, stop):
            try:
                metrics = train_one_epoch(run_model, train_for_epoch(epoch), strategy, optimizer, device, scheduler,
                                          scaler=scaler, mix=mix, amp_dtype=amp,
                                          progress=log.progress(epoch) if log else None,
                                          start_step=start_step if epoch == start else 0,
                                          stop=lambda: STOP["requested"])
            except Diverged as error:
                raise Diverged(f"{strategy_name}, epoch {epoch + 1}: {error}") from None
            steps, epoch_steps = metrics.pop("steps"), metrics.pop("epoch_steps")
            if steps < epoch_steps:  # stopped inside the epoch: save it as it is
                strategy.all_reduce()
                checkpoint(epoch - 1, step=steps)
                raise Interrupted
            strategy.all_reduce()
            strategy.end_epoch()
            evaluated = time.perf_counter()
            val_metrics, _ = evaluate(run_model, val, device, amp)
            if context is not None:
                val_metrics["val_context_conf"] = context_confidence(run_model, context, device, amp)
            timing["eval_seconds"] = time.perf_counter() - evaluated
            if log is not None:
                log.write({"epoch": epoch, "strategy": strategy_name, **metrics, **val_metrics, **facts, **timing})
            timing.pop("setup_seconds", None)
            checkpoint(epoch)
            if STOP["requested"]:
                raise Interrupted
        if stop == args.epochs and is_main_process():
            # The report fits a temperature on all validation logits: rank 0 evaluates the whole set alone.
            full_val = val if world == 1 else make_val_loader(args, root, device, classes)
            report = write_calibration_report(model, full_val, device, out, amp, title=(
                f"{args.arch}, {recipe_name(strategy_name, args.aug)}, {args.epochs} epoch{'s' * (args.epochs > 1)}: "
                f"{root}/{args.val_split} at {args.image_size} px"))
            ece = ece_with_interval(report["ece"], report["ece_ci95_low"], report["ece_ci95_high"])
            print(f"[{strategy_name}] {out / 'report.md'}: top-1 {report['accuracy']:.3f}, ECE {ece}, after "
                  f"temperature scaling {report['ece_after_temperature_heldout']:.4f} (held out)", flush=True)
    barrier()
    return stop - start, stop == args.epochs


# The options that shape a run's trajectory: a --resume with any of them changed would not continue the run
# (a longer --epochs, say, would follow the checkpoint's schedule, already at its end), so it is refused.
# --pretrained is not one: it sets the first weights only, and a resumed run's are in its checkpoint.
RECIPE = ("epochs", "batch_size", "image_size", "min_scale", "train_per_class", "resident", "cutout", "val_split",
          "optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "schedule", "milestones", "seed", "amp",
          "eps", "als_eps", "ols_alpha", "ols_init", "ols_freeze_at", "kd_alpha", "kd_temperature", "ema_decay",
          "online_weight")


def recipe(args) -> dict:
    """The RECIPE options of ``args``, as the checkpoint records them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in RECIPE}


def check_same_run(path, state, run):
    """ValueError naming the options of this run that differ from those of the run that wrote the checkpoint
    at ``path`` (a checkpoint written before an option was recorded is not checked for it)."""
    recorded = {"strategy": state.get("strategy_name"), **{k: state.get(k) for k in ("arch", "aug", "classes")}}
    recorded = {k: v for k, v in recorded.items() if v is not None} | state.get("recipe", {})
    differ = [k for k, v in run.items() if k in recorded and recorded[k] != v]
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with {_options(recorded, differ)}; this run has "
                         f"{_options(run, differ)}. Resume with the same options, or start a new run in another --out")


def _options(values, keys):
    """'--arch resnet20, 10 classes (a, b, c, ...)': the options ``keys`` of ``values``, as the user gave them."""
    def one(key, value):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            return flag if value else f"no {flag}"
        if key != "classes":
            return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        return f"{len(value)} classes ({', '.join(map(str, value[:3]))}{', ...' if len(value) > 3 else ''})"
    return ", ".join(one(k, values[k]) for k in keys)


def teacher_complete(path, args) -> bool:
    """Whether ``path`` holds the last epoch of a teacher of this run's --arch, --aug and recipe: a --resume
    (each slice of a time-sliced student) then neither lists its data nor evaluates it again."""
    if not path.exists():
        return False
    state = load_checkpoint(path, keys=("epoch",))
    try:
        check_same_run(path, state, {"arch": args.arch, "strategy": "ce", "aug": args.aug, **recipe(args)})
    except ValueError:
        return False  # train() resumes it and names the difference
    # A checkpoint from before recipes were recorded is not taken as this recipe's.
    return "recipe" in state and state["epoch"] == args.epochs - 1 and not state.get("step")


def load_teacher(path, arch, classes, image_size, device):
    """The frozen teacher at ``path`` for a run over ``classes`` at ``image_size``; ValueError naming the
    problem when it was trained on other classes (its distributions would put mass on the wrong ones) or its
    weights do not fit its architecture built for this run. Its own --arch is kept (a ResNet-50 may teach a
    ResNet-18)."""
    state = load_checkpoint(path, keys=("model",))
    taught = state.get("classes")
    if taught is not None and len(taught) != len(classes):
        raise ValueError(f"--teacher: {path} has {len(taught)} classes, the data has {len(classes)}")
    unnamed = [str(i) for i in range(len(classes))]  # shards without classes.txt number their classes
    if taught is not None and unnamed not in (list(taught), list(classes)) and list(taught) != list(classes):
        differ = next(i for i, (a, b) in enumerate(zip(taught, classes)) if a != b)
        raise ValueError(f"--teacher: {path} was trained on other classes than the data's (class {differ} is "
                         f"{taught[differ]!r} there, {classes[differ]!r} here)")
    try:
        teacher = load_model(state.get("arch", arch), len(classes), image_size, state["model"], path)
    except ValueError as error:
        raise ValueError(f"--teacher: {error}") from None
    return teacher.to(device, memory_format=torch.channels_last)


STOP = {"requested": False}


class Interrupted(Exception):
    """The run stopped on request after writing its checkpoint."""


def _request_stop(signum, frame):
    """SIGTERM (a scheduler's pre-emption) or Ctrl-C: finish the current training step, write a checkpoint
    (mid-epoch if need be) and exit; a second one stops at once, with the last checkpoint written."""
    if STOP["requested"]:
        raise KeyboardInterrupt
    STOP["requested"] = True


def main(argv=None):
    args = parse_args(argv)
    STOP["requested"] = False
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    device = torch.device(args.device)
    rank, world, local_rank = init_distributed(device.type)
    # Fixed batch shapes: let cuDNN time its convolution algorithms once and keep the fastest (as timm's
    # train.py does); GPU training is not bitwise reproducible either way (atomics in backward passes).
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    try:
        held = [p for p in (args.out / "checkpoint.pt", args.out / "teacher" / "checkpoint.pt") if p.exists()]
        if held and not args.resume and not args.overwrite:  # a finished run is not lost to a command run again
            raise SystemExit(f"--out {args.out} holds a run ({held[0]}): --resume continues it, --overwrite "
                             "trains again from scratch, or choose another --out")
        if args.resume:  # a damaged checkpoint is an error now, not after the teacher has been trained
            for path in held:
                check_checkpoint(path)
            if not held and is_main_process():  # a preempted job's first start, or a mistyped --out
                print(f"--resume: {args.out} holds no checkpoint yet; training from the start", flush=True)
        budget = args.stop_after  # the epochs of this invocation, the teacher's included
        own = own_teacher(args)
        path = own or args.teacher  # None for the strategies without a teacher (parse_args refuses --teacher)
        if own is not None and not (args.resume and teacher_complete(own, args)):
            if is_main_process():
                print("no --teacher: training one with ce on the same recipe first", flush=True)
            trained, complete = train(args, "ce", own.parent, device, rank, world, stop_after=budget)
            budget = None if budget is None else budget - trained
            if not complete or budget == 0:  # the student learns from the finished teacher only
                if is_main_process():
                    print(f"--stop-after {args.stop_after}: stopped after {trained} epoch(s) of the teacher "
                          f"({'complete' if complete else 'not complete'}); the student starts after it: "
                          "continue with --resume", flush=True)
                return
        train(args, args.strategy, args.out, device, rank, world, path, stop_after=budget)
    except (Interrupted, KeyboardInterrupt):
        print(interrupted_line(args), file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, ImportError) as error:  # bad input; an optional library (DALI) not installed
        raise SystemExit(str(error))
    except OSError as error:  # a full disk, a folder made read-only: the last whole checkpoint is kept
        raise SystemExit(f"stopped: {error} (the last complete checkpoint in {args.out} is kept; --resume "
                         "continues from it)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if world > 1:
            shutdown_distributed()


def own_teacher(args):
    """The checkpoint of the teacher this command trains before its student (ldl and kd without --teacher),
    else None."""
    if args.strategy in ("ldl", "kd") and args.teacher is None:
        return args.out / "teacher" / "checkpoint.pt"
    return None


def interrupted_line(args):
    """Where a stopped run's state is: the checkpoints that exist, the teacher's only where this command
    trains it (a ce run has none; a run stopped in its teacher's epochs has no student's checkpoint yet)."""
    paths = [path for path in (own_teacher(args), args.out / "checkpoint.pt") if path is not None]
    saved = [str(path) for path in paths if path.exists()]
    if not saved:
        return "interrupted before the first checkpoint: nothing to resume, the same command starts again"
    return f"interrupted: the state is in {' and '.join(saved)}; continue with --resume"


if __name__ == "__main__":
    main()
