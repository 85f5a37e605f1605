"""tools/reproduce.py on a tiny synthetic stand-in for CIFAR-10: runs, teacher reuse, resume, table."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", reason="train_imagenet.py needs NVIDIA DALI (pip install nvidia-dali-cuda130)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import reproduce  # noqa: E402

from pysoftlabel.data import make_synthetic_dataset  # noqa: E402


def test_reproduce_trains_resumes_and_tabulates(tmp_path, capsys):
    make_synthetic_dataset(tmp_path / "data" / "cifar10", num_classes=3, train_per_class=8, val_per_class=4,
                           image_size=32, seed=1)
    argv = ["--preset", "cifar10-cpu", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "table"),
            "--only", "ldl,ce+cutmix", "--", "--epochs", "2", "--val-split", "val", "--batch-size", "8"]
    reproduce.main(argv)
    for run in ("ce", "ldl", "ce+cutmix"):  # ldl trained its teacher, the ce run of the same seed
        assert (tmp_path / "table" / run / "seed0" / "report.json").exists(), run
    table = (tmp_path / "table" / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ldl") or line.startswith("| ce+cutmix")]
    assert len(rows) == 2 and all("| 1 |" in row for row in rows)
    assert (tmp_path / "table" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    reproduce.main(argv)  # everything finished: nothing is trained again
    assert capsys.readouterr().out.count(": done") == 2


def test_unknown_run_is_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--preset", "cifar10-cpu", "--only", "ce,nope"])
    assert "not in preset" in capsys.readouterr().err
