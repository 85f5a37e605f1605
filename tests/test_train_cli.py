"""tools/train_imagenet.py end to end on tiny synthetic data (DALI on the CPU): outputs, exact resume,
bad arguments."""
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import sigterm_after

pytest.importorskip("nvidia.dali", reason="the data layer needs NVIDIA DALI (pip install nvidia-dali-cuda130)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_webdataset  # noqa: E402

from pysoftlabel.cli import evaluate  # noqa: E402
from pysoftlabel.cli import train as train_cli  # noqa: E402
from pysoftlabel.cli.epoch_log import EpochLog  # noqa: E402
from pysoftlabel.cli.train_options import parse_args  # noqa: E402
from pysoftlabel.cli.train_setup import make_mix, make_scheduler, make_strategy  # noqa: E402
from pysoftlabel.data import make_synthetic_dataset  # noqa: E402
from pysoftlabel.data.folder import scan_image_folder  # noqa: E402
from pysoftlabel.data.webdataset import write_webdataset  # noqa: E402
from pysoftlabel.engine import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, num_classes=3, train_per_class=16, val_per_class=6, image_size=32, seed=3)
    return root


def run(data, out, *extra):
    train_cli.main(["--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "8",
                    "--image-size", "16", "--device", "cpu", *extra])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


KEYS = {"epoch", "train_loss", "train_acc1", "val_acc1", "val_acc5", "val_ece", "val_mce", "val_nll", "val_brier",
        "img_per_s", "lr"}


def test_ols_run_writes_metrics_checkpoint_and_report(data, tmp_path, capsys):
    records = run(data, tmp_path / "ols", "--strategy", "ols", "--aug", "cutmix")
    report = json.loads((tmp_path / "ols" / "report.json").read_text())
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"[ols] {tmp_path / 'ols' / 'report.md'}: top-1 {report['accuracy']:.3f}, ECE {report['ece']:.4f} (95% CI "
        f"{report['ece_ci95_low']:.4f}–{report['ece_ci95_high']:.4f}), after temperature scaling "
        f"{report['ece_after_temperature_heldout']:.4f} (held out)")
    assert len(records) == 2 and KEYS <= set(records[-1])
    assert records[0]["setup_seconds"] > 0 and "setup_seconds" not in records[1]  # once per process
    assert all(r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in records)
    # The last step's learning rate: 0.1 x 8/64, warmed up from 0.1x over epoch 1's 6 steps (step 6 at 0.85x),
    # then cosine over the 6 steps of epoch 2 (its last at (1 + cos(5 pi / 6)) / 2).
    import math
    assert [r["lr"] for r in records] == pytest.approx([0.0125 * 0.85, 0.0125 * (1 + math.cos(5 * math.pi / 6)) / 2])
    assert 0 <= records[-1]["val_ece"] <= 1 and 0 <= records[-1]["val_acc1"] <= 1
    for name in ("checkpoint.pt", "report.md", "report.json", "reliability.png", "args.json"):
        assert (tmp_path / "ols" / name).exists(), name


def test_als_run_reports_boxes_and_context_confidence(data, tmp_path):
    records = run(data, tmp_path / "als", "--strategy", "als", "--aug", "ricap")
    matched = sum(1 for _ in (data / "boxes").glob("*_train_*.xml"))
    assert records[-1]["boxes_matched"] == matched > 0 and records[-1]["skipped_images"] == 0
    assert records[-1]["boxes_skipped_files"] == records[-1]["boxes_repaired"] == 0
    assert 1 / 3 - 1e-6 <= records[-1]["val_context_conf"] <= 1


# The strategies whose state changes during training: the OLS table of the epoch before, the online-LDL
# moving average of the student and its epoch (its weight is 0.4 in epoch 2 of 2).
@pytest.mark.parametrize("strategy, aug", [("ols", "mixup"), ("online-ldl", "cutmix")])
def test_resume_continues_exactly(data, tmp_path, strategy, aug):
    common = ("--strategy", strategy, "--aug", aug)
    whole = run(data, tmp_path / "whole", *common)
    run(data, tmp_path / "parts", *common, "--stop-after", "1")
    parts = run(data, tmp_path / "parts", *common, "--resume")
    assert len(parts) == 2
    for key in ("train_loss", "val_acc1", "val_nll", "val_ece"):
        assert parts[1][key] == pytest.approx(whole[1][key], rel=1e-6, abs=1e-7), key


def test_resume_with_nothing_to_resume_says_so_and_trains_from_the_start(data, tmp_path, capsys):
    records = run(data, tmp_path / "new", "--strategy", "ce", "--epochs", "1", "--resume")
    assert capsys.readouterr().out.splitlines()[0] == (
        f"--resume: {tmp_path / 'new'} holds no checkpoint yet; training from the start")
    assert [r["epoch"] for r in records] == [0]  # one epoch, counted from 0


def test_a_run_is_not_overwritten_by_the_same_command_without_resume_or_overwrite(data, tmp_path):
    run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "1")
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match=r"holds a run \(.*checkpoint.pt\): --resume continues it, --overwrite"):
        run(data, tmp_path / "r", "--strategy", "ls", "--epochs", "1")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    with pytest.raises(SystemExit):  # an --overwrite run stopped before its end leaves no report of the old run
        run(data, tmp_path / "r", "--strategy", "ls", "--epochs", "2", "--overwrite", "--lr", "1e30")
    assert not (tmp_path / "r" / "report.md").exists()
    assert run(data, tmp_path / "r", "--strategy", "ls", "--epochs", "1", "--overwrite")[0]["strategy"] == "ls"
    assert "ls" in (tmp_path / "r" / "report.md").read_text().splitlines()[0]
    with pytest.raises(FileNotFoundError):  # only the teacher's first epoch: no metrics of the student yet
        run(data, tmp_path / "t", "--strategy", "ldl", "--stop-after", "1")
    with pytest.raises(SystemExit, match=r"holds a run \(.*teacher/checkpoint.pt\)"):
        run(data, tmp_path / "t", "--strategy", "ldl")


@pytest.mark.cuda
def test_resume_on_a_gpu(data, tmp_path):
    # Before, the checkpoint was read onto the GPU, RNG states included, and torch.set_rng_state refused them.
    common = ("--strategy", "ols", "--aug", "cutmix", "--device", "cuda")
    whole = run(data, tmp_path / "whole", *common)
    run(data, tmp_path / "parts", *common, "--stop-after", "1")
    parts = run(data, tmp_path / "parts", *common, "--resume")
    assert [r["epoch"] for r in parts] == [0, 1]
    assert parts[1]["val_acc1"] == pytest.approx(whole[1]["val_acc1"], abs=0.1)  # GPU atomics: not bit for bit


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    import errno
    from pysoftlabel.engine import checkpoint as checkpoints
    real = checkpoints.save_checkpoint
    run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "1")
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()

    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(checkpoints, "save_checkpoint", full)
    with pytest.raises(SystemExit, match=r"stopped: \[Errno 28\] No space left on device: .*checkpoint.pt.* --resume"):
        run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "2", "--overwrite")
    monkeypatch.setattr(checkpoints, "save_checkpoint", real)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


def test_sigterm_inside_an_epoch_checkpoints_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    common = ("--strategy", "ols", "--aug", "cutmix", "--epochs", "3")
    whole = run(data, tmp_path / "whole", *common)
    with monkeypatch.context() as m:
        m.setattr(EpochLog, "progress", sigterm_after((1, 2)))  # a pre-emption after step 2 of epoch 1 (of 6)
        with pytest.raises(SystemExit) as stopped:
            run(data, tmp_path / "parts", *common)
    err = capsys.readouterr().err
    assert stopped.value.code == 130 and "continue with --resume" in err and "teacher" not in err  # ols has none
    state = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 2)  # the signal came after step 2: no further step ran
    parts = run(data, tmp_path / "parts", *common, "--resume")
    assert [r["epoch"] for r in parts] == [0, 1, 2]
    for key in ("train_loss", "val_acc1", "val_nll", "val_ece"):
        assert parts[2][key] == pytest.approx(whole[2][key], rel=1e-6, abs=1e-7), key
    assert parts[1]["val_nll"] == pytest.approx(whole[1]["val_nll"], rel=1e-6)


def test_a_second_sigterm_stops_at_once_with_the_last_epochs_checkpoint(data, tmp_path, monkeypatch, capsys):
    """An impatient second Ctrl-C: no mid-epoch checkpoint, but the last epoch's, which is written in the
    background while the next epoch trains, is complete on the disk when the run has stopped."""
    with monkeypatch.context() as m:  # two signals inside epoch 1: the second one before any checkpoint of it
        m.setattr(EpochLog, "progress", sigterm_after((1, 2), times=2))
        with pytest.raises(SystemExit) as stopped:
            run(data, tmp_path / "r", "--strategy", "ols", "--epochs", "3")
    checkpoint = tmp_path / "r" / "checkpoint.pt"
    assert stopped.value.code == 130
    assert f"interrupted: the state is in {checkpoint}; continue with --resume" in capsys.readouterr().err
    state = torch.load(checkpoint, weights_only=False)
    assert (state["epoch"], state.get("step", 0)) == (0, 0)  # epoch 0 whole; nothing of epoch 1
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = run(data, tmp_path / "r", "--strategy", "ols", "--epochs", "3", "--resume")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]


def test_a_run_stopped_in_its_teachers_epochs_names_the_teachers_checkpoint_alone(data, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setattr(EpochLog, "progress", sigterm_after((1, 1)))  # SIGTERM in the teacher's second epoch
    with pytest.raises(SystemExit):
        run(data, tmp_path / "ldl", "--strategy", "ldl")
    teacher = tmp_path / "ldl" / "teacher" / "checkpoint.pt"
    assert teacher.exists() and not (tmp_path / "ldl" / "checkpoint.pt").exists()
    assert f"interrupted: the state is in {teacher}; continue with --resume" in capsys.readouterr().err


def test_ldl_trains_its_teacher_first(data, tmp_path):
    records = run(data, tmp_path / "ldl", "--strategy", "ldl")
    assert (tmp_path / "ldl" / "teacher" / "checkpoint.pt").exists() and len(records) == 2


def test_stop_after_counts_the_teachers_epochs_and_the_student_waits_for_it(data, tmp_path):
    # Before, --stop-after 1 trained one teacher epoch and then the student on that unfinished teacher.
    whole = run(data, tmp_path / "whole", "--strategy", "ldl")
    parts = tmp_path / "parts"
    for resume in ((), ("--resume",)):  # the teacher's two epochs, one per invocation; no student yet
        train_cli.main(["--data", str(data), "--out", str(parts), "--epochs", "2", "--batch-size", "8",
                        "--image-size", "16", "--device", "cpu", "--strategy", "ldl", "--stop-after", "1",
                        *resume])
        assert not (parts / "checkpoint.pt").exists()
    assert torch.load(parts / "teacher" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    student = run(data, parts, "--strategy", "ldl", "--resume", "--stop-after", "3")
    assert len(student) == 2
    for key in ("train_loss", "val_acc1", "val_nll", "val_ece"):
        assert student[1][key] == pytest.approx(whole[1][key], rel=1e-6, abs=1e-7), key


def test_a_resumed_student_does_not_train_or_evaluate_its_complete_teacher_again(data, tmp_path, monkeypatch):
    run(data, tmp_path / "ldl", "--strategy", "ldl", "--epochs", "1")
    calls = []
    train = train_cli.train
    monkeypatch.setattr(train_cli, "train", lambda args, name, *rest, **kw: calls.append(name) or
                        train(args, name, *rest, **kw))
    run(data, tmp_path / "ldl", "--strategy", "ldl", "--epochs", "1", "--resume")
    assert calls == ["ldl"]
    with pytest.raises(SystemExit, match=r"with --epochs 1; this run has --epochs 2\."):  # the teacher's check
        run(data, tmp_path / "ldl", "--strategy", "ldl", "--epochs", "2", "--resume")
    assert calls == ["ldl", "ce"]


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(data, tmp_path):
    with pytest.raises(SystemExit, match=r"ce, epoch 1: training diverged: .* Lower --lr"):
        run(data, tmp_path / "nan", "--strategy", "ce", "--lr", "1e30")
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_a_batch_larger_than_the_training_set_gives_one_line(data, tmp_path):
    # 48 training images: the resident path trained zero steps and reported a loss of 0, DALI stopped in its reader
    for path in ((), ("--resident", "--image-size", "32")):
        with pytest.raises(SystemExit, match="has 48 training images, fewer than one batch of 64"):
            run(data, tmp_path / "big", "--strategy", "ce", "--batch-size", "64", *path)


@pytest.mark.parametrize("layout", ["folders", "shards"])
def test_unreadable_images_are_skipped_and_counted_in_training_and_validation(data, tmp_path, capsys, layout):
    copy = shutil.copytree(data, tmp_path / "data")
    next((copy / "train").rglob("*.JPEG")).write_bytes(b"")
    next((copy / "val").rglob("*.JPEG")).write_text("not an image")
    if layout == "shards":  # shards from elsewhere, holding them (make_webdataset.py leaves them out)
        for split in ("train", "val"):
            write_webdataset(*scan_image_folder(copy, split)[:2], tmp_path / "wds" / split, per_shard=10)
        copy = tmp_path / "wds"  # before, DALI stopped the run: "nvImageCodec failure: '#4'"
    records = run(copy, tmp_path / "run", "--strategy", "ce", "--epochs", "1")
    assert records[0]["skipped_images"] == 1 and records[0]["skipped_val_images"] == 1
    out = capsys.readouterr().out
    assert "skipping 1 unreadable training images, e.g. " in out and " is empty\n" in out
    assert "skipping 1 unreadable validation images, e.g. " in out and " is neither a JPEG nor a PNG file\n" in out
    val_images = sum(1 for _ in (data / "val").rglob("*.JPEG"))
    assert json.loads((tmp_path / "run" / "report.json").read_text())["count"] == val_images - 1
    evaluate.main([str(tmp_path / "run" / "checkpoint.pt")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_images"] == 1 and summary["count"] == val_images - 1


def test_resume_with_other_options_names_them(data, tmp_path):
    out = tmp_path / "ce"
    train_cli.main(["--data", str(data), "--out", str(out), "--epochs", "2", "--stop-after", "1",
                    "--batch-size", "8", "--image-size", "16", "--device", "cpu", "--strategy", "ce"])
    with pytest.raises(SystemExit, match=r"written by a run with --arch resnet20, --strategy ce, --aug none; "
                                         r"this run has --arch resnet32, --strategy ols, --aug mixup"):
        run(data, out, "--resume", "--arch", "resnet32", "--strategy", "ols", "--aug", "mixup")
    with pytest.raises(SystemExit, match=r"written by a run with --image-size 16, no --resident, --als-eps 0.0 1.0, "
                                         r"--epochs 2, --lr 0.1; this run has --image-size 32, --resident, --als-eps "
                                         r"0.1 0.5, --epochs 4, --lr 0.2\."):
        run(data, out, "--resume", "--strategy", "ce", "--epochs", "4", "--lr", "0.2", "--resident", "--image-size",
            "32", "--als-eps", "0.1", "0.5")
    with pytest.raises(SystemExit, match=r"written by a run with --aug none, no --mix-alpha; this run has --aug "
                                         r"cutmix, --mix-alpha 0.5\."):
        run(data, out, "--resume", "--strategy", "ce", "--aug", "cutmix", "--mix-alpha", "0.5")
    assert json.loads((out / "args.json").read_text())["epochs"] == 2  # a refused resume leaves the run's record
    run(data, out, "--resume", "--strategy", "ce")  # the same options go on


def test_resume_from_a_damaged_checkpoint_stops_before_any_training(data, tmp_path):
    out = tmp_path / "ldl"
    out.mkdir()
    (out / "checkpoint.pt").write_text("garbage\n")
    with pytest.raises(SystemExit, match="checkpoint.pt is not a whole checkpoint"):
        run(data, out, "--strategy", "ldl", "--resume")
    assert not (out / "teacher").exists()  # the teacher was not trained first
    save_checkpoint({"epoch": 0}, out / "checkpoint.pt")
    with pytest.raises(SystemExit, match="has no model, optimizer, rng, scheduler, strategy"):
        run(data, out, "--resume")
    with pytest.raises(SystemExit, match="checkpoint.pt has no model: not a checkpoint of this program"):
        run(data, tmp_path / "kd", "--strategy", "kd", "--teacher", str(out / "checkpoint.pt"))


@pytest.mark.parametrize("argv, match", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--data", "/does/not/exist"], "--data: /does/not/exist does not exist"),
    (["--teacher", "/does/not/exist.pt", "--strategy", "ldl"], "does not exist"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--image-size", "0"], "--image-size must be at least 8"),
    (["--lr", "nan"], "--lr must be positive"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--resume", "--overwrite"], "give one of them"),
    (["--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs must be in [0, --epochs 2]"),
    (["--strategy", "ols", "--teacher", "t.pt"], "--teacher: only ldl and kd learn from a teacher"),
    (["--cutout", "8"], "--cutout: only the --resident path"),
    (["--resident", "--min-scale", "0.5"], "--min-scale: the --resident path crops with 4-pixel padding"),
    (["--epochs", "10", "--milestones", "5", "10"], "--milestones must be epochs in [1, --epochs 10)"),
    (["--strategy", "kd", "--kd-alpha", "-1"], "--kd-alpha must be finite and at least 0"),  # before the teacher
    (["--strategy", "kd", "--kd-temperature", "inf"], "--kd-temperature must be positive and finite"),
    (["--als-eps", "0.5", "0.2"], "--als-eps must be MIN <= MAX"),
    (["--ols-freeze-at", "0"], "--ols-freeze-at must be in (0, 1]"),
    (["--strategy", "online-ldl", "--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
    (["--aug", "mixup", "--mix-alpha", "0"], "--mix-alpha must be positive and finite, got 0.0"),
    (["--device", "gpu"], "is not a device"),
    (["--device", "mps"], "--device mps: the tools train and evaluate on cpu or cuda"),
    (["--arch", "resnet9000"], "--arch: unknown model 'resnet9000'"),  # before ldl's teacher is trained
    (["--optimizer", "adamw", "--momentum", "0.8"], "--momentum is SGD's; --optimizer adamw has betas"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--boxes", "/does/not/exist"], "--boxes: /does/not/exist does not exist"),
    (["--strategy", "als", "--resident"], "--strategy als needs the DALI pipeline's crop windows: drop --resident"),
    (["--epochs", "10", "--milestones", "5"], "--milestones: the cosine schedule has none; add --schedule multistep"),
])
def test_bad_arguments_give_one_clear_line(argv, match, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(argv)
    assert match in capsys.readouterr().err


def test_als_with_boxes_that_match_no_image_is_one_line(data, tmp_path):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(SystemExit, match="none of the 48 training images has a box of its class"):
        run(data, tmp_path / "r", "--strategy", "als", "--boxes", str(tmp_path / "unrelated"))
    import shutil
    for split in ("train", "val"):  # data without DATA/boxes
        shutil.copytree(data / split, tmp_path / "unboxed" / split)
    with pytest.raises(SystemExit, match=r"^--strategy als needs bounding boxes: --boxes ROOT \(PASCAL-VOC XML"):
        run(tmp_path / "unboxed", tmp_path / "r", "--strategy", "als")


def test_a_missing_validation_folder_names_the_ones_there(data, tmp_path, capsys):
    import shutil
    shutil.copytree(data / "train", tmp_path / "d" / "train")
    (tmp_path / "d" / "test").mkdir()
    with pytest.raises(SystemExit):
        train_cli.main(["--data", str(tmp_path / "d")])
    assert "has no val/ folder to validate on; --val-split chooses another: test" in capsys.readouterr().err


@pytest.mark.parametrize("made, given, line", [
    ("d/train/a", "d/train", "{root}/d/train is one split of the data; give the folder above it, {root}/d, which "
                             "holds train/"),
    ("d/train/a", "", "{root} has no train/ folder; {root}/d has one"),  # the folder an archive unpacked into
    ("d.tar.gz", "d.tar.gz", "{root}/d.tar.gz is a file, not a folder; unpack it and give the folder that holds "
                             "train/"),
    (None, "nowhere", "{root}/nowhere does not exist"),
    ("d/val/a", "d", "{root}/d has no train/ folder (ImageNet layout ROOT/train/<class>/<image>, or shards "
                     "ROOT/train/*.tar)"),
])
def test_a_data_root_without_train_says_where_the_data_is(tmp_path, capsys, made, given, line):
    if made and made.endswith(".tar.gz"):
        (tmp_path / made).write_bytes(b"")
    elif made:
        (tmp_path / made).mkdir(parents=True)
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path / given)])
    assert capsys.readouterr().err.splitlines()[-1].endswith("--data: " + line.format(root=tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_device_without_a_gpu_gives_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--device", "cuda"])
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_work(data, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        run(data, tmp_path / "file", "--strategy", "ce")
    assert "--out: " + str(tmp_path / "file") + " is a file, not a folder" in capsys.readouterr().err
    run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "1")
    with pytest.raises(SystemExit, match="--out: cannot create .*file/eval"):
        evaluate.main([str(tmp_path / "r" / "checkpoint.pt"), "--out", str(tmp_path / "file" / "eval")])
    capsys.readouterr()
    for argv, match in ((["--data", str(tmp_path)], f"--data: {tmp_path} has no val/ folder (ImageNet layout "
                                                     "ROOT/val/<class>/<image>, or shards ROOT/val/*.tar)"),
                        (["--boxes", str(tmp_path / "nowhere")], f"--boxes: {tmp_path / 'nowhere'} does not exist")):
        with pytest.raises(SystemExit):
            evaluate.main([str(tmp_path / "r" / "checkpoint.pt"), *argv])
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(match)


@pytest.mark.parametrize("argv, match", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--device", "tpu:x"], "is not a device"),
    ([], "does not exist"),
])
def test_evaluate_bad_arguments_give_one_clear_line(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "missing.pt"), "--data", str(tmp_path)] + argv)
    assert match in capsys.readouterr().err


def test_evaluate_a_foreign_or_damaged_checkpoint_gives_one_clear_line(capsys, tmp_path):
    save_checkpoint({"epoch": 3}, tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 cut off")
    import argparse  # an object that only a full unpickling rebuilds (which could run any code): not read
    save_checkpoint({"arch": "resnet20", "classes": ["a"], "model": {}, "args": argparse.Namespace()},
                    tmp_path / "objects.pt")
    save_checkpoint({"arch": "resnet20", "epoch": 3}, tmp_path / "partial.pt")
    for name, match in (("foreign.pt", "neither a checkpoint of tools/train_imagenet.py (arch, classes, model) nor "
                                       "saved outputs (labels, and logits or probabilities); it holds epoch"),
                        ("partial.pt", "has no classes, model: not a checkpoint of this program"),
                        ("cut.pt", "is not a whole checkpoint"),
                        ("objects.pt", "holds more than tensors and plain values (WeightsUnpickler error: "
                                       "Unsupported global: GLOBAL argparse.Namespace")):
        with pytest.raises(SystemExit):
            evaluate.main([str(tmp_path / name), "--data", str(tmp_path)])
        assert match in capsys.readouterr().err


def test_a_teacher_of_other_classes_or_weights_is_refused_before_training(data, tmp_path):
    other = tmp_path / "other"
    make_synthetic_dataset(other, num_classes=2, train_per_class=8, val_per_class=2, image_size=32)
    run(other, tmp_path / "t2", "--strategy", "ce", "--epochs", "1")
    with pytest.raises(SystemExit, match=r"t2/checkpoint.pt has 2 classes, the data has 3$"):
        run(data, tmp_path / "s", "--strategy", "ldl", "--teacher", str(tmp_path / "t2" / "checkpoint.pt"))
    # As many classes, other ones: its distributions would put the mass on the wrong classes.
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    first = sorted(p.name for p in (data / "train").iterdir())[0]
    for split in ("train", "val"):
        (renamed / split / first).rename(renamed / split / "zebra")
    run(renamed, tmp_path / "t3", "--strategy", "ce", "--epochs", "1")
    with pytest.raises(SystemExit, match=rf"other classes than the data's \(class 0 is '.*' there, '{first}' here\)"):
        run(data, tmp_path / "s", "--strategy", "kd", "--teacher", str(tmp_path / "t3" / "checkpoint.pt"))
    # Weights that do not fit the architecture the checkpoint names: one line, not a torch traceback.
    state = torch.load(tmp_path / "t3" / "checkpoint.pt", weights_only=True)
    save_checkpoint({**state, "arch": "resnet32", "classes": None}, tmp_path / "wrong.pt")
    with pytest.raises(SystemExit, match=r"wrong.pt does not fit resnet32 for 3 classes at 16 px: Missing key"):
        run(data, tmp_path / "s", "--strategy", "ldl", "--teacher", str(tmp_path / "wrong.pt"))
    assert not (tmp_path / "s" / "metrics.jsonl").exists()
    # A teacher keeps its own architecture: a ResNet-32 teaches the ResNet-20 student.
    run(data, tmp_path / "t32", "--strategy", "ce", "--arch", "resnet32", "--epochs", "1")
    records = run(data, tmp_path / "s", "--strategy", "ldl", "--teacher", str(tmp_path / "t32" / "checkpoint.pt"))
    assert len(records) == 2


def test_pretrained_weights_start_the_run_with_a_new_classifier(data, tmp_path, capsys):
    other = tmp_path / "other"
    make_synthetic_dataset(other, num_classes=2, train_per_class=8, val_per_class=2, image_size=32)
    run(other, tmp_path / "t2", "--strategy", "ce", "--epochs", "1")
    source = tmp_path / "t2" / "checkpoint.pt"
    capsys.readouterr()
    run(data, tmp_path / "p", "--strategy", "ls", "--epochs", "1", "--lr", "1e-9", "--pretrained", str(source))
    assert f"pretrained: resnet20 from {source}; new for 3 classes: head.weight, head.bias" in capsys.readouterr().out
    before = torch.load(source, weights_only=True)["model"]
    after = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)["model"]
    convs = [k for k in before if "conv" in k]
    assert convs and all(torch.allclose(after[k], before[k], atol=1e-6) for k in convs)  # lr 1e-9: as loaded
    assert after["head.weight"].shape == (3, 64)
    # A resume takes its weights from its checkpoint: --pretrained (here left out) does not matter to it.
    run(data, tmp_path / "p", "--strategy", "ls", "--epochs", "1", "--lr", "1e-9", "--resume")
    assert "pretrained:" not in capsys.readouterr().out
    capsys.readouterr()
    with pytest.raises(SystemExit):  # before the data is listed
        run(data, tmp_path / "q", "--pretrained")
    assert "--pretrained: torchvision has no weights for resnet20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(data, tmp_path / "q", "--pretrained", str(tmp_path))
    assert f"--pretrained: {tmp_path} is a folder, not a file of weights" in capsys.readouterr().err
    # Weights that do not fit are found once the model is built; the message names the option and the tensor.
    weights = torch.load(source, weights_only=True)["model"]
    name = next(k for k in weights if "conv" in k)
    torch.save({**weights, name: weights[name][:, :1]}, tmp_path / "narrow.pth")
    with pytest.raises(SystemExit, match=rf"^--pretrained: {re.escape(str(tmp_path))}/narrow.pth does not fit "
                                         rf"resnet20 here: {re.escape(name)} is \["):
        run(data, tmp_path / "q", "--pretrained", str(tmp_path / "narrow.pth"))


def test_the_librarys_weights_are_named_when_they_do_not_fit(data, tmp_path, monkeypatch):
    """--pretrained alone: torchvision's weights (offline here: as if fetched), named by what they are."""
    import torchvision

    from pysoftlabel.models import create_model
    entry = torchvision.models.get_model_weights("vit_b_16").DEFAULT
    weights = create_model("vit_b_16", 1000, 224).state_dict()  # a position embedding for 224 px
    monkeypatch.setattr(type(entry), "get_state_dict", lambda self, **kw: weights)
    with pytest.raises(SystemExit, match=r"^--pretrained: torchvision's ViT_B_16_Weights.IMAGENET1K_V1 does not fit "
                                         r"vit_b_16 here: encoder.pos_embedding is \[1, 197, 768\] in the weights"):
        run(data, tmp_path / "v", "--arch", "vit_b_16", "--pretrained")


def test_evaluate_writes_the_report(data, tmp_path, capsys):
    run(data, tmp_path / "ce", "--strategy", "ce", "--epochs", "1", "--amp", "bf16")
    evaluate.main([str(tmp_path / "ce" / "checkpoint.pt"), "--data", str(data), "--device", "cpu", "--amp", "bf16"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"ece", "accuracy", "temperature", "ece_after_temperature", "ece_after_temperature_heldout",
            "acc5", "adaptive_ece", "classwise_ece"} <= set(summary)
    trained = json.loads((tmp_path / "ce" / "report.json").read_text())  # the same model, data and dtype
    assert summary["nll"] == pytest.approx(trained["nll"], rel=1e-6) and summary["count"] == trained["count"]
    assert 1 / 3 - 1e-6 <= summary["context_confidence"] <= 1 and summary["context_crops"] > 0  # boxes in DATA/boxes
    assert (tmp_path / "ce" / "eval" / "report.md").read_text().startswith(
        f"# {tmp_path / 'ce' / 'checkpoint.pt'} (resnet20, ce, after epoch 1): {data}/val at 16 px\n")
    assert (tmp_path / "ce" / "report.md").read_text().startswith(f"# resnet20, ce, 1 epoch: {data}/val at 16 px\n")


def test_adamw_leaves_biases_and_norms_undecayed_and_resumes(data, tmp_path):
    out = tmp_path / "a"
    run(data, out, "--strategy", "ls", "--optimizer", "adamw", "--stop-after", "1")
    options = json.loads((out / "args.json").read_text())
    assert (options["lr"], options["weight_decay"], options["momentum"]) == (6.25e-5, 0.05, None)  # its defaults
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    groups, model = state["optimizer"]["param_groups"], state["model"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all("exp_avg_sq" in s for s in state["optimizer"]["state"].values())  # AdamW's, not SGD's momentum
    shapes = [v.shape for k, v in model.items() if k.endswith(("weight", "bias")) and "running" not in k]
    assert len(groups[0]["params"]) == sum(len(s) > 1 for s in shapes)  # the convolutions and the classifier
    assert len(groups[1]["params"]) == sum(len(s) == 1 for s in shapes)  # biases, batch norm's weights
    records = run(data, out, "--strategy", "ls", "--optimizer", "adamw", "--resume")
    assert [r["epoch"] for r in records] == [0, 1]
    with pytest.raises(SystemExit, match=r"written by a run with --optimizer adamw.*this run has --optimizer sgd"):
        run(data, out, "--strategy", "ls", "--resume")


def test_a_compiled_run_resumes_and_its_checkpoint_is_the_plain_models(data, tmp_path, capsys):
    """--compile wraps the model for training only: the checkpoint holds the model's own names (no
    torch.compile '_orig_mod.' prefix), so that a resume and tools/evaluate.py load it as any other."""
    records = run(data, tmp_path / "c", "--strategy", "ols", "--compile", "--stop-after", "1")
    records = run(data, tmp_path / "c", "--strategy", "ols", "--compile", "--resume")
    assert [r["epoch"] for r in records] == [0, 1]
    weights = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["model"]
    assert "head.weight" in weights and not any(k.startswith("_orig_mod.") for k in weights)
    evaluate.main([str(tmp_path / "c" / "checkpoint.pt"), "--data", str(data), "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 18


@pytest.mark.parametrize("strategy", ["ldl", "online-ldl"])
def test_compile_takes_a_teachers_or_averages_forward_too(data, tmp_path, monkeypatch, strategy):
    """--compile compiles the student and the frozen model whose forward is a good part of each step: ldl's
    (and kd's) teacher, online-ldl's average of the student; the run trains and resumes with them compiled,
    its checkpoint holding the plain modules' weights."""
    run(data, tmp_path / "t", "--strategy", "ce", "--epochs", "1")
    compiled, real_compile = [], torch.compile

    def recording_compile(module, *args, **kwargs):
        compiled.append(module)
        return real_compile(module, *args, **kwargs)
    monkeypatch.setattr(torch, "compile", recording_compile)
    options = ["--strategy", strategy, "--compile"] + (["--teacher", str(tmp_path / "t")] if strategy == "ldl" else [])
    run(data, tmp_path / "s", *options, "--stop-after", "1")
    records = run(data, tmp_path / "s", *options, "--resume")
    assert [r["epoch"] for r in records] == [0, 1]
    frozen = sorted(not any(p.requires_grad for p in m.parameters()) for m in compiled)
    assert frozen == [False, False, True, True]  # the student and the frozen model, in each of the two calls
    state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["strategy"]
    assert not any("_orig_mod" in key for key in state.get("ema", {}))


def test_a_timm_model_trains_resumes_and_is_evaluated(data, tmp_path, capsys):
    pytest.importorskip("timm", reason="timm models are optional (pip install timm)")
    run(data, tmp_path / "t", "--strategy", "ls", "--arch", "timm/resnet10t", "--stop-after", "1")
    records = run(data, tmp_path / "t", "--strategy", "ls", "--arch", "timm/resnet10t", "--resume")
    assert [r["epoch"] for r in records] == [0, 1]
    evaluate.main([str(tmp_path / "t" / "checkpoint.pt"), "--data", str(data), "--device", "cpu"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 18
    for arch, line in (("timm/resnet_nonexistent", "--arch: unknown model 'timm/resnet_nonexistent': timm has no "
                                                   "model 'resnet_nonexistent'"),
                       ("timm/resnet18.bogus", "--arch: timm/resnet18.bogus: Invalid pretrained tag (bogus)")):
        with pytest.raises(SystemExit):
            run(data, tmp_path / "bad", "--arch", arch)
        assert line in capsys.readouterr().err


def test_evaluate_a_librarys_pretrained_weights_by_model_name(data, tmp_path, monkeypatch, capsys):
    """`evaluate.py resnet18 --data ROOT`: torchvision's weights (offline here: as if fetched, for the data's 3
    classes) on the data's validation set, the figures those of the model's own logits."""
    import torchvision

    from pysoftlabel.data.loaders import validation_loader
    from pysoftlabel.engine import model_logits
    from pysoftlabel.models import create_model
    torch.manual_seed(0)
    weights = create_model("resnet18", 3, 16).state_dict()
    entry = torchvision.models.get_model_weights("resnet18").DEFAULT
    monkeypatch.setattr(type(entry), "get_state_dict", lambda self, **kw: weights)
    evaluate.main(["resnet18", "--data", str(data), "--image-size", "16", "--device", "cpu",
                   "--out", str(tmp_path / "r18")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = create_model("resnet18", 3, 16).eval()
    model.load_state_dict(weights)
    val = validation_loader(data, "val", 64, 16, torch.device("cpu"), None)
    logits, labels = model_logits(model, val, torch.device("cpu"), None)
    assert summary["count"] == 18 and summary["nll"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert (tmp_path / "r18" / "report.md").read_text().startswith(
        f"# resnet18 (torchvision's ResNet18_Weights.IMAGENET1K_V1): {data}/val at 16 px\n")
    monkeypatch.setattr(type(entry), "get_state_dict", lambda self, **kw: create_model("resnet18", 1000).state_dict())
    with pytest.raises(SystemExit, match=r"^resnet18: the weights' classes must be those of .*/val \(3, in folder "
                                         r"order\), or ImageNet-1k's with wnid folders: .* size mismatch for fc"):
        evaluate.main(["resnet18", "--data", str(data), "--image-size", "16", "--device", "cpu",
                       "--out", str(tmp_path / "r18b")])
    for argv, line in ((["resnet18"], "--data: needed to evaluate resnet18's pretrained weights"),
                       (["resnet20", "--data", str(data)], "torchvision has no weights for resnet20")):
        with pytest.raises(SystemExit):
            evaluate.main(argv)
        assert line in capsys.readouterr().err


def test_imagenet_weights_on_a_subset_of_imagenets_classes_take_their_logits(data, tmp_path, monkeypatch, capsys):
    """Wnid folders of some of ImageNet's classes (Imagenette, ImageNet-A and -R): the 1000-class model's
    logits of those classes, as ImageNet-A and -R are evaluated."""
    pytest.importorskip("timm", reason="the wnids of ImageNet's classes come from timm")
    import torchvision

    from pysoftlabel.data.loaders import validation_loader
    from pysoftlabel.engine import model_logits
    from pysoftlabel.models import create_model
    wnids = ("n01440764", "n02102040", "n03888257")  # tench, springer, parachute: ImageNet's 0, 217, 701
    for split in ("train", "val"):
        for folder, wnid in zip(sorted((data / split).iterdir()), wnids):
            shutil.copytree(folder, tmp_path / "subset" / split / wnid)
    torch.manual_seed(0)
    weights = create_model("resnet18", 1000, 16).state_dict()
    entry = torchvision.models.get_model_weights("resnet18").DEFAULT
    monkeypatch.setattr(type(entry), "get_state_dict", lambda self, **kw: weights)
    evaluate.main(["resnet18", "--data", str(tmp_path / "subset"), "--image-size", "16", "--device", "cpu",
                   "--out", str(tmp_path / "e")])
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert "holds 3 of ImageNet's 1000 classes" in captured.err
    model = create_model("resnet18", 1000, 16).eval()
    model.load_state_dict(weights)
    val = validation_loader(tmp_path / "subset", "val", 64, 16, torch.device("cpu"), None)
    logits, labels = model_logits(model, val, torch.device("cpu"), None)
    assert summary["nll"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits[:, [0, 217, 701]], labels).item(), rel=1e-5)
    assert "the logits of the data's 3 ImageNet classes" in (tmp_path / "e" / "report.md").read_text()


def test_evaluate_compares_several_checkpoints(data, tmp_path, capsys):
    for name in ("ce", "ls"):
        run(data, tmp_path / "a" / name, "--strategy", name, "--epochs", "1")
    run(data, tmp_path / "b" / "ls", "--strategy", "ls", "--epochs", "1", "--seed", "1")
    checkpoints = [str(tmp_path / run_dir / "checkpoint.pt") for run_dir in ("a/ce", "a/ls", "b/ls")]
    with pytest.raises(SystemExit):  # a bad one is found before any is evaluated
        evaluate.main(checkpoints + [str(tmp_path / "missing.pt"), "--out", str(tmp_path / "cmp")])
    assert "missing.pt does not exist" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    evaluate.main(checkpoints + ["--out", str(tmp_path / "cmp")])
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["checkpoint"] for line in printed] == checkpoints
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["run"] for row in rows] == ["a-ce", "a-ls", "b-ls"]  # the folders above where names repeat
    for row, line in zip(rows, printed):
        assert row["ece"] == line["ece"] and (tmp_path / "cmp" / row["run"] / "report.md").exists()
    table = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    assert table[:3] == ["# Calibration of 3 models", "", "ECE and MCE over 15 equal-width confidence bins."]
    assert table[7].startswith("| a-ls | resnet20, ls, after epoch 1 |")
    # Evaluated on the same rows: each against the first with the paired interval.
    assert "| ECE − a-ce's, paired |" in table[4] and "| reference |" in table[6]
    for row in rows[1:]:
        assert row["ece_minus_first"] == pytest.approx(row["ece"] - rows[0]["ece"], abs=1e-6)
        assert row["ece_minus_first_ci95_low"] <= row["ece_minus_first"] <= row["ece_minus_first_ci95_high"]
    assert f"| {rows[2]['accuracy']:.4f} |" in table[8]
    # The data have boxes: ALS's context-only confidence of every model, in the table too.
    assert table[4].endswith("| context-only confidence |")
    assert all(table[6 + i].endswith(f"| {row['context_confidence']:.4f} |") for i, row in enumerate(rows))
    if (tmp_path / "a" / "ce" / "reliability.png").exists():  # matplotlib installed
        assert (tmp_path / "cmp" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # A run's folder stands for its checkpoint.
    evaluate.main([str(tmp_path / run_dir) for run_dir in ("a/ce", "a/ls", "b/ls")] + ["--out", str(tmp_path / "dirs")])
    assert [line["checkpoint"] for line in map(json.loads, capsys.readouterr().out.strip().splitlines())] == checkpoints
    assert json.loads((tmp_path / "dirs" / "comparison.json").read_text()) == rows
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "empty")])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"checkpoint: {tmp_path / 'empty'} is a folder without a checkpoint.pt (a run's folder holds one)")
    with pytest.raises(SystemExit):
        run(data, tmp_path / "student", "--strategy", "kd", "--teacher", str(tmp_path / "empty"))
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--teacher: {tmp_path / 'empty'} is a folder without a checkpoint.pt")
    student = run(data, tmp_path / "student", "--strategy", "kd", "--epochs", "1", "--teacher", str(tmp_path / "a/ce"))
    assert len(student) == 1 and not (tmp_path / "student" / "teacher").exists()  # taught by a/ce, none trained
    assert json.loads((tmp_path / "student" / "args.json").read_text())["teacher"] == checkpoints[0]


def test_evaluate_reports_outputs_saved_from_any_model_beside_a_checkpoint(data, tmp_path, capsys):
    import numpy as np

    import pysoftlabel as psl
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 4, generator=g) * 3
    labels = torch.where(torch.rand(300, generator=g) < 0.6, logits.argmax(1), torch.randint(0, 4, (300,), generator=g))
    torch.save({"logits": logits, "labels": labels}, tmp_path / "vit.pt")
    np.savez(tmp_path / "vit_np.npz", logits=logits.numpy(), labels=labels.numpy())
    torch.save({"probabilities": logits.softmax(1), "labels": labels}, tmp_path / "vit_probs.pt")
    evaluate.main([str(tmp_path / "vit.pt")])
    report = json.loads((tmp_path / "vit-eval" / "report.json").read_text())
    direct = psl.calibration_stats(logits, labels)
    assert report["ece"] == pytest.approx(direct.ece, abs=1e-9) and report["count"] == 300
    assert report["title"] == f"{tmp_path / 'vit.pt'}: saved logits, 300 rows of 4 classes"
    capsys.readouterr()
    run(data, tmp_path / "ce", "--strategy", "ce", "--epochs", "1")
    inputs = [str(tmp_path / name) for name in ("vit.pt", "vit_np.npz", "vit_probs.pt")]
    evaluate.main(inputs + [str(tmp_path / "ce" / "checkpoint.pt"), "--out", str(tmp_path / "cmp")])
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [row["run"] for row in rows] == ["vit", "vit_np", "vit_probs", "ce"]
    for row in rows[1:3]:  # the same outputs as arrays, and as softmax probabilities: the same report
        assert row["ece"] == pytest.approx(rows[0]["ece"], abs=1e-6)
        assert row["nll"] == pytest.approx(rows[0]["nll"], rel=1e-5)
        assert row["temperature"] == pytest.approx(rows[0]["temperature"], rel=1e-4)
    assert rows[2]["trained"] == "saved probabilities" and rows[3]["trained"] == "resnet20, ce, after epoch 1"
    assert rows[1]["ece_minus_first"] == 0 and abs(rows[2]["ece_minus_first"]) < 1e-6  # the same outputs
    assert "ece_minus_first" not in rows[3]  # other rows: no paired difference
    # A checkpoint's logits kept (--save-logits) give back its report without the model or the data.
    evaluate.main([str(tmp_path / "ce" / "checkpoint.pt"), "--out", str(tmp_path / "ce-eval"), "--save-logits"])
    evaluate.main([str(tmp_path / "ce-eval" / "logits.pt"), "--out", str(tmp_path / "ce-again")])
    first, again = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("ce-eval", "ce-again"))
    assert again["ece"] == first["ece"] and again["nll"] == first["nll"] and again["count"] == first["count"]
    assert "were not all evaluated on the same data" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nothing would take them
        evaluate.main(inputs[:2] + ["--data", str(data), "--image-size", "32"])
    assert "--data, --image-size: the data options apply to checkpoints" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # it wrote nothing
        evaluate.main(inputs[:2] + ["--save-logits"])
    assert "--save-logits: these are saved outputs already; it keeps a checkpoint's" in capsys.readouterr().err


def test_evaluate_takes_the_number_of_bins(tmp_path, capsys):
    import pysoftlabel as psl
    from pysoftlabel.metrics import ece_difference_interval, heldout_temperature_ece
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(400, 5, generator=g) * 2
    labels = torch.where(torch.rand(400, generator=g) < 0.7, logits.argmax(1), torch.randint(0, 5, (400,), generator=g))
    torch.save({"logits": logits, "labels": labels}, tmp_path / "a.pt")
    torch.save({"logits": logits * 1.5, "labels": labels}, tmp_path / "b.pt")
    evaluate.main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--n-bins", "10", "--out", str(tmp_path / "cmp")])
    report = json.loads((tmp_path / "cmp" / "a" / "report.json").read_text())
    assert report["n_bins"] == 10 and len(report["bins"]) == 10
    assert report["ece"] == pytest.approx(psl.calibration_stats(logits, labels, 10).ece, abs=1e-9)
    assert report["ece"] != pytest.approx(psl.calibration_stats(logits, labels, 15).ece, abs=1e-6)
    assert report["ece_after_temperature_heldout"] == pytest.approx(heldout_temperature_ece(logits, labels, n_bins=10))
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert rows[1]["ece_minus_first"] == pytest.approx(ece_difference_interval(logits, logits * 1.5, labels, 10)[0])
    assert "over 10 equal-width confidence bins" in (tmp_path / "cmp" / "comparison.md").read_text()
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "a.pt"), "--n-bins", "0"])
    assert "--n-bins must be at least 1, got 0" in capsys.readouterr().err


def test_evaluate_takes_saved_probabilities_that_underflowed_to_zero(tmp_path):
    # fp16 softmax outputs hold zeros: their log is -inf, a class ruled out, which made the fitted temperature
    # NaN and the whole report fail ("447 row(s) had non-finite values").
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g) * 6
    labels = logits.argmax(1)
    probabilities = logits.softmax(1).half().float()
    assert (probabilities == 0).any()
    torch.save({"probabilities": probabilities, "labels": labels}, tmp_path / "fp16.pt")
    evaluate.main([str(tmp_path / "fp16.pt")])
    report = json.loads((tmp_path / "fp16-eval" / "report.json").read_text())
    assert report["count"] == 300 and 0 < report["temperature"] < float("inf")
    assert report["ece_after_temperature"] == report["ece_after_temperature"]  # not NaN


def test_evaluate_takes_saved_bfloat16_probabilities(tmp_path):
    # bf16 softmax rows sum to 1 within about 3e-3 only: they were refused as "not summing to 1".
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(400, 100, generator=g) * 4
    labels = torch.randint(0, 100, (400,), generator=g)
    probabilities = logits.bfloat16().softmax(1)
    assert (probabilities.float().sum(1) - 1).abs().max() > 1e-3
    torch.save({"probabilities": probabilities, "labels": labels}, tmp_path / "bf16.pt")
    evaluate.main([str(tmp_path / "bf16.pt")])
    report = json.loads((tmp_path / "bf16-eval" / "report.json").read_text())
    assert report["count"] == 400
    from pysoftlabel import calibration_stats
    assert report["ece"] == pytest.approx(calibration_stats(probabilities.float().log(), labels).ece)


@pytest.mark.parametrize("save, match", [
    (lambda p: torch.save({"logits": torch.randn(5, 3)}, p), r"saved outputs are labels and one of logits, "
                                                             r"probabilities; it holds logits$"),
    (lambda p: torch.save({"logits": torch.randn(5, 3), "labels": torch.tensor([0, 1, 2, 3, 0])}, p),
     r"labels must be in \[0, 3\), row 3 has 3"),
    (lambda p: torch.save({"logits": torch.randn(5, 3), "labels": torch.zeros(5)}, p),
     r"labels must be 5 class indices"),
    (lambda p: torch.save({"logits": torch.randn(5, 3, 2), "labels": torch.zeros(5, dtype=torch.long)}, p),
     r"logits must be a float array of shape \[N, C\]"),
    (lambda p: torch.save({"probabilities": torch.rand(5, 3), "labels": torch.zeros(5, dtype=torch.long)}, p),
     r"probabilities must be non-negative rows summing to 1"),
    (lambda p: p.with_suffix(".npz").write_bytes(b"not a zip"), r"not a readable .npz file"),
    (lambda p: torch.save({"logits": torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [float("inf"), 0.0],
                                                   [-float("inf"), 2.0]]), "labels": torch.zeros(4, dtype=torch.long)},
                          p), r"logits of 2 of 4 rows are not finite \(NaN or inf\), the first row 1: "),
    (lambda p: torch.save({"logit": torch.randn(5, 3), "label": torch.zeros(5)}, p),
     r"neither a checkpoint of tools/train_imagenet.py \(arch, classes, model\) nor saved outputs \(labels, and "
     r"logits or probabilities\); it holds label, logit$"),
])
def test_bad_saved_outputs_are_one_line_naming_the_file(tmp_path, capsys, save, match):
    path = tmp_path / "outputs.pt"
    save(path)
    path = path if path.exists() else path.with_suffix(".npz")
    with pytest.raises(SystemExit):
        evaluate.main([str(path)])
    assert re.search(match, capsys.readouterr().err.strip().splitlines()[-1].split(f"{path}: ", 1)[1])


def test_a_comparison_over_different_data_says_so(tmp_path, capsys):
    bins = [{"lower": 0.0, "upper": 1.0, "count": 4, "confidence": 0.7, "accuracy": 0.5}]
    summary = {"accuracy": 0.5, "acc5": 1.0, "ece": 0.2, "ece_ci95_low": 0.15, "ece_ci95_high": 0.3, "mce": 0.2,
               "nll": 1.0, "brier": 0.6, "ece_after_temperature_heldout": 0.1, "bins": bins}
    jobs = [{"checkpoint": f"{name}/checkpoint.pt", "trained": f"resnet20, {name}, after epoch 1",
             "evaluated_on": f"d/{split} at 32 px"} for name, split in (("ce", "val"), ("ls", "test"))]
    evaluate.write_comparison(tmp_path, ["ce", "ls"], jobs, [summary, summary])
    assert "were not all evaluated on the same data" in capsys.readouterr().err
    lines = (tmp_path / "comparison.md").read_text().splitlines()
    assert lines[4] == "Not all evaluated on the same data: compare with care (the data column)."
    assert lines[-1] == ("| ls | resnet20, ls, after epoch 1 | d/test at 32 px | 0.5000 | 1.0000 | "
                         "0.2000 (95% CI 0.1500–0.3000) | 0.2000 | 1.0000 | 0.6000 | 0.1000 |")


def test_evaluate_takes_the_runs_data_and_options(data, tmp_path, capsys):
    # A --resident run (images at their own size, 32 px) under bf16: the checkpoint alone must give the same
    # report, with no --data, --resident, --image-size or --amp repeated.
    run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "1", "--resident", "--image-size", "32", "--amp", "bf16")
    evaluate.main([str(tmp_path / "r" / "checkpoint.pt"), "--device", "cpu"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = json.loads((tmp_path / "r" / "report.json").read_text())
    assert summary["nll"] == pytest.approx(trained["nll"], rel=1e-6) and summary["count"] == trained["count"]
    assert summary["ece"] == pytest.approx(trained["ece"], rel=1e-6, abs=1e-9)


def test_evaluate_takes_the_runs_boxes(data, tmp_path, capsys):
    import shutil
    moved = shutil.copytree(data, tmp_path / "data")
    shutil.move(moved / "boxes", tmp_path / "boxes")  # boxes outside DATA: only the run's --boxes finds them
    run(moved, tmp_path / "als", "--strategy", "als", "--epochs", "1", "--boxes", str(tmp_path / "boxes"))
    evaluate.main([str(tmp_path / "als" / "checkpoint.pt")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["context_crops"] > 0


def test_evaluate_without_the_runs_options_asks_for_data(tmp_path, capsys):
    save_checkpoint({"arch": "resnet20", "classes": ["a", "b"], "model": {}}, tmp_path / "alone.pt")
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "alone.pt")])
    assert "--data: needed" in capsys.readouterr().err


def test_resident_small_dataset_path_resumes_exactly(data, tmp_path):
    common = ("--strategy", "ls", "--resident", "--image-size", "32", "--cutout", "8", "--aug", "cutmix")
    whole = run(data, tmp_path / "whole", *common)
    run(data, tmp_path / "parts", *common, "--stop-after", "1")
    parts = run(data, tmp_path / "parts", *common, "--resume")
    assert KEYS <= set(whole[-1])
    assert parts[1]["val_nll"] == pytest.approx(whole[1]["val_nll"], rel=1e-6)


def test_a_resident_run_is_for_the_images_own_size(data, tmp_path):
    # The resident path takes the images as they are: a run "at 16 px" used to train and report on 32-px images
    # (and a benchmark built its model-only reference at the --image-size it was given, not at the images').
    with pytest.raises(SystemExit, match=r"the images of .*train are 32x32, and the resident path takes them at "
                                         r"their own size, not at image size 16"):
        run(data, tmp_path / "r16", "--strategy", "ce", "--resident")
    run(data, tmp_path / "r", "--strategy", "ce", "--epochs", "1", "--resident", "--image-size", "32")
    with pytest.raises(SystemExit, match="are 32x32, and the resident path takes them at their own size, not at "
                                         "image size 16"):
        evaluate.main([str(tmp_path / "r" / "checkpoint.pt"), "--image-size", "16"])


# An overflow skips the first step: the schedule moves on regardless, and says nothing of it (PyTorch's
# "lr_scheduler.step() before optimizer.step()" would read as a bug of the loop).
@pytest.mark.filterwarnings("error::UserWarning")
def test_fp16_scales_the_loss_and_resumes_the_scaler(data, tmp_path, capsys):
    common = ("--strategy", "ls", "--amp", "fp16", "--seed", "1")  # a seed whose one overflow is in epoch 1
    whole = run(data, tmp_path / "whole", *common)
    assert "note: --amp fp16 on the CPU has no fast convolution kernels" in capsys.readouterr().err
    run(data, tmp_path / "parts", *common, "--stop-after", "1")
    parts = run(data, tmp_path / "parts", *common, "--resume")
    assert parts[1]["val_nll"] == pytest.approx(whole[1]["val_nll"], rel=1e-6)
    scaler = [torch.load(out / "checkpoint.pt", weights_only=False)["scaler"] for out in (tmp_path / "whole",
                                                                                            tmp_path / "parts")]
    # Restored, the scaler goes on from the first invocation: the scale its overflow halved, and the growth
    # tracker, which counts the steps since the last overflow, past the second invocation's 6 steps.
    assert scaler[0] == scaler[1] and scaler[0]["scale"] < 2.0 ** 16 and scaler[0]["_growth_tracker"] > 6


def test_another_strategys_options_are_noted_as_ignored(capsys):
    """A strategy option given to a strategy that does not use it is named on stderr, not refused (one script
    may loop over the strategies with the same options); an option at its default value is not named."""
    parse_args(["--strategy", "ce", "--ols-alpha", "0.3", "--eps", "0.2", "--als-eps", "0.1", "0.9"])
    note = "note: --strategy ce ignores --eps (ls, als), --als-eps (als), --ols-alpha (ols)\n"
    assert capsys.readouterr().err == note
    parse_args(["--strategy", "ls", "--eps", "0.2", "--ols-alpha", "0.5", "--kd-temperature", "3"])
    assert capsys.readouterr().err == ""


def test_a_note_is_written_once_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    parse_args(["--strategy", "ce", "--ols-alpha", "0.3"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    parse_args(["--strategy", "ce", "--ols-alpha", "0.3"])
    assert capsys.readouterr().err == "note: --strategy ce ignores --ols-alpha (ols)\n"


@pytest.mark.parametrize("aug, default", [("mixup", 1.0), ("cutmix", 1.0), ("ricap", 0.3)])
def test_mix_alpha_reaches_the_mixer_and_defaults_to_the_papers(aug, default, capsys):
    assert make_mix(parse_args(["--aug", aug])).alpha == default
    assert make_mix(parse_args(["--aug", aug, "--mix-alpha", "0.2"])).alpha == 0.2
    args = parse_args(["--mix-alpha", "0.2"])  # a table's recipe gives it to its runs without --aug too
    assert make_mix(args) is None and args.mix_alpha is None
    assert capsys.readouterr().err == "note: --aug none ignores --mix-alpha\n"


def test_ols_fine_grained_recipe_options_reach_the_strategy():
    args = parse_args(["--strategy", "ols", "--ols-init", "uniform", "--ols-freeze-at", "0.88"])
    strategy = make_strategy("ols", args, None, 4, None, torch.device("cpu"), steps=10)
    assert torch.equal(strategy.table, torch.full((4, 4), 0.25)) and strategy.freeze_at == 0.88
    default = make_strategy("ols", parse_args([]), None, 4, None, torch.device("cpu"), 10)
    assert torch.equal(default.table, torch.zeros(4, 4)) and default.freeze_at is None


def test_a_metrics_line_torn_by_a_crash_is_dropped_on_resume_and_other_damage_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epoch": 1}\n{"epo')  # a power loss in the middle of the third append
    EpochLog(tmp_path, "ols", 4, 2)
    assert path.read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}: dropping its last line, cut off by a crash: {{\"epo")
    path.write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2 is not a JSON record of an epoch")):
        EpochLog(tmp_path, "ols", 4, 2)
    assert path.read_text() == '{"epoch": 0}\nnot json\n{"epoch": 1}\n'  # left as it was, for its owner to see


def test_each_epochs_metrics_line_reaches_the_disk(tmp_path, monkeypatch):
    import os
    log = EpochLog(tmp_path, "ols", 4, 0)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    log.write({"epoch": 0, "train_loss": 1.0, "train_acc1": 0.5, "val_acc1": 0.5, "val_ece": 0.1, "img_per_s": 9.0})
    assert (tmp_path / "metrics.jsonl").stat().st_ino in synced


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    import io
    pytest.importorskip("tqdm", reason="the progress bar needs tqdm (in the train and test extras)")

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("COLUMNS", "100")
    update = EpochLog(tmp_path, "ols", 4, 0).progress(1)
    for step in (1, 2, 3):
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        update(step, 3)
    assert "[ols] epoch 2/4" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_tensorboard_logs_the_epoch_figures(data, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is optional (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    records = run(data, tmp_path / "run", "--strategy", "ls")
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("val_ece")] == pytest.approx([r["val_ece"] for r in records])


def test_multistep_schedule_after_warmup():
    args = parse_args(["--schedule", "multistep", "--epochs", "4", "--milestones", "2", "3",
                                      "--warmup-epochs", "1"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(args, optimizer, steps=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0)  # warm-up from 0.1x over epoch 1
    assert lrs[19] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)


def test_trains_on_webdataset_shards(data, tmp_path, capsys):
    make_webdataset.main([str(data), str(tmp_path / "wds"), "--per-shard", "10"])
    records = run(tmp_path / "wds", tmp_path / "out", "--strategy", "ls", "--epochs", "1")
    assert len(records) == 1 and 0 <= records[0]["val_acc1"] <= 1
    # The classes keep their names (OUT/classes.txt): the model evaluates on the folders it was converted from.
    state = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert state["classes"] == sorted(p.name for p in (data / "train").iterdir())
    capsys.readouterr()
    evaluate.main([str(tmp_path / "out" / "checkpoint.pt"), "--data", str(data), "--out", str(tmp_path / "e")])
    folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shards = json.loads((tmp_path / "out" / "report.json").read_text())
    assert folder["count"] == shards["count"] and folder["nll"] == pytest.approx(shards["nll"], rel=1e-5)
    with pytest.raises(SystemExit, match="^data: --train-per-class needs ImageNet-layout folders, not shards$"):
        run(tmp_path / "wds", tmp_path / "refused", "--train-per-class", "4")
    # ALS: the shards' samples are named by the files' stems, which name their boxes (refused before)
    als = run(tmp_path / "wds", tmp_path / "als", "--strategy", "als", "--epochs", "1", "--boxes", str(data / "boxes"))
    folders = run(data, tmp_path / "als-folders", "--strategy", "als", "--epochs", "1")
    assert als[0]["boxes_matched"] == folders[0]["boxes_matched"] > 0
    assert 0 < als[0]["val_context_conf"] <= 1
    summaries = []
    for source in ([], ["--data", str(data)]):  # the shards' context crops are the folders' (counted as crops)
        capsys.readouterr()
        evaluate.main([str(tmp_path / "als"), "--boxes", str(data / "boxes"), "--out", str(tmp_path / "e"), *source])
        summaries.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert summaries[0]["context_crops"] == summaries[1]["context_crops"] > 1
    assert summaries[0]["context_confidence"] == pytest.approx(summaries[1]["context_confidence"], rel=1e-5)


def test_without_dali_the_tools_say_what_to_install_and_resident_data_still_trains(data, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.setitem(sys.modules, "nvidia", None)  # as where DALI is not installed (macOS, Windows)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    need = "pysoftlabel's data layer needs NVIDIA DALI (Linux): pip install nvidia-dali-cuda130"
    with pytest.raises(SystemExit, match=re.escape(need)):
        run(data, tmp_path / "dali", "--strategy", "ce", "--epochs", "1")
    records = run(data, tmp_path / "resident", "--strategy", "ce", "--epochs", "1", "--resident", "--image-size", "32")
    assert len(records) == 1
    with pytest.raises(SystemExit, match=re.escape(need)):
        evaluate.main([str(tmp_path / "resident" / "checkpoint.pt"), "--no-resident"])
