"""Calibration reports from accumulated statistics: reliability diagram and confidence histogram as PNG
(matplotlib, optional), and a markdown + JSON summary."""
from pathlib import Path

import numpy as np

from ..atomic import write_atomically, write_text_atomically
from ..jsontext import json_text
from .calibration import CalibrationStats

__all__ = ["reliability_diagram", "reliability_diagrams", "calibration_report", "ece_with_interval"]

BIN_FIELDS = ("lower", "upper", "count", "confidence", "accuracy")  # a report's bins, as reliability() rows


def ece_with_interval(ece: float, low: float = None, high: float = None, digits: int = 4) -> str:
    """'0.0740 (95% CI 0.0540–0.1210)': an ECE beside its 95% bootstrap interval (:func:`ece_interval`), so
    that every report, table and figure reads the same; the ECE alone where the interval is not known (a
    report written before intervals were kept)."""
    if low is None or high is None:
        return f"{ece:.{digits}f}"
    return f"{ece:.{digits}f} (95% CI {low:.{digits}f}–{high:.{digits}f})"


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("reliability diagrams need matplotlib: pip install matplotlib") from error
    return plt


def _draw(top, bottom, table, title):
    """One reliability diagram (accuracy per confidence bin, gap shaded) over its confidence histogram;
    ``table`` holds rows (lower, upper, count, confidence, accuracy) as ``CalibrationStats.reliability()``."""
    lower, upper, count, conf, acc = (np.asarray(table, dtype=float)[:, i] for i in range(5))
    width, centre, used = upper - lower, (lower + upper) / 2, count > 0
    top.bar(centre[used], acc[used], width=width[used], edgecolor="black", color="#4c72b0", label="accuracy")
    top.bar(centre[used], conf[used] - acc[used], bottom=acc[used], width=width[used], color="#dd8452",
            alpha=0.5, edgecolor="#dd8452", label="gap")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.bar(centre, count / max(count.sum(), 1), width=width, edgecolor="black", color="#8c8c8c")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("fraction")
    bottom.set_xlim(0, 1)


def _save(fig, path, plt):
    fig.tight_layout()
    try:
        return write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)


def reliability_diagram(cal: CalibrationStats, path, title: str = "") -> Path:
    """Writes a PNG with the reliability diagram (accuracy against confidence per bin, gap shaded) above
    the confidence histogram. Needs matplotlib (``pip install matplotlib``)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    _draw(top, bottom, cal.reliability().numpy(), title or f"ECE {cal.ece:.4f}  (n = {cal.count})")
    return _save(fig, path, plt)


def reliability_diagrams(tables: dict, path) -> Path:
    """Writes the reliability diagrams of several models side by side, as in the papers' figures:
    ``tables`` maps a title to a reliability table (rows lower, upper, count, confidence, accuracy), or to
    the ``"bins"`` of a report that :func:`calibration_report` wrote."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(tables), figsize=(3.2 * len(tables), 5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (title, table) in enumerate(tables.items()):
        if table and isinstance(table[0], dict):  # a report's bins
            table = [[b[k] for k in BIN_FIELDS] for b in table]
        _draw(axes[0, column], axes[1, column], table, title)
    return _save(fig, path, plt)


def calibration_report(cal: CalibrationStats, out_dir, name: str = "calibration", extra: dict = None,
                       title: str = None) -> dict:
    """Writes ``<name>.md`` and ``<name>.json`` (ece, mce, nll, brier, accuracy, count, per-bin table,
    and any ``extra`` figures such as ECE after temperature scaling) into ``out_dir``; returns the dict.
    ``title`` (what was evaluated: model, data) heads the markdown and is kept in the JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = cal.summary()
    summary.update(extra or {})
    rows = cal.reliability().tolist()
    summary["bins"] = [dict(zip(BIN_FIELDS, (r[0], r[1], int(r[2]), r[3], r[4]))) for r in rows]
    write_text_atomically(out_dir / f"{name}.json",
                          json_text(summary if title is None else {"title": title, **summary}, indent=1))
    lines = ([f"# {title}", ""] if title else []) + ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in summary.items() if k != "bins"]
    lines += ["", "| bin | count | confidence | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| ({b['lower']:.3f}, {b['upper']:.3f}] | {b['count']} | {b['confidence']:.4f} | {b['accuracy']:.4f} |"
              for b in summary["bins"] if b["count"]]
    write_text_atomically(out_dir / f"{name}.md", "\n".join(lines) + "\n")
    return summary
