"""The end-of-run calibration report of a model on a loader, shared by train_imagenet.py and evaluate.py."""
from pathlib import Path

import torch

from ..metrics import (AccuracyStats, AdaptiveCalibrationStats, ClasswiseCalibrationStats, calibration_report,
                       calibration_stats, ece_interval, ece_with_interval, fit_temperature, heldout_temperature_ece,
                       reliability_diagram, rows_with_softmax)
from .loop import check_finite_outputs

__all__ = ["write_calibration_report", "write_logits_report", "model_logits", "recipe_name", "output_folder"]


def output_folder(path, option: str = "--out") -> Path:
    """``path`` as a folder that exists (created with its parents); ValueError naming ``option`` when it is a
    file or cannot be created, so that a tool stops before its work, not at its first write."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{option}: {path} is a file, not a folder") from None
    except OSError as error:
        raise ValueError(f"{option}: cannot create {path} ({error.strerror})") from None
    return path


def recipe_name(strategy_name, aug) -> str:
    """'ldl', 'ldl + cutmix': a run's strategy and mixing augmentation, as report titles name them."""
    return strategy_name if aug in (None, "none") else f"{strategy_name} + {aug}"


@torch.no_grad()
def model_logits(model, loader, device, amp_dtype=None):
    """(logits [N, C] as fp32, labels [N]) of ``model`` in eval mode over every batch of ``loader``; ValueError
    when any image's logits are not finite (:func:`check_finite_outputs`)."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits.append(model(batch["image"].to(device)).float())
        labels.append(batch["label"].to(device))
    logits = torch.cat(logits)
    check_finite_outputs(int((~rows_with_softmax(logits)).sum()), len(logits), amp_dtype)
    return logits, torch.cat(labels)


def write_calibration_report(model, loader, device, out, amp_dtype=None, name="report", extra=None,
                             title=None, n_bins=15) -> dict:
    """:func:`write_logits_report` of ``model`` over ``loader`` (:func:`model_logits`)."""
    return write_logits_report(*model_logits(model, loader, device, amp_dtype), out, name, extra, title, n_bins)


@torch.no_grad()
def write_logits_report(logits, labels, out, name="report", extra=None, title=None, n_bins=15) -> dict:
    """Writes ``out/<name>.md``, ``out/<name>.json`` (ECE with its 95% bootstrap interval, MCE, NLL, Brier,
    top-1/top-5, adaptive and classwise ECE, the ECE after temperature scaling fitted on these logits,
    optimistic, and held out (two folds, each scaled by the temperature of the other), and any ``extra``
    figures) and ``out/reliability.png``, headed by ``title``, for ``logits`` [N, C] and ``labels`` [N] from
    any model; returns the summary. Every binned figure takes ``n_bins`` bins (15: Guo et al. 2017), which
    the summary records."""
    out, device = Path(out), logits.device
    cal = calibration_stats(logits, labels, n_bins)
    t = fit_temperature(logits, labels)
    adaptive = AdaptiveCalibrationStats(n_bins, device=device)
    classwise = ClasswiseCalibrationStats(logits.shape[1], n_bins, device=device)
    for chunk, chunk_labels in zip(logits.split(4096), labels.split(4096)):  # classwise builds [rows, C] indices
        adaptive.update(chunk, chunk_labels)
        classwise.update(chunk, chunk_labels)
    low, high = ece_interval(logits, labels, n_bins)
    extra = {"n_bins": n_bins, "ece_ci95_low": low, "ece_ci95_high": high,
             "acc5": AccuracyStats((1, 5), device).update(logits, labels).accuracy(5), "adaptive_ece": adaptive.ece,
             "classwise_ece": classwise.ece, "temperature": t,
             "ece_after_temperature": calibration_stats(logits / t, labels, n_bins).ece,
             "ece_after_temperature_heldout": heldout_temperature_ece(logits, labels, n_bins=n_bins),
             **(extra or {})}
    summary = calibration_report(cal, out, name, extra=extra, title=title)
    try:
        reliability_diagram(cal, out / "reliability.png",
                            title=f"ECE {ece_with_interval(cal.ece, low, high, digits=3)}, n = {cal.count}")
    except ImportError as error:
        print(f"no reliability.png: {error}")
    return summary
