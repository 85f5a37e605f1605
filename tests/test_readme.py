"""The README's Python examples run as written (on a small linear model), so that they cannot rot."""
import re
from pathlib import Path

import pytest
import torch

import pysoftlabel as psl

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def names():
    """What the examples take as given: a model, a batch, a loader, their sizes."""
    torch.manual_seed(0)
    num_classes, device = 10, "cpu"
    model = torch.nn.Linear(32, num_classes)
    images, labels = torch.randn(64, 32), torch.randint(0, num_classes, (64,))
    return {"torch": torch, "psl": psl, "model": model, "images": images, "labels": labels,
            "num_classes": num_classes, "device": device, "batch": {"image": images, "label": labels},
            "loader": [(images[:32], labels[:32]), (images[32:], labels[32:])],
            "calib": psl.CalibrationStats(device=device)}


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the calibration example writes report/
    if "reliability_diagram" in BLOCKS[index]:
        pytest.importorskip("matplotlib")
    scope = names()
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), scope)
    if "calibration_report" in BLOCKS[index]:
        assert (tmp_path / "report" / "calibration.json").exists()
        assert (tmp_path / "report" / "reliability.png").exists()
