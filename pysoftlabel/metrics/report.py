"""Calibration reports from accumulated statistics: reliability diagram and confidence histogram as PNG
(matplotlib, optional), and a markdown + JSON summary."""
import json
from pathlib import Path

from .calibration import CalibrationStats

__all__ = ["reliability_diagram", "calibration_report"]


def reliability_diagram(cal: CalibrationStats, path, title: str = "") -> Path:
    """Writes a PNG with the reliability diagram (accuracy against confidence per bin, gap shaded) above
    the confidence histogram. Needs matplotlib (``pip install matplotlib``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("reliability_diagram needs matplotlib: pip install matplotlib") from error
    table = cal.reliability()
    lower, upper, count, conf, acc = (table[:, i].numpy() for i in range(5))
    width = upper - lower
    centre = (lower + upper) / 2
    used = count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.bar(centre[used], acc[used], width=width[used], edgecolor="black", color="#4c72b0", label="accuracy")
    top.bar(centre[used], conf[used] - acc[used], bottom=acc[used], width=width[used], color="#dd8452",
            alpha=0.5, edgecolor="#dd8452", label="gap")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(title or f"ECE {cal.ece:.4f}  (n = {cal.count})")
    top.legend(loc="upper left")
    bottom.bar(centre, count / max(count.sum(), 1), width=width, edgecolor="black", color="#8c8c8c")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("fraction")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def calibration_report(cal: CalibrationStats, out_dir, name: str = "calibration", extra: dict = None) -> dict:
    """Writes ``<name>.md`` and ``<name>.json`` (ece, mce, nll, brier, accuracy, count, per-bin table,
    and any ``extra`` figures such as ECE after temperature scaling) into ``out_dir``; returns the dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = cal.summary()
    summary.update(extra or {})
    rows = cal.reliability().tolist()
    summary["bins"] = [{"lower": r[0], "upper": r[1], "count": int(r[2]), "confidence": r[3], "accuracy": r[4]}
                       for r in rows]
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1))
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in summary.items() if k != "bins"]
    lines += ["", "| bin | count | confidence | accuracy |", "| --- | --- | --- | --- |"]
    lines += [f"| ({b['lower']:.3f}, {b['upper']:.3f}] | {b['count']} | {b['confidence']:.4f} | {b['accuracy']:.4f} |"
              for b in summary["bins"] if b["count"]]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    return summary
