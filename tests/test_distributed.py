"""DDP on CPUs (two gloo processes) against one process over the same data: the training loop, the OLS
table and every metric must agree; and tools/train_imagenet.py under torchrun."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pysoftlabel import strategies as S
from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data.resident import ResidentImages, ResidentLoader
from pysoftlabel.engine import evaluate, train_one_epoch
from pysoftlabel.engine.distributed import shutdown_distributed
from conftest import sigterm_after

BATCH = 8  # per process with two processes; one process takes 2 * BATCH


def _train(root, rank, world):
    """Two OLS epochs of a BN-free model (BatchNorm statistics are per rank by design) without random
    augmentation, so that two ranks' batches are exactly halves of one process's batches."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    train_data = ResidentImages(root, "train")
    train = ResidentLoader(train_data, BATCH * 2 // world, True, pad=0, flip=False, seed=5, shard_id=rank,
                           num_shards=world)
    val = ResidentLoader(ResidentImages(root, "val", classes=train_data.classes), 5, False, shard_id=rank,
                         num_shards=world)
    run_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    strategy = S.OnlineLabelSmoothing(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    records = []
    for epoch in range(2):
        train.set_epoch(epoch)
        metrics = train_one_epoch(run_model, train, strategy, optimizer, torch.device("cpu"))
        strategy.all_reduce()
        strategy.end_epoch()
        records.append({**metrics, **evaluate(run_model, val, torch.device("cpu"))[0]})
    return {"records": records, "table": strategy.table.clone(), "weight": model[1].weight.detach().clone()}


def _worker(rank, world, init_file, out_file, root):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = _train(root, rank, world)
    if rank == 0:
        torch.save(result, out_file)
    dist.barrier()
    shutdown_distributed()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_classes=3, train_per_class=16, val_per_class=5, image_size=32, seed=2)
    return root


def test_two_gloo_processes_train_like_one(data):
    one = _train(data, 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), out, data), nprocs=2, join=True)
        two = torch.load(out)
    assert one["table"].abs().sum() > 0  # the OLS table was filled by the first epoch
    torch.testing.assert_close(two["table"], one["table"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two["weight"], one["weight"], rtol=1e-5, atol=1e-6)
    for got, want in zip(two["records"], one["records"]):
        for key, value in want.items():
            if key not in ("img_per_s", "train_seconds"):  # timings differ
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


class NaNOnOneRank(torch.nn.Module):
    def __init__(self, broken):
        super().__init__()
        self.linear, self.broken = torch.nn.Linear(3 * 8 * 8, 3), broken

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return out + float("nan") if self.broken else out


def _evaluate_with_nan_on_rank_1(rank, world, init_file, out_dir):
    from datetime import timedelta
    # A short timeout: a rank left waiting in an all_reduce fails the test in seconds, not in half an hour.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    loader = [{"image": torch.randn(4, 3, 8, 8), "label": torch.zeros(4, dtype=torch.long)} for _ in range(2)]
    try:
        evaluate(NaNOnOneRank(broken=rank == 1), loader, torch.device("cpu"))
        said = "no error"
    except Exception as error:
        said = f"{type(error).__name__}: {error}"
    Path(out_dir, f"rank{rank}.txt").write_text(said)
    shutdown_distributed()


def test_non_finite_logits_on_one_rank_stop_every_rank_with_the_same_error(tmp_path):
    mp.spawn(_evaluate_with_nan_on_rank_1, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    want = "ValueError: evaluation: the model's logits are not finite (NaN or inf) on 8 of 16 images"
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == [want, want]


def _train_cli_worker(rank, world, init_file, argv, stop_at, out_dir):
    """train_imagenet.py's main in one of ``world`` gloo processes (as torchrun starts it); rank 0 gets a
    SIGTERM after step ``stop_at`` = (epoch, step) when given. Writes the exit code to OUT_DIR/rankR.txt."""
    from datetime import timedelta

    from pysoftlabel.cli import train as train_cli
    from pysoftlabel.cli.epoch_log import EpochLog
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    if stop_at is not None:  # rank 0 alone has the epoch log, and so the progress calls
        EpochLog.progress = sigterm_after(stop_at)
    try:
        train_cli.main(argv)
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    Path(out_dir, f"rank{rank}.txt").write_text(str(code))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_ddp_run_stopped_inside_an_epoch_resumes_exactly(data, tmp_path):
    """Two gloo processes: a SIGTERM on rank 0 in epoch 2 stops both ranks after the same step (they agree
    every 10th), the checkpoint holds the OLS statistics of both ranks summed, and the resumed run (which
    counts them once) ends where the uninterrupted one does."""
    pytest.importorskip("nvidia.dali", reason="train_imagenet.py needs NVIDIA DALI (pip install nvidia-dali-cuda130)")

    def run(out, *extra, stop_at=None):
        argv = ["--data", str(data), "--out", str(out), "--strategy", "ols", "--aug", "cutmix", "--epochs", "2",
                "--batch-size", "2", "--image-size", "16", "--device", "cpu", "--threads", "1", *extra]
        init = tmp_path / f"init-{out.name}-{len(extra)}"
        mp.spawn(_train_cli_worker, args=(2, str(init), argv, stop_at, str(tmp_path)), nprocs=2, join=True)
        return [int((tmp_path / f"rank{rank}.txt").read_text()) for rank in (0, 1)]

    assert run(tmp_path / "whole") == [0, 0]
    assert run(tmp_path / "parts", stop_at=(1, 3)) == [130, 130]
    state = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 10)  # 48 images, 2 x 2 a step: 12 steps, stopped at the 10th
    assert run(tmp_path / "parts", "--resume") == [0, 0]
    whole, parts = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
                    for name in ("whole", "parts"))
    assert [r["epoch"] for r in parts] == [0, 1]
    for key in ("val_acc1", "val_nll", "val_ece", "val_brier"):
        assert parts[1][key] == pytest.approx(whole[1][key], rel=1e-6, abs=1e-7), key
    tables = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["strategy"]["table"]
              for name in ("whole", "parts")]
    torch.testing.assert_close(tables[1], tables[0], rtol=1e-6, atol=1e-7)
    assert tables[0].abs().sum() > 0


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_train_imagenet_under_torchrun(data, tmp_path):
    pytest.importorskip("nvidia.dali", reason="train_imagenet.py needs NVIDIA DALI (pip install nvidia-dali-cuda130)")
    tools = Path(__file__).resolve().parents[1] / "tools"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tools / "train_imagenet.py"), "--data", str(data), "--out", str(tmp_path / "run"), "--strategy", "ols",
           "--epochs", "2", "--batch-size", "4", "--image-size", "16", "--device", "cpu", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # one line per epoch, written by rank 0 only
    assert json.loads((tmp_path / "run" / "args.json").read_text())["world_size"] == 2
    assert (tmp_path / "run" / "report.md").exists()
