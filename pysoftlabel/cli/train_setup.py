"""What a training run is made of, built from its options (pysoftlabel.cli.train_options): the data
loaders, the first weights, the teacher, the strategy, the optimiser and its schedule."""
import random
from pathlib import Path

import numpy as np
import torch

from pysoftlabel import strategies as S
from pysoftlabel.data import make_synthetic_dataset, synthetic_summary
from pysoftlabel.data.boxes import load_boxes
from pysoftlabel.data.folder import drop_unreadable, scan_image_folder, skipped_line
from pysoftlabel.data.imagenet import ImageNetLoader, context_crops
from pysoftlabel.data.loaders import loader_dtype, validation_loader
from pysoftlabel.data.resident import ResidentImages, ResidentLoader
from pysoftlabel.data.webdataset import find_shards
from pysoftlabel.engine import load_checkpoint
from pysoftlabel.engine.distributed import barrier, is_main_process
from pysoftlabel.models import default_weights, load_model, load_pretrained, pretrained_weights

SYNTHETIC = dict(num_classes=10, train_per_class=200, val_per_class=50, image_size=48, seed=0)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states(device):
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


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


def skipped_facts(train_skipped, val_skipped) -> dict:
    """The counts of unreadable images left out of training and validation, each said in one line."""
    if is_main_process():
        for skipped, what in ((train_skipped, "training images"), (val_skipped, "validation images")):
            if skipped:
                print(skipped_line(skipped, what), flush=True)
    return {"skipped_images": len(train_skipped), "skipped_val_images": len(val_skipped)}


def als_boxes(args, root, files, labels, classes, device, common, facts):
    """The boxes of the training images ``files`` (paths, or shard keys) for als, each image's row, with what
    loading met and the context-only crops of the validation images added to ``facts`` and said; ValueError
    when there are none, or none of an image's own class."""
    box_root = boxes_root(args, root)
    if box_root is None:
        raise ValueError("--strategy als needs bounding boxes: --boxes ROOT (PASCAL-VOC XML, BOXES/**/<stem>.xml)")
    boxes = load_boxes(box_root, files, labels, classes)
    if boxes.matched == 0:
        raise ValueError(f"--boxes: none of the {len(files)} training images has a box of its class under "
                         f"{box_root} (BOXES/**/<image stem>.xml); ALS would be label smoothing with --eps "
                         f"{args.eps} for every image")
    facts.update(boxes_matched=boxes.matched, boxes_skipped_files=len(boxes.skipped), boxes_repaired=boxes.repaired,
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
    return boxes


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
        if args.train_per_class:
            raise ValueError("data: --train-per-class needs ImageNet-layout folders, not shards")
        first = ImageNetLoader(root, "train", args.batch_size, args.image_size, device, **common)
        val = make_val_loader(args, root, device, first.classes, rank, world)
        facts = skipped_facts(first.skipped, val.skipped)
        boxes = None
        if strategy_name == "als":  # the samples' boxes by key: ImageNet's shards name them by the file stems
            keys = [key.decode() for key in first.listing.keys]
            boxes = als_boxes(args, root, keys, first.listing.labels.tolist(), first.classes, device, common, facts)
        return val, first.classes, lambda epoch: ImageNetLoader(
            root, "train", args.batch_size, args.image_size, device, seed=args.seed * 1000 + epoch,
            min_scale=args.min_scale, boxes=boxes, **common), facts
    # once: seconds on ImageNet
    files, labels, classes = scan_image_folder(root, "train", per_class=args.train_per_class)
    files, labels, skipped = drop_unreadable(files, labels)
    val = make_val_loader(args, root, device, classes, rank, world)
    facts = skipped_facts(skipped, val.skipped)
    boxes = als_boxes(args, root, files, labels, classes, device, common, facts) if strategy_name == "als" else None

    def train_for_epoch(epoch):
        # the loader's order of the listing and its crops are a function of its seed
        return ImageNetLoader(root, "train", args.batch_size, args.image_size, device, seed=args.seed * 1000 + epoch,
                              min_scale=args.min_scale, listing=(files, labels, classes), check_files=False,
                              boxes=boxes, **common)
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


def make_mix(args):
    """The --aug mixer (None for none), with --mix-alpha as its Beta parameter where given, else the paper's."""
    if args.aug == "none":
        return None
    mixer = {"mixup": S.Mixup, "cutmix": S.CutMix, "ricap": S.RICAP}[args.aug]
    return mixer(seed=args.seed) if args.mix_alpha is None else mixer(args.mix_alpha, seed=args.seed)


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

