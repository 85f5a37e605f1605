"""The benchmark tools run end to end on the CPU at a toy size. Their figures are taken on a GPU lease, rare and
short: a tool that fails there costs the lease, so each one's whole path (arguments, every baseline, the
JSON it writes) is run here first. No timings are asserted, only that each figure is there and positive."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pysoftlabel.data import make_synthetic_dataset

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))


def run_tool(name, *argv):
    done = subprocess.run([sys.executable, str(TOOLS / name), *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_kernels(tmp_path):
    pytest.importorskip("torchmetrics", reason="the calibration baseline is torchmetrics' (pip install torchmetrics)")
    out = tmp_path / "kernels.json"
    run_tool("bench_kernels.py", "--device", "cpu", "--shapes", "64x100", "--no-compile", "--reps", "2",
             "--out", str(out))
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    for key in ("ours_ls", "eager_ls", "ours_ols", "ours_teacher", "eager_teacher", "ours_calib", "torchmetrics_calib",
                "ours_class_stats", "eager_class_stats", "ours_ls_fused_stats", "read_once_ms"):
        assert positive(row[key]), (key, row[key])
    assert out.with_suffix(".md").read_text().count("| float32 | 64x100 |") >= 2


def test_sass_loops_counts_every_kernel():
    """The instructions-per-logit table of docs/benchmarks.md, read from the machine code nvcc makes (no GPU):
    it depends on source lines of the CUDA kernel that a change could move away from its patterns."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not (Path(cuda_home) / "bin" / "nvcc").exists():
        pytest.skip(f"needs the CUDA toolkit's nvcc (none in {cuda_home}/bin; set CUDA_HOME)")
    rows = [line.split(" | ") for line in run_tool("sass_loops.py").splitlines() if line.startswith("| ")][2:]
    assert [row[0].lstrip("| ") for row in rows] == ["LS fp32", "OLS fp32", "dense fp32", "LS bf16", "OLS bf16",
                                                     "dense bf16"]
    for row in rows:
        grouped, single, gradient = float(row[1].split()[0]), float(row[2]), float(row[3].split()[0])
        assert 0 < grouped <= single < 100 and 0 < gradient < 100, row


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    pytest.importorskip("nvidia.dali", reason="the data tools need NVIDIA DALI (pip install nvidia-dali-cuda130)")
    root = tmp_path_factory.mktemp("small")
    make_synthetic_dataset(root, num_classes=3, train_per_class=16, val_per_class=6, image_size=32, seed=3)
    return root


def test_bench_loader(small, tmp_path):
    out = tmp_path / "loader.json"
    run_tool("bench_loader.py", "--device", "cpu", "--data", str(tmp_path / "jpegs"), "--images", "64",
             "--image-side", "64", "--batch-size", "8", "--crop", "32", "--batches", "16", "--workers", "2",
             "--threads", "2", "--small", str(small), "--out", str(out))
    result = json.loads(out.read_text())
    for key in ("dali_img_per_s", "torchvision_img_per_s", "resnet50_model_only_img_per_s", "resident_img_per_s",
                "torchvision_small_img_per_s", "cifar_resnet18_model_only_img_per_s"):
        assert positive(result[key]), (key, result[key])


def test_bench_e2e(small, tmp_path):
    out = tmp_path / "e2e.json"
    stdout = run_tool("bench_e2e.py", "--device", "cpu", "--data", str(small), "--resident", "--image-size", "32",
                      "--arch", "resnet20", "--batch-size", "8", "--epochs", "2", "--steps", "3",
                      "--strategies", "ce", "ldl", "--out", str(out))
    result = json.loads(out.read_text())
    assert sorted(result["median"]) == ["ce", "ldl"] and all(map(positive, result["median"].values()))
    assert all(map(positive, result["model_only"])) and result["complete"]
    assert "| train_imagenet.py --strategy ldl |" in stdout


def cut_short(monkeypatch, module, name, when):
    """Makes ``module.name`` fail the way a lease's time limit stops a stage, at the call where ``when(args)``."""
    real = getattr(module, name)

    def stopped(*args, **kwargs):
        if when(args):
            raise KeyboardInterrupt("the stage's time limit")
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, stopped)


def test_bench_loader_keeps_the_figures_of_a_run_cut_short(small, tmp_path, monkeypatch):
    import bench_loader
    cut_short(monkeypatch, bench_loader, "torchvision_loader", lambda args: True)
    out = tmp_path / "loader.json"
    with pytest.raises(KeyboardInterrupt):
        bench_loader.main(["--device", "cpu", "--data", str(small), "--batch-size", "8", "--crop", "32",
                           "--batches", "16", "--workers", "2", "--threads", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert positive(result["dali_img_per_s"]) and "torchvision_img_per_s" not in result


def test_bench_e2e_keeps_the_figures_of_a_run_cut_short(small, tmp_path, monkeypatch):
    import bench_e2e
    cut_short(monkeypatch, bench_e2e.train_cli, "main", lambda args: "ldl" in args[0])
    out = tmp_path / "e2e.json"
    with pytest.raises(KeyboardInterrupt):
        bench_e2e.main(["--device", "cpu", "--data", str(small), "--resident", "--image-size", "32", "--arch",
                        "resnet20", "--batch-size", "8", "--epochs", "2", "--steps", "3", "--strategies", "ce", "ldl",
                        "--out", str(out)])
    result = json.loads(out.read_text())
    assert not result["complete"] and list(result["median"]) == ["ce"] and positive(result["median"]["ce"])
    assert len(result["model_only"]) == 1 and positive(result["model_only"][0])
