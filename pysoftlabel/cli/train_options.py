"""Train an image classifier with a soft-label strategy and report its calibration.

    python tools/train_imagenet.py --strategy ldl                 # built-in synthetic data, teacher included
    python tools/train_imagenet.py --strategy ols --data ROOT --arch resnet50 --image-size 224 --epochs 90

Installed, the same program is `psl-train` (or `python -m pysoftlabel.cli.train`).

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
import os
import sys
from pathlib import Path

import torch

from pysoftlabel.cli import ArgumentParser
from pysoftlabel.data.folder import missing_split
from pysoftlabel.engine import AMP_CHOICES, output_folder, parse_device, run_checkpoint
from pysoftlabel.models import check_model_name, default_weights

STRATEGIES = ("ce", "ls", "ols", "als", "ldl", "online-ldl", "kd")
# The strategies that use each strategy option. Given to another strategy an option is ignored, which a note
# says: not an error, so that one script may loop over the strategies with the same options.
STRATEGY_OPTIONS = {"eps": ("ls", "als"), "als_eps": ("als",), "boxes": ("als",), "ols_alpha": ("ols",),
                    "ols_init": ("ols",), "ols_freeze_at": ("ols",), "kd_alpha": ("kd",), "kd_temperature": ("kd",),
                    "ema_decay": ("online-ldl",), "online_weight": ("online-ldl",)}
# Each optimiser's defaults of the options left out (learning rate per 64 images).
OPTIMIZERS = {"sgd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
              "adamw": {"lr": 6.25e-5, "weight_decay": 0.05}}


def parse_args(argv=None):
    p = ArgumentParser(__doc__, "pysoftlabel.cli.train")
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
    g.add_argument("--kd-alpha", type=float, default=0.1,
                   help="weight of the distillation term (alpha T^2 KL) beside the hard CE's 1 (default: 0.1)")
    g.add_argument("--kd-temperature", type=float, default=3.0, help="KD temperature (default: 3)")
    g.add_argument("--ema-decay", type=float, default=None,
                   help="online-ldl EMA decay per step (default: 1 - 2 / steps per epoch: a half-epoch horizon)")
    g.add_argument("--online-weight", type=float, default=0.8,
                   help="online-ldl weight of the EMA distribution, reached linearly at the last epoch (default: 0.8)")
    g.add_argument("--aug", default="none", choices=("none", "mixup", "cutmix", "ricap"),
                   help="mixing augmentation (default: none)")
    g.add_argument("--mix-alpha", type=float, default=None,
                   help="--aug's Beta(a, a): of the mixing weight for mixup and cutmix, of the boundary point for "
                        "ricap (default: the papers' 1 for mixup and cutmix, 0.3 for ricap; DeiT's ImageNet recipe "
                        "takes 0.8 for mixup)")
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
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model, and the forwards of an ldl or kd teacher or online-ldl's average")
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
        p.error(f"--data: {missing_split(args.data, 'train')}")
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
    if args.mix_alpha is not None and args.aug == "none":  # a note, as for a strategy's options: a table's
        note("--aug none ignores --mix-alpha")              # recipe (tools/reproduce.py) gives it to every run
        args.mix_alpha = None
    if args.milestones is not None and args.schedule != "multistep":
        p.error(f"--milestones: the {args.schedule} schedule has none; add --schedule multistep or drop them")
    if args.min_scale is None:
        args.min_scale = 0.08 if args.data is not None else 0.35
    ignored = [f"--{name.replace('_', '-')} ({', '.join(users)})" for name, users in STRATEGY_OPTIONS.items()
               if args.strategy not in users and getattr(args, name) != p.get_default(name)]
    if ignored:
        note(f"--strategy {args.strategy} ignores {', '.join(ignored)}")
    return args


def note(text):
    """A note on stderr, once per run: by the first process under torchrun, whose every process parses."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr)


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
        ("kd_alpha", 0 <= args.kd_alpha < float("inf"), "finite and at least 0"),
        ("kd_temperature", 0 < args.kd_temperature < float("inf"), "positive and finite"),
        ("ema_decay", optional(args.ema_decay, lambda v: 0 <= v < 1), "in [0, 1)"),  # as the strategy's
        ("online_weight", 0 <= args.online_weight <= 1, "in [0, 1]"),
        ("mix_alpha", optional(args.mix_alpha, lambda v: 0 < v < float("inf")), "positive and finite"),
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
        note("--amp fp16 on the CPU has no fast convolution kernels (a ResNet-20 step is 100x slower than bf16 "
             "or off here): use it to test fp16 loss scaling, not to train")


# The options that shape a run's trajectory: a --resume with any of them changed would not continue the run
# (a longer --epochs, say, would follow the checkpoint's schedule, already at its end), so it is refused.
# --pretrained is not one: it sets the first weights only, and a resumed run's are in its checkpoint.
RECIPE = ("epochs", "batch_size", "image_size", "min_scale", "train_per_class", "resident", "cutout", "val_split",
          "optimizer", "lr", "momentum", "weight_decay", "warmup_epochs", "schedule", "milestones", "seed", "amp",
          "eps", "als_eps", "ols_alpha", "ols_init", "ols_freeze_at", "kd_alpha", "kd_temperature", "ema_decay",
          "online_weight", "mix_alpha")


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
        if isinstance(value, bool) or value is None:  # None: the option was not given (its default)
            return flag if value else f"no {flag}"
        if key != "classes":
            return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        return f"{len(value)} classes ({', '.join(map(str, value[:3]))}{', ...' if len(value) > 3 else ''})"
    return ", ".join(one(k, values[k]) for k in keys)

