#!/usr/bin/env python3
"""Evaluate a checkpoint of tools/train_imagenet.py: the same validation metrics, the calibration report
(with temperature scaling fitted on the validation logits, reported beside) and the reliability diagram.
The same report for any model's outputs saved elsewhere (timm, Hugging Face, another framework): a file of
its validation logits and labels.

    python tools/evaluate.py runs/ldl/checkpoint.pt                  # the run's own validation set, as it was run
    python tools/evaluate.py runs/ldl/checkpoint.pt --data ROOT [--val-split val --image-size 224 --out DIR]
    python tools/evaluate.py runs/ce/checkpoint.pt runs/ls/checkpoint.pt runs/ldl/checkpoint.pt --out compared
    python tools/evaluate.py runs/ce runs/ls runs/ldl --out compared   # a run's folder: its checkpoint.pt
    python tools/evaluate.py vit_logits.pt runs/ldl/checkpoint.pt --out compared   # saved outputs beside a run
    python tools/evaluate.py timm/convnext_tiny resnet50 --data IMAGENET --out published   # libraries' weights

Installed, the same program is `psl-evaluate` (or `python -m pysoftlabel.cli.evaluate`).

Several inputs are compared: each one's report in OUT/<run>/, one table (OUT/comparison.md and .json) and
their reliability diagrams side by side (OUT/reliability.png).

Saved outputs: torch.save({"logits": Tensor[N, C], "labels": Tensor[N]}, "x.pt") or numpy.savez("x.npz",
logits=..., labels=...); "probabilities" (softmax outputs) may stand for "logits" (their log is used: the
same softmax). The data options below apply to checkpoints only.

A model name (resnet50, timm/convnext_tiny.fb_in1k: see tools/train_imagenet.py --arch) evaluates its
library's ImageNet weights (torchvision's or timm's, downloaded once) on --data, whose validation classes
must be the weights' classes in folder order (ImageNet's val/ of 1000 wnid folders), or some of ImageNet-1k's
as wnid folders (Imagenette, ImageNet-A, ImageNet-R: the logits of those classes). The images go through
this project's validation transform (resize to image size / 0.875, centre crop, ImageNet normalisation), so
top-1 can differ slightly from the figure the library publishes for its own transform.

By default the data and its handling are the training run's (its args.json, beside the checkpoint): the same
folder (the built-in synthetic dataset for a run without --data), validation split, resident or DALI
path, image size, batch size and --amp, so the report reproduces the run's own. Each option overrides.

Given boxes (--boxes, the run's, or DATA/boxes when it exists) it also reports the context-only confidence of Adaptive
Label Smoothing: the mean max-softmax on the largest box-free window of each validation image.
"""
import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.cli import ArgumentParser
from pysoftlabel.data.folder import missing_split, skipped_line
from pysoftlabel.data.imagenet import context_crops
from pysoftlabel.data.loaders import loader_dtype, validation_loader
from pysoftlabel.engine import (AMP_CHOICES, autocast_dtype, context_confidence, load_checkpoint,
                                model_logits, output_folder, parse_device, recipe_name, require_keys,
                                run_checkpoint, save_checkpoint, write_logits_report)
from pysoftlabel.jsontext import json_text
from pysoftlabel.metrics import ece_difference_interval, ece_with_interval, reliability_diagrams, rows_with_softmax
from pysoftlabel.models import (TIMM_PREFIX, check_model_name, default_weights, imagenet_class_indices, load_model,
                                pretrained_weights)


def main(argv=None):
    p = ArgumentParser(__doc__, "pysoftlabel.cli.evaluate")
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                   help="checkpoint.pt written by tools/train_imagenet.py (or the run's folder holding it), a file "
                        "of saved outputs (.pt, .npz), or a model name with pretrained weights (resnet50, "
                        "timm/<name>); several are compared")
    p.add_argument("--data", default=None, help="ImageNet-layout root or webdataset shards (default: the run's)")
    p.add_argument("--val-split", default=None, help="validation folder name (default: the run's, else val)")
    p.add_argument("--resident", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate the images at their own size, kept resident, as --resident training does "
                        "(default: as the run did)")
    p.add_argument("--image-size", type=int, default=None, help="evaluation crop (default: the run's, else 224)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's, else 64)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--amp", default=None, choices=AMP_CHOICES,
                   help="autocast dtype (default: the run's, else auto: bf16 on cuda, off on cpu)")
    p.add_argument("--out", default=None,
                   help="output folder (default: beside the checkpoint, eval/, or beside a saved-outputs file X, "
                        "X-eval/; for a model name, runs/eval/<name>; for several, comparison/)")
    p.add_argument("--save-logits", action="store_true",
                   help="also write each checkpoint's validation logits and labels (OUT/logits.pt, a saved-outputs "
                        "file: evaluate.py takes it back, alone or beside other models, without the model or data)")
    p.add_argument("--boxes", default=None,
                   help="PASCAL-VOC boxes root (default: the run's --boxes on the run's data, else DATA/boxes if "
                        "present)")
    p.add_argument("--n-bins", type=int, default=15,
                   help="bins of the ECE, MCE, their intervals and the reliability diagram (default: 15, equal "
                        "width, as Guo et al. 2017; adaptive ECE: as many equal-mass bins)")
    args = p.parse_args(argv)
    for name in ("image_size", "batch_size", "n_bins"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        device = parse_device(args.device)
    except ValueError as error:
        p.error(str(error))
    jobs = [plan(p, args, checkpoint, device) for checkpoint in args.checkpoints]  # every one checked first
    data_options = [f"--{name.replace('_', '-')}" for name in DATA_OPTIONS if getattr(args, name) is not None]
    outputs_only = all("logits" in job for job in jobs)
    if data_options and outputs_only:
        p.error(f"{', '.join(data_options)}: the data options apply to checkpoints; saved outputs carry their "
                "own labels")
    if args.save_logits and outputs_only:
        p.error("--save-logits: these are saved outputs already; it keeps a checkpoint's")
    several = len(jobs) > 1
    try:
        out = output_folder(args.out or ("comparison" if several else jobs[0]["default_out"]))
        labels = run_labels([job["name"] for job in jobs])
        summaries, outputs = [], []
        for job, label in zip(jobs, labels):
            evaluate_one = evaluate_outputs if "logits" in job else evaluate_checkpoint
            summary, logits, targets = evaluate_one(job, device, out / label if several else out, args.n_bins)
            print(json_text({"checkpoint": job["checkpoint"]} | {k: v for k, v in summary.items() if k != "bins"}))
            summaries.append(summary)
            outputs.append((logits, targets))
        if several:
            write_comparison(out, labels, jobs, summaries, outputs, args.n_bins)
    # Bad data or checkpoint; a report that cannot be written; an optional library (DALI) not installed.
    except (ValueError, OSError, ImportError) as error:
        raise SystemExit(str(error))


DATA_OPTIONS = ("data", "val_split", "resident", "image_size", "batch_size", "amp", "boxes")  # checkpoints only


def plan(p, args, checkpoint, device) -> dict:
    """What evaluating ``checkpoint`` takes: its state, and the data and options of its run (args.json) unless
    given; a bad one is a parser error naming it, before any checkpoint is evaluated. A file of saved outputs
    is read whole here."""
    if not Path(checkpoint).exists() and is_model_name(checkpoint):
        return pretrained_job(p, args, checkpoint, device)
    checkpoint = run_checkpoint(checkpoint)
    try:
        if Path(checkpoint).suffix == ".npz":
            return outputs_job(checkpoint, read_npz(checkpoint))
        state = load_checkpoint(checkpoint)
        if OUTPUT_KEYS & state.keys():
            return outputs_job(checkpoint, state)
        if not {"arch", "classes", "model"} & state.keys():
            raise ValueError(f"{checkpoint}: neither a checkpoint of tools/train_imagenet.py (arch, classes, model) "
                             f"nor saved outputs (labels, and logits or probabilities); it holds "
                             f"{', '.join(sorted(map(str, state))) or 'nothing'}")
        require_keys(state, checkpoint, ("arch", "classes", "model"))
    except ValueError as error:
        p.error(str(error))
    run = run_options(checkpoint)
    data = args.data or run.get("data") or run.get("data_cache")
    if data is None:
        p.error(f"--data: needed, since {checkpoint} has no args.json beside it to say which data its run used")
    return {"checkpoint": checkpoint, "name": Path(checkpoint).resolve().parent, "trained": trained(state),
            "default_out": Path(checkpoint).parent / "eval", "state": state,
            **data_plan(p, args, run, data, device)}


def is_model_name(name) -> bool:
    """Whether ``name`` (not a file) names a model: timm/<name> always, so that a missing timm is said."""
    if name.startswith(TIMM_PREFIX):
        return True
    try:
        check_model_name(name)
        return True
    except ValueError:
        return False


def pretrained_job(p, args, arch, device) -> dict:
    """The evaluation of ``arch``'s library weights (fetched when evaluated) on --data, which it needs."""
    try:
        trained_as = default_weights(arch)[0]
    except ValueError as error:
        p.error(str(error))
    if args.data is None:
        p.error(f"--data: needed to evaluate {arch}'s pretrained weights (ImageNet's validation set for ImageNet "
                "weights)")
    name = arch.replace("/", "-")  # timm/convnext_tiny: one folder, timm-convnext_tiny
    return {"checkpoint": arch, "arch": arch, "name": Path(name), "trained": trained_as,
            "default_out": Path("runs", "eval", name), **data_plan(p, args, {}, args.data, device)}


def data_plan(p, args, run, data, device) -> dict:
    """The data and options of an evaluation: the options given, else the run's (``run``: its args.json)."""
    split = args.val_split or run.get("val_split", "val")
    if not Path(data, split).is_dir():
        p.error(f"--data: {missing_split(data, split)}")
    # The run's --boxes go with the run's data; other data bring their own (DATA/boxes).
    boxes = Path(args.boxes or (args.data is None and run.get("boxes")) or Path(data, "boxes"))
    if args.boxes and not boxes.is_dir():
        p.error(f"--boxes: {args.boxes} does not exist")
    image_size = args.image_size or int(run.get("image_size", 224))
    return {"evaluated_on": f"{data}/{split} at {image_size} px", "image_size": image_size,
            "data": data, "split": split, "boxes": boxes,
            "resident": args.resident if args.resident is not None else bool(run.get("resident", False)),
            "batch_size": args.batch_size or int(run.get("batch_size", 64)),
            "amp": autocast_dtype(args.amp or run.get("amp", "auto"), device), "threads": int(run.get("threads", 2)),
            "save_logits": args.save_logits}


def evaluate_checkpoint(job, device, out, n_bins) -> tuple:
    """Writes the report of one planned checkpoint, or library model, into ``out``; returns (its summary,
    logits, labels), the two on the CPU."""
    data, split, image_size, batch_size = (job[k] for k in ("data", "split", "image_size", "batch_size"))
    state = job.get("state")
    val = validation_loader(data, split, batch_size, image_size, device, state and state["classes"],
                            resident=job["resident"], num_threads=job["threads"])
    classes = val.classes
    if state is not None:
        model = load_model(state["arch"], len(classes), image_size, state["model"], job["checkpoint"])
    else:
        model = pretrained_model(job, classes, image_size, f"{data}/{split}")
    model = model.to(device, memory_format=torch.channels_last)
    out = output_folder(out)
    skipped = getattr(val, "skipped", [])  # the resident path decodes every file, or stops naming it
    if skipped:
        print(skipped_line(skipped, "validation images"), file=sys.stderr)
    extra = {"skipped_images": len(skipped)}
    boxes = job["boxes"]
    context = context_crops(data, split, boxes, batch_size, image_size, device, classes,
                            dtype=loader_dtype(device)) if boxes.is_dir() else None
    if context is not None:
        extra.update(context_confidence=context_confidence(model, context, device, job["amp"]),
                     context_crops=context.samples)
    logits, labels = model_logits(model, val, device, job["amp"])
    summary = write_logits_report(logits, labels, out, extra=extra, n_bins=n_bins,
                                  title=f"{job['checkpoint']} ({job['trained']}): {job['evaluated_on']}")
    logits, labels = logits.cpu(), labels.cpu()
    if job["save_logits"]:
        save_checkpoint({"logits": logits, "labels": labels, "classes": classes}, out / "logits.pt")
    return summary, logits, labels


def pretrained_model(job, classes, image_size, folder) -> torch.nn.Module:
    """The library weights of ``job["arch"]`` for the data's ``classes``: as they are when they are the weights'
    classes; for some of ImageNet-1k's (wnid folders: Imagenette, ImageNet-A, ImageNet-R) the 1000-class model's
    logits of those classes, a softmax over them, as ImageNet-A and -R are evaluated (said on stderr and in
    the report's title). ValueError naming the mismatch otherwise."""
    weights = pretrained_weights(job["arch"], "default", image_size)
    subset = imagenet_class_indices(classes) if len(classes) < 1000 else None
    try:
        if subset is None:
            return load_model(job["arch"], len(classes), image_size, weights, job["trained"])
        model = ClassSubset(load_model(job["arch"], 1000, image_size, weights, job["trained"]), subset)
    except ValueError as error:  # most often a classifier for other classes than the data's
        raise ValueError(f"{job['arch']}: the weights' classes must be those of {folder} ({len(classes)}, in folder "
                         f"order), or ImageNet-1k's with wnid folders: {error}") from None
    job["trained"] += f", the logits of the data's {len(classes)} ImageNet classes"
    print(f"note: {folder} holds {len(classes)} of ImageNet's 1000 classes: {job['arch']} is evaluated on its logits "
          "of those classes (a softmax over them)", file=sys.stderr)
    return model


class ClassSubset(torch.nn.Module):
    """``model``'s logits of the classes ``indices``, in that order."""

    def __init__(self, model: torch.nn.Module, indices):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x):
        return self.model(x).index_select(1, self.indices)


OUTPUT_KEYS = {"logits", "probabilities"}  # a file of a model's saved outputs holds one of them, and labels


def read_npz(path) -> dict:
    """The arrays of a numpy ``.npz`` file (no pickled objects); ValueError naming it when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return dict(arrays)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None


def outputs_job(path, values) -> dict:
    """The evaluation of a model's saved outputs: ``values`` holds "labels" [N] (class indices) and "logits"
    [N, C] or "probabilities" [N, C] (rows of softmax outputs, taken as their log: the same softmax, so the
    same report). ValueError naming the file and what is wrong."""
    kinds = sorted(OUTPUT_KEYS & values.keys())
    if len(kinds) != 1 or "labels" not in values:
        raise ValueError(f"{path}: saved outputs are labels and one of logits, probabilities; it holds "
                         f"{', '.join(sorted(values)) or 'nothing'}")
    scores, labels = (torch.as_tensor(values[key]) for key in (kinds[0], "labels"))
    if scores.dim() != 2 or not scores.is_floating_point() or scores.shape[0] == 0:
        raise ValueError(f"{path}: {kinds[0]} must be a float array of shape [N, C] with N >= 1, got "
                         f"{scores.dtype} of shape {tuple(scores.shape)}")
    rows, classes = scores.shape
    if labels.shape != (rows,) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{path}: labels must be {rows} class indices (integers), got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    outside = ((labels < 0) | (labels >= classes)).nonzero()
    if len(outside):
        raise ValueError(f"{path}: labels must be in [0, {classes}), row {outside[0, 0].item()} has "
                         f"{labels[outside[0, 0]].item()}")
    scores = scores.float()
    if kinds[0] == "probabilities":
        sums = scores.sum(1)
        # Within 1%: bf16 softmax outputs sum to 1 only within about 3e-3 (fp16 4e-4), and the softmax of their
        # log renormalises each row anyway; logits or sigmoid outputs are far from it.
        if (scores < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-2):
            raise ValueError(f"{path}: probabilities must be non-negative rows summing to 1 (softmax outputs); "
                             "save logits otherwise")
        scores = scores.log()  # a class of probability 0 gets -inf: no mass, as in the softmax
    broken = (~rows_with_softmax(scores)).nonzero()
    if len(broken):
        raise ValueError(f"{path}: {kinds[0]} of {len(broken)} of {rows} rows are not finite (NaN or inf), the "
                         f"first row {broken[0, 0].item()}: the model diverged or the file is damaged")
    name = Path(path).resolve()
    return {"checkpoint": str(path), "name": name.with_name(name.stem), "logits": scores, "labels": labels.long(),
            "default_out": Path(path).with_name(f"{Path(path).stem}-eval"),
            "trained": f"saved {kinds[0]}", "evaluated_on": f"{rows} rows of {classes} classes"}


def evaluate_outputs(job, device, out, n_bins) -> tuple:
    """Writes the report of one file of saved outputs into ``out``; returns (its summary, logits, labels)."""
    logits, labels = job["logits"], job["labels"]
    summary = write_logits_report(logits.to(device), labels.to(device), output_folder(out), n_bins=n_bins,
                                  title=f"{job['checkpoint']}: {job['trained']}, {job['evaluated_on']}")
    return summary, logits, labels


def trained(state) -> str:
    """'resnet20, ldl + cutmix, after epoch 12': what a checkpoint holds."""
    return (f"{state['arch']}, {recipe_name(state.get('strategy_name', '?'), state.get('aug'))}, after epoch "
            f"{state.get('epoch', -1) + 1}" + (f" and {state['step']} steps" if state.get("step") else ""))


def run_labels(names) -> list:
    """A short unique label per input from its ``name``, a path (a checkpoint's run folder, a saved-outputs
    file without its suffix): the last part, with the folders above it where two share one (runs/a/ldl and
    runs/b/ldl: a-ldl, b-ldl)."""
    parents = [Path(name) for name in names]
    for depth in range(1, max(len(p.parts) for p in parents) + 1):
        labels = ["-".join(p.parts[-depth:]).lstrip("/-") for p in parents]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}-{label}" for i, label in enumerate(labels)]  # the same input given twice


def write_comparison(out, labels, jobs, summaries, outputs=(), n_bins=15):
    """OUT/comparison.md and .json (one row per input) and OUT/reliability.png (their diagrams side by side,
    as the papers' figures). With ``outputs`` (each input's (logits, labels)), every input evaluated on the
    first one's rows (the same labels, in the same order) gets its ECE minus the first's, with the paired
    bootstrap interval (:func:`~pysoftlabel.metrics.ece_difference_interval`)."""
    rows = [{"run": label, "checkpoint": job["checkpoint"], "trained": job["trained"], "data": job["evaluated_on"],
             **{k: v for k, v in summary.items() if k != "bins"}}
            for label, job, summary in zip(labels, jobs, summaries)]
    first_logits, first_labels = outputs[0] if outputs else (None, None)
    for row, (logits, row_labels) in list(zip(rows, outputs))[1:]:
        if logits.shape == first_logits.shape and torch.equal(row_labels, first_labels):
            difference = ece_difference_interval(first_logits, logits, row_labels, n_bins)
            row.update(zip(("ece_minus_first", "ece_minus_first_ci95_low", "ece_minus_first_ci95_high"), difference))
    write_text_atomically(out / "comparison.json", json_text(rows, indent=1))
    for row in rows:  # the ECE with its 95% bootstrap interval: overlapping intervals do not tell models apart
        row["ece_with_interval"] = ece_with_interval(row["ece"], row["ece_ci95_low"], row["ece_ci95_high"])
        row["ece_difference"] = ("–" if "ece_minus_first" not in row else
                                 f"{row['ece_minus_first']:+.4f} (95% CI {row['ece_minus_first_ci95_low']:+.4f} to "
                                 f"{row['ece_minus_first_ci95_high']:+.4f})")
    columns = [("top-1", "accuracy"), ("top-5", "acc5"), ("ECE", "ece_with_interval"), ("MCE", "mce"),
               ("NLL", "nll"), ("Brier", "brier"), ("ECE after TS, held out", "ece_after_temperature_heldout")]
    if any("ece_minus_first" in row for row in rows):  # rows on other data keep "–"
        rows[0]["ece_difference"] = "reference"
        columns.insert(3, (f"ECE − {rows[0]['run']}'s, paired", "ece_difference"))
    if any("context_confidence" in row for row in rows):  # given boxes: ALS's measure, beside the others
        columns.append(("context-only confidence", "context_confidence"))
        for row in rows:
            row.setdefault("context_confidence", "–")  # saved outputs have no images to crop
    lines = [f"# Calibration of {len(rows)} models", "", f"ECE and MCE over {n_bins} equal-width confidence bins.", ""]
    if len({row["data"] for row in rows}) > 1:
        lines += ["Not all evaluated on the same data: compare with care (the data column).", ""]
        print("note: the inputs were not all evaluated on the same data (comparison.md says which)",
              file=sys.stderr)
    lines += ["| run | trained | data | " + " | ".join(name for name, _ in columns) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |"]
    lines += [f"| {row['run']} | {row['trained']} | {row['data']} | "
              + " | ".join(row[key] if isinstance(row[key], str) else f"{row[key]:.4f}" for _, key in columns) + " |"
              for row in rows]
    write_text_atomically(out / "comparison.md", "\n".join(lines) + "\n")
    try:
        reliability_diagrams({label: summary["bins"] for label, summary in zip(labels, summaries)},
                             out / "reliability.png")
    except ImportError as error:
        print(f"no reliability.png: {error}", file=sys.stderr)


def run_options(checkpoint) -> dict:
    """The options of the tools/train_imagenet.py run that wrote ``checkpoint``, from its args.json ({} without
    one). Runs before 2026-12-02 wrote every value as a string: "None", "True" and "False" are read back."""
    path = Path(checkpoint).with_name("args.json")
    if not path.exists():
        return {}
    words = {"None": None, "True": True, "False": False}
    return {k: words.get(v, v) if isinstance(v, str) else v for k, v in json.loads(path.read_text()).items()}


if __name__ == "__main__":
    main()
