"""The README's Python examples run as written (on a small linear model), so that they cannot rot."""
import re
from pathlib import Path

import pytest
import torch

import pysoftlabel as psl
from pysoftlabel.data import make_synthetic_dataset

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def names(tmp_path):
    """What the examples take as given: a model (a linear layer, sized by its first input), its logits, a
    batch, a loader, their sizes, a strategy, and a dataset root with boxes (the synthetic dataset, made in
    ``tmp_path``)."""
    torch.manual_seed(0)
    num_classes, device = 10, "cpu"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
    images, labels = torch.randn(64, 3, 4, 4), torch.randint(0, num_classes, (64,))  # 4-d: the mixers' images
    root = tmp_path / "data"
    return {"torch": torch, "psl": psl, "model": model, "images": images, "labels": labels,
            "logits": torch.randn(64, num_classes),
            "num_classes": num_classes, "device": device, "batch": {"image": images, "label": labels},
            "loader": [(images[:32], labels[:32]), (images[32:], labels[32:])],
            "calib": psl.CalibrationStats(device=device), "strategy": psl.strategies.LabelSmoothing(0.1),
            "root": root, "boxes_root": root / "boxes", "batch_size": 8, "image_size": 16}


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the calibration example writes report/
    if "reliability_diagram" in BLOCKS[index]:
        pytest.importorskip("matplotlib")
    scope = names(tmp_path)
    if "ImageNetLoader" in BLOCKS[index]:
        pytest.importorskip("nvidia.dali", reason="the data loaders need NVIDIA DALI")
        make_synthetic_dataset(scope["root"], num_classes=10, train_per_class=2, val_per_class=1, image_size=16)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), scope)
    if "calibration_report" in BLOCKS[index]:
        assert (tmp_path / "report" / "calibration.json").exists()
        assert (tmp_path / "report" / "reliability.png").exists()
    if "vit_logits.pt" in BLOCKS[index]:  # the command the README gives next writes the report of that file
        from pysoftlabel.cli import evaluate
        evaluate.main(["vit_logits.pt", "--device", "cpu"])
        assert (tmp_path / "vit_logits-eval" / "report.json").exists()
    if "ImageNetLoader" in BLOCKS[index]:
        assert torch.isfinite(scope["loss"]) and scope["batch"]["object_fraction"].shape == (8,)
