"""One training epoch and one evaluation pass."""
import time
import warnings

import torch

from ..metrics import AccuracyStats, CalibrationStats, ContextConfidence, rows_with_softmax
from ..strategies.mix import mixed_loss
from .distributed import all_reduce_

__all__ = ["train_one_epoch", "evaluate", "context_confidence", "autocast_dtype", "AMP_CHOICES", "parse_device",
           "Diverged"]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def autocast_dtype(choice: str, device: torch.device):
    """The autocast dtype of an ``--amp`` choice: ``auto`` is bf16 on CUDA and none (fp32) on the CPU."""
    if choice not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {choice!r}")
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice]


def parse_device(name: str) -> torch.device:
    """The device of a ``--device`` argument; ValueError naming the problem when it is not one or has no GPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):  # the loaders' and the mixed precision's two kinds
        raise ValueError(f"--device {name}: the tools train and evaluate on cpu or cuda (cuda:1, ...), not on "
                         f"{device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible here (use --device cpu)")
    return device


def _to(batch, device):
    """``batch`` on ``device`` as a dict: this project's loaders give dicts (``image``, ``label``, ...); an
    (images, labels) pair, as torchvision's datasets give through a DataLoader, becomes one."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(torch.is_tensor(v) for v in batch):
        batch = {"image": batch[0], "label": batch[1]}
    if not isinstance(batch, dict):
        raise ValueError(f"loader: a batch must be a dict with 'image' and 'label' or an (images, labels) pair of "
                         f"tensors, got a {type(batch).__name__}"
                         + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _stop_agreed(stop, step, device):
    """``stop()`` as all ranks agree on it: every step in one process; under DDP every 10th step (one small
    all-reduce), so that all ranks leave the epoch after the same step."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stop()
    if step % 10:
        return False
    return bool(all_reduce_(torch.tensor(float(stop()), device=device), torch.distributed.ReduceOp.MAX))


class Diverged(ValueError):
    """A training step's loss was not finite and, with no loss scaler to skip the step, its gradient has
    reached the weights."""


def _any_nonfinite(nonfinite, step, device, final=False):
    """Whether a step so far had a non-finite loss, as all ranks agree: asked after every step on the CPU (no
    cost), every 50th on a GPU (a host synchronisation), every 10th under DDP (a small all-reduce, so that
    every rank stops after the same step), and at the end of the epoch."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    every = 10 if distributed else (1 if device.type == "cpu" else 50)
    if not final and (step + 1) % every:
        return False
    return bool(all_reduce_(nonfinite.clone(), torch.distributed.ReduceOp.MAX) > 0)


def _schedule_step(scheduler, first):
    """``scheduler.step()``. The schedule moves on with every step, a step the fp16 scaler skipped too (counted
    in train_nonfinite_steps); PyTorch warns of a skipped step only at a scheduler's first step, which can only
    be a call's ``first``, so that step alone (not every step: the filter is process-wide) silences it."""
    if not first:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        scheduler.step()


def train_one_epoch(model, loader, strategy, optimizer, device, scheduler=None, scaler=None, mix=None,
                    amp_dtype=None, progress=None, start_step=0, stop=None):
    """Trains one epoch over ``loader``'s batches (dicts with ``image`` and ``label``, or (images, labels)
    pairs as a torchvision DataLoader gives them); returns ``{"train_loss", "train_acc1", "train_ece",
    "train_nonfinite_steps", "lr", "img_per_s", "train_seconds", "steps", "epoch_steps"}`` over all ranks
    (the speed and the wall time are this rank's; ``lr`` is the learning rate of the epoch's last step).

    ``mix`` (Mixup / CutMix / RICAP) mixes each batch; ``strategy.loss`` computes the loss through the fused
    operator and gathers training calibration (against the first label) in the same pass. ``progress(step,
    steps)`` is called after each step. Under DDP every rank runs the smallest rank's number of steps, since
    a rank that stopped early would leave the others waiting in the gradient all-reduce.

    Interruption: ``stop()`` is polled between steps; when it is true the epoch ends there and ``steps`` <
    ``epoch_steps``. ``start_step`` resumes such an epoch: the first batches are drawn (so that the loader's
    randomness advances as before) but not trained on; the figures then cover the steps trained here.

    A step whose loss is not finite (NaN or inf): with a loss ``scaler`` (fp16) the scaler skips it, and it
    is counted in ``train_nonfinite_steps`` (summed over ranks) and left out of the training figures; without
    one its gradient has reached the weights, and :class:`Diverged` is raised within a few steps (before the
    caller writes a checkpoint of the broken weights)."""
    model.train()
    calib = CalibrationStats(device=device, skip_nonfinite=True)
    nonfinite = torch.zeros((), dtype=torch.float64, device=device)    # steps with a non-finite loss
    loss_images = torch.zeros((), dtype=torch.float64, device=device)  # images of the other steps
    steps = int(all_reduce_(torch.tensor(len(loader), device=device), torch.distributed.ReduceOp.MIN))
    total_loss, images, start, done = torch.zeros((), device=device), 0, time.perf_counter(), start_step
    lr = optimizer.param_groups[0]["lr"]
    for step, batch in zip(range(steps), loader):
        if step < start_step:
            continue
        if stop is not None and _stop_agreed(stop, step, device):
            break
        batch = _to(batch, device)
        if mix is not None:
            batch = mix(batch)
        # The loss too runs under autocast: a teacher's or EMA model's forward inside the strategy then uses
        # the same dtype as the student's; the fused loss itself always gets fp32 logits.
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"])
            loss = mixed_loss(strategy, logits.float() if amp_dtype is not None else logits, batch, model, calib)
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]  # this step's, before the scheduler moves on
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        strategy.after_step(model)
        if scheduler is not None:
            _schedule_step(scheduler, first=step == start_step)
        finite = torch.isfinite(loss.detach())
        nonfinite += ~finite
        total_loss += torch.where(finite, loss.detach(), 0.0) * len(batch["label"])
        loss_images += finite * len(batch["label"])
        images += len(batch["label"])
        done = step + 1
        if scaler is None and _any_nonfinite(nonfinite, step, device):
            raise _diverged(done)
        if progress is not None:
            progress(done, steps)
    if scaler is None and _any_nonfinite(nonfinite, done, device, final=True):
        raise _diverged(done)
    elapsed = time.perf_counter() - start
    calib.all_reduce()
    totals = all_reduce_(torch.stack([total_loss.double(), loss_images, nonfinite,
                                      torch.tensor(float(images), device=device, dtype=torch.float64)]))
    loss_sum, loss_images, nonfinite_steps, images = totals.tolist()
    return {"train_loss": loss_sum / max(loss_images, 1), "train_acc1": calib.accuracy, "train_ece": calib.ece,
            "train_nonfinite_steps": int(nonfinite_steps), "lr": lr,
            "img_per_s": images / elapsed if elapsed > 0 else float("nan"), "train_seconds": elapsed, "steps": done,
            "epoch_steps": steps}


def _diverged(step):
    return Diverged(f"training diverged: the loss was not finite (NaN or inf) by step {step} of the epoch and "
                    "its gradient reached the weights; nothing of this epoch is saved (an earlier epoch's "
                    "checkpoint stays). Lower --lr or warm up longer (--warmup-epochs)")


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None):
    """Evaluates over ``loader``'s batches (as :func:`train_one_epoch` takes them); returns ({val_acc1, val_acc5,
    val_ece, val_mce, val_nll, val_brier}, the CalibrationStats). ValueError, once every batch is evaluated,
    when the model's logits of any image are not finite (:func:`check_finite_outputs`)."""
    model.eval()
    # Non-finite rows are counted, not raised at once: every rank evaluates all of its batches and reaches the
    # all_reduce, and all ranks then raise alike (a rank raising alone would leave the others waiting).
    calib = CalibrationStats(device=device, skip_nonfinite=True)
    acc = AccuracyStats((1, 5), device=device)
    for batch in loader:
        batch = _to(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"]).float()
        calib.update(logits, batch["label"])
        # Rows without a softmax are left to calib's count: AccuracyStats would raise on them at once.
        acc.update(logits, batch["label"].masked_fill(~rows_with_softmax(logits), -100), ignore_index=-100)
    calib.all_reduce()
    acc.all_reduce()
    check_finite_outputs(calib.nonfinite, calib.nonfinite + calib.count, amp_dtype)
    return {"val_acc1": acc.accuracy(1), "val_acc5": acc.accuracy(5), "val_ece": calib.ece, "val_mce": calib.mce,
            "val_nll": calib.nll, "val_brier": calib.brier}, calib


def check_finite_outputs(nonfinite: int, images: int, amp_dtype=None) -> None:
    """ValueError when the model's logits of ``nonfinite`` of the ``images`` evaluated were not finite:
    figures without those images would flatter the model."""
    if nonfinite:
        hint = " (fp16 overflows past 65504: evaluate in bf16 or fp32)" if amp_dtype == torch.float16 else ""
        raise ValueError(f"evaluation: the model's logits are not finite (NaN or inf) on {nonfinite} of {images} "
                         f"images{hint}")


@torch.no_grad()
def context_confidence(model, loader, device, amp_dtype=None) -> float:
    """Mean max-softmax of the model on context-only crops (the ALS evaluation), over all ranks; ValueError, as
    :func:`evaluate`, when the model's logits of any crop are not finite."""
    model.eval()
    conf = ContextConfidence(device=device)
    nonfinite = torch.zeros((), dtype=torch.float64, device=device)
    for batch in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"].to(device)).float()
        finite = rows_with_softmax(logits)  # the others counted, raised once all ranks have theirs
        nonfinite += (~finite).sum()
        conf.update(logits[finite])
    conf.all_reduce()
    nonfinite = int(all_reduce_(nonfinite))
    check_finite_outputs(nonfinite, nonfinite + conf.count, amp_dtype)
    return conf.mean
