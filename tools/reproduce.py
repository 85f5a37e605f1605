#!/usr/bin/env python3
"""Reproduce the papers' comparisons: train a list of strategies on one dataset and recipe, over seeds, and
write one table (top-1, ECE, MCE, NLL, Brier, ECE after temperature scaling; mean ± std over seeds) with
the reliability diagrams side by side.

    python tools/reproduce.py --preset cifar10-cpu                 # CIFAR-10, resnet20, 2-core CPU budget
    python tools/reproduce.py --preset cifar10-gpu --seeds 0 1 2   # ResNet-18 (CIFAR stem), 30 epochs, bf16
    python tools/reproduce.py --preset imagenette-cpu --only ce,ls

Each run is one `tools/train_imagenet.py` process in OUT/<run>/seed<k> (git-ignored: checkpoints). When it
finishes, its record (metrics.jsonl, report.json, and run.json: wall time, device, date, commit) is copied to
RECORDS/<run>/seed<k>, which is tracked in git (docs/runs/<preset> by default): the tables are built from the
records, and a run with a record is not trained again, so a long table spreads over sessions and machines that
share nothing but the repository (a GPU lease adds a seed, the next session another). An unfinished run is
resumed from OUT. ldl and kd take the same seed's ce run as their teacher (the same recipe); where only the ce
record is left (a fresh checkout), the teacher is trained again from the same seed and the ce record is kept.
The data come from --data-dir, unpacked there from ../shared/data archives when missing.

A table is one recipe: arguments after -- that change the preset's recipe (--epochs 30, say) need their own
--records and --out, and a record trained with other options is refused, naming them.
"""
import argparse
import ctypes
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pysoftlabel.atomic import write_text_atomically, writing_folder
from pysoftlabel.cli import ArgumentParser
from pysoftlabel.engine import output_folder
from pysoftlabel.jsontext import json_text
from pysoftlabel.metrics import ece_with_interval, reliability_diagrams

HERE = Path(__file__).resolve().parent
CIFAR_RUNS = ["ce", "ls", "ols", "ldl", "online-ldl", "kd", "ce+cutmix", "ldl+cutmix"]
IMAGENETTE_RUNS = ["ce", "ls", "ols", "ldl"]
PRESETS = {
    # 2-core CPU: resnet20 at ~400-500 img/s; 1,000 images per class and 15 epochs keep the whole table
    # (8 runs, every epoch evaluated on the full 10,000-image test set) near one to two hours.
    "cifar10-cpu": {"dataset": "cifar10", "runs": CIFAR_RUNS, "args": [
        "--resident", "--val-split", "test", "--arch", "resnet20", "--train-per-class", "1000", "--epochs", "15",
        "--batch-size", "128", "--lr", "0.05", "--weight-decay", "5e-4", "--warmup-epochs", "1", "--device", "cpu"]},
    "cifar10-gpu": {"dataset": "cifar10", "runs": CIFAR_RUNS, "args": [
        "--resident", "--val-split", "test", "--arch", "cifar_resnet18", "--epochs", "30", "--batch-size", "512",
        "--lr", "0.05", "--weight-decay", "5e-4", "--warmup-epochs", "1", "--device", "cuda"]},
    # Imagenette at a reduced size on the CPU: ImageNet-stem resnet18 at 64 px on 400 images per class
    # (~100 img/s here: about 7 minutes per run, the full 3,925-image validation set every epoch).
    "imagenette-cpu": {"dataset": "imagenette2-224", "runs": IMAGENETTE_RUNS, "args": [
        "--arch", "resnet18", "--image-size", "64", "--train-per-class", "400", "--epochs", "6", "--batch-size", "64",
        "--lr", "0.1", "--min-scale", "0.25", "--device", "cpu"]},
    "imagenette-gpu": {"dataset": "imagenette2-224", "runs": IMAGENETTE_RUNS, "args": [
        "--arch", "resnet50", "--image-size", "160", "--epochs", "40", "--batch-size", "128", "--lr", "0.1",
        "--threads", "8", "--device", "cuda"]},
}
ARCHIVES = {"cifar10": ["cifar10.tar.gz"],
            "imagenette2-224": [f"imagenette2-224.tar.gz.part{i}" for i in range(3)]}
METRICS = [("top-1", "val_acc1"), ("ECE", "val_ece"), ("conf − acc", "confidence_gap"), ("MCE", "val_mce"),
           ("NLL", "val_nll"), ("Brier", "val_brier"), ("ECE after TS", "ece_after_temperature"),
           ("ECE after TS, held out", "ece_after_temperature_heldout")]


def parse_args(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--only", default=None, help="comma-separated subset of the preset's runs, e.g. ce,ls")
    p.add_argument("--out", default=None, help="runs and table folder (default: runs/reproduce/<preset>)")
    p.add_argument("--records", default=None,
                   help="finished runs' records, tracked in git (default: docs/runs/<preset> of the repository)")
    p.add_argument("--data-dir", default=str(HERE.parent / ".data"), help="where datasets are (default: %(default)s)")
    p.add_argument("--archives", default=str(HERE.parent.parent / "shared" / "data"),
                   help="where the dataset archives are, to unpack missing data (default: %(default)s)")
    p.add_argument("--table-only", action="store_true", help="write the table from finished runs, train nothing")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more train_imagenet.py arguments")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    args.runs = preset["runs"] if args.only is None else list(dict.fromkeys(args.only.split(",")))  # once each
    unknown = [r for r in args.runs if r not in preset["runs"]]
    if unknown:
        p.error(f"--only: {unknown} not in preset {args.preset}: {', '.join(preset['runs'])}")
    if any(not 0 <= seed < 2**32 for seed in args.seeds):
        p.error(f"--seeds must be in [0, 2**32) (numpy's seeds), got {args.seeds}")
    args.seeds = list(dict.fromkeys(args.seeds))
    try:
        args.out = output_folder(args.out or f"runs/reproduce/{args.preset}")
    except ValueError as error:
        p.error(str(error))
    args.records = Path(args.records or HERE.parent / "docs" / "runs" / args.preset)
    args.extra = [a for a in args.extra if a != "--"]
    try:
        check_records_recipe(args)
    except ValueError as error:
        p.error(str(error))
    if args.table_only and not any(finished(args, run, seed) for run in args.runs for seed in args.seeds):
        p.error(f"--table-only: {args.records} holds no finished run of {', '.join(args.runs)} for seeds "
                f"{args.seeds}: train them first (the same command without --table-only), or give --records")
    return args


def dataset(args, name):
    """The dataset folder, unpacked from the archives when missing."""
    root = Path(args.data_dir) / name
    if (root / "train").is_dir():
        return root
    parts = [Path(args.archives) / a for a in ARCHIVES[name]]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"data: {root} does not exist and the archives {missing} are missing (--archives)")
    print(f"unpacking {name} into {args.data_dir} ...", flush=True)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    cat = subprocess.Popen(["cat", *map(str, parts)], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=cat.stdout, mode="r|gz") as tar:
        tar.extractall(args.data_dir, filter="data")
    cat.wait()
    return root


RECORD_FILES = ("metrics.jsonl", "report.json")


def run_dir(args, run, seed):
    return args.out / run / f"seed{seed}"


def record_dir(args, run, seed):
    return args.records / run / f"seed{seed}"


def finished(args, run, seed):
    return (record_dir(args, run, seed) / "report.json").exists()


# train_imagenet.py options that are not the recipe: what reproduce.py sets per run (keyed by the record's
# folder) and what says only where the data are, how fast to go or how much of it to train in one call.
NOT_RECIPE = {"--data", "--strategy", "--aug", "--seed", "--out", "--resume", "--teacher", "--device", "--threads",
              "--data-cache", "--stop-after"}


def recipe(args):
    """The train_imagenet.py arguments that every run of this table shares."""
    return PRESETS[args.preset]["args"] + args.extra


def recipe_options(arguments):
    """{option: [values]} of train_imagenet.py ``arguments``, the options in NOT_RECIPE left out."""
    options, option = {}, None
    for token in arguments:
        if token.startswith("--"):
            option, _, value = token.partition("=")
            options[option] = [value] if value else []
        elif option is not None:
            options[option].append(token)
    return {k: v for k, v in options.items() if k not in NOT_RECIPE}


def check_records_recipe(args):
    """ValueError when a record of this preset's runs and seeds was trained with another recipe (other
    arguments after --, or an older preset): its figures would sit in a table that names this one."""
    current = recipe_options(recipe(args))
    for run in PRESETS[args.preset]["runs"]:  # ldl's and kd's teacher is the ce run, asked for or not
        for seed in args.seeds:
            run_info = record_dir(args, run, seed) / "run.json"
            if not finished(args, run, seed) or not run_info.exists():
                continue
            info = json.loads(run_info.read_text())
            # records written before 2026-12-04 hold the command only: its arguments after the program name
            recorded = recipe_options(info["recipe"] if "recipe" in info else info["command"].split()[1:])
            if recorded != current:
                differ = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
                raise ValueError(
                    f"{run_info.parent} was trained with {_spelled(recorded, differ)}; this table's recipe has "
                    f"{_spelled(current, differ)}. One table is one recipe: give --records and --out folders of "
                    f"their own to this one, or the recorded options")


def _spelled(options, keys):
    """'--epochs 2, no --resident': the options ``keys`` of ``options`` as a command line gives them."""
    return ", ".join(" ".join([k, *options[k]]) if k in options else f"no {k}" for k in keys)


def device_name(preset):
    if "cuda" not in PRESETS[preset]["args"]:
        return "CPU"
    import torch
    return torch.cuda.get_device_name()


def source_commit():
    """The commit of the code that trains (short hash, "+changes" where tracked files outside docs/, which
    holds the records, differ from it): a record says which code made it, since the kernels' last bits change
    a seed's run. Outside a git checkout (a GPU lease gets a copy of the files without .git) it is
    $PYSOFTLABEL_COMMIT, as tools/prepare_lease.sh prints it, or None."""
    try:
        git = ["git", "-C", str(HERE)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/docs"],
                                 capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("PYSOFTLABEL_COMMIT") or None
    return head.stdout.strip() + ("+changes" if changes.stdout.strip() else "")


def train_run(args, run, seed, data):
    """Trains (or resumes) one run in its own process and records it, unless a record exists (a ce run
    trained again as a teacher keeps the record of its first training)."""
    strategy, _, aug = run.partition("+")
    folder = run_dir(args, run, seed)
    cmd = [sys.executable, str(HERE / "train_imagenet.py"), "--data", str(data), "--strategy", strategy,
           "--aug", aug or "none", "--seed", str(seed), "--out", str(folder), "--resume",
           *recipe(args)]
    if strategy in ("ldl", "kd"):
        teacher = run_dir(args, "ce", seed) / "checkpoint.pt"
        if not ((run_dir(args, "ce", seed) / "report.json").exists() and teacher.exists()):  # finished, and here
            if finished(args, "ce", seed):
                print(f"ce seed {seed}: recorded, but its checkpoint is not here: training it again as the teacher",
                      flush=True)
            train_run(args, "ce", seed, data)
        cmd += ["--teacher", str(teacher)]
    print(" ".join(cmd), flush=True)
    commit = source_commit()
    spent = folder / "wall_seconds"  # the calls before this one that trained this run (interrupted, resumed)
    start = time.time() - (float(spent.read_text()) if spent.exists() else 0.0)
    status = run_to_its_end(cmd)
    seconds = time.time() - start
    if folder.is_dir():
        write_text_atomically(spent, f"{seconds:.1f}\n")
    if status != 0:
        raise SystemExit(f"{run} seed {seed}: train_imagenet.py stopped with exit status {status} (its message is "
                         "above); the same command continues the table, resuming this run")
    if not (folder / "report.json").exists():
        raise SystemExit(f"{run} seed {seed}: stopped before its last epoch (--stop-after); the same command "
                         "continues it")
    print(f"{run} seed {seed}: {seconds:.0f} s", flush=True)
    if not finished(args, run, seed):
        write_record(record_dir(args, run, seed), folder, {
            "seconds": round(seconds, 1), "device": device_name(args.preset), "date": time.strftime("%Y-%m-%d"),
            "commit": commit, "command": " ".join(["tools/train_imagenet.py", *cmd[2:]]), "recipe": recipe(args)})


def run_to_its_end(cmd) -> int:
    """Runs ``cmd`` and returns its exit status. Ctrl-C and SIGTERM are passed on to it, once each, and
    waited for: train_imagenet.py answers the first by checkpointing after its running step and the second
    by stopping at once (subprocess.run would kill it 0.25 s after a Ctrl-C, and the terminal's Ctrl-C,
    sent to the whole foreground group, would reach it twice); hence its own process group. Should this
    process die at once (SIGKILL), the run gets SIGTERM (Linux), so that it is never left training alone."""
    child = subprocess.Popen(cmd, process_group=0,
                             preexec_fn=_terminate_with_parent if sys.platform == "linux" else None)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate_with_parent():
    """In the child, before exec: SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def write_record(record, folder, run_info):
    """The record of the finished run in ``folder``: its RECORD_FILES and run.json (``run_info``), in the
    folder ``record`` written whole or not at all, since a record that is there counts as finished and is
    not trained again."""
    with writing_folder(record) as partial:
        for name in RECORD_FILES:
            shutil.copyfile(folder / name, partial / name)
        (partial / "run.json").write_text(json_text(run_info, indent=1) + "\n")


def mean_std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def collect(args, run):
    """Per seed: final-epoch metrics (+ ECE after temperature scaling) and the best epoch by top-1."""
    rows = []
    for seed in args.seeds:
        folder = record_dir(args, run, seed)
        if not finished(args, run, seed):
            continue
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        report = json.loads((folder / "report.json").read_text())
        run_info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        confidence = sum(b["count"] * b["confidence"] for b in report["bins"]) / report["count"]
        final = dict(records[-1], ece_after_temperature=report["ece_after_temperature"],
                     ece_after_temperature_heldout=report.get("ece_after_temperature_heldout"),  # not in older runs
                     ece_interval=(report.get("ece_ci95_low"), report.get("ece_ci95_high")),  # nor this
                     confidence_gap=confidence - report["accuracy"])  # > 0: over-confident
        best = max(records, key=lambda r: r["val_acc1"])
        rows.append({"final": final, "best": best, "bins": report["bins"], "epochs": len(records),
                     "seconds": run_info.get("seconds"), "seed": seed,
                     "trained": f"{run_info.get('date', 'date not recorded')} at "
                                f"{run_info.get('commit') or 'a commit not recorded'}"})
    return rows


def write_table(args):
    header = ["run", "seeds"] + [name for name, _ in METRICS] + ["best-epoch top-1 (ECE) ⚑", "train img/s", "run time"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    diagrams = {}
    trained = {}  # when and by which code, for the table's provenance line
    for run in args.runs:
        rows = collect(args, run)
        for r in rows:
            trained.setdefault(r["trained"], []).append(f"{run}/seed{r['seed']}")
        if not rows:
            lines.append(f"| {run} | 0 |" + " – |" * (len(header) - 2))
            continue
        cells = [run, str(len(rows))] + [mean_std([r["final"][key] for r in rows]) for _, key in METRICS]
        first = rows[0]
        if len(rows) == 1:  # one seed: how far its ECE could move on another draw of the data
            cells[2 + [key for _, key in METRICS].index("val_ece")] = ece_with_interval(first["final"]["val_ece"],
                                                                                      *first["final"]["ece_interval"])
        best = ", ".join(f"{r['best']['val_acc1']:.4f} ({r['best']['val_ece']:.4f}) @ {r['best']['epoch'] + 1}"
                         for r in rows)
        seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
        cells += [best, f"{statistics.mean(r['final']['img_per_s'] for r in rows):.0f}",
                  f"{statistics.mean(seconds):.0f} s" if seconds else "–"]
        lines.append("| " + " | ".join(cells) + " |")
        diagrams[f"{run}  ECE {first['final']['val_ece']:.3f}"] = first["bins"]
    preset = PRESETS[args.preset]
    text = "\n".join([f"# {args.preset}: {preset['dataset']}, seeds {args.seeds}", "",
                      "Final epoch (mean ± std over seeds; with one seed, the ECE's 95% bootstrap interval beside",
                      "it); conf − acc > 0 is over-confidence; ⚑ the best epoch by validation top-1 is what the",
                      "papers' code reports (picked on the test set: optimistic).", "",
                      "Recipe: `" + " ".join(recipe(args)) + "`", "",
                      "Trained: " + "; ".join(f"{when} ({', '.join(runs)})" for when, runs in sorted(trained.items())),
                      "", *lines, ""])
    write_text_atomically(args.out / "results.md", text)
    print(text, flush=True)
    if diagrams:
        try:
            reliability_diagrams(diagrams, args.out / "reliability.png")
        except ImportError as error:
            print(f"no reliability.png: {error}")


def main(argv=None):
    args = parse_args(argv)
    if not args.table_only:
        data = dataset(args, PRESETS[args.preset]["dataset"])
        for seed in args.seeds:
            for run in args.runs:
                if finished(args, run, seed):
                    print(f"{run} seed {seed}: done", flush=True)
                    continue
                train_run(args, run, seed, data)
    write_table(args)


if __name__ == "__main__":
    main()
