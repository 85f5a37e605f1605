"""The training program (tools/train_imagenet.py, psl-train): one run, or a teacher's and then its
student's, with checkpoints, exact --resume and a clean stop on SIGTERM or Ctrl-C. Its options and their
usage are in pysoftlabel.cli.train_options."""
import signal
import sys
import time

import torch

from pysoftlabel.atomic import write_text_atomically
from pysoftlabel.cli.epoch_log import EpochLog
from pysoftlabel.cli.train_options import check_same_run, parse_args, recipe
from pysoftlabel.cli.train_setup import (data_root, load_teacher, make_loaders, make_mix, make_optimizer,
                                         make_scheduler, make_strategy, make_val_loader, rng_states, seed_everything,
                                         start_from_pretrained)
from pysoftlabel.engine import (CheckpointWriter, Diverged, autocast_dtype, context_confidence, evaluate,
                                check_checkpoint, load_checkpoint, recipe_name, train_one_epoch,
                                write_calibration_report)
from pysoftlabel.engine.distributed import barrier, init_distributed, is_main_process, shutdown_distributed
from pysoftlabel.jsontext import json_text
from pysoftlabel.metrics import ece_with_interval
from pysoftlabel.models import create_model


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
    if args.compile:
        strategy.compile_forwards()
    mix = make_mix(args)
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
