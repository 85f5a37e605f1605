"""tools/reproduce.py on a tiny synthetic stand-in for CIFAR-10: runs, records, teacher reuse, resume, table."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", reason="train_imagenet.py needs NVIDIA DALI (pip install nvidia-dali-cuda130)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import reproduce  # noqa: E402

from pysoftlabel.data import make_synthetic_dataset  # noqa: E402


def test_reproduce_trains_records_resumes_and_tabulates(tmp_path, capsys):
    make_synthetic_dataset(tmp_path / "data" / "cifar10", num_classes=3, train_per_class=8, val_per_class=4,
                           image_size=32, seed=1)
    common = ["--preset", "cifar10-cpu", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "table"),
              "--records", str(tmp_path / "records")]
    extra = ["--", "--epochs", "2", "--val-split", "val", "--batch-size", "8"]
    argv = common + ["--only", "ldl,ce+cutmix"] + extra
    reproduce.main(argv)
    for run in ("ce", "ldl", "ce+cutmix"):  # ldl trained its teacher, the ce run of the same seed
        assert (tmp_path / "table" / run / "seed0" / "report.json").exists(), run
        record = tmp_path / "records" / run / "seed0"
        assert sorted(f.name for f in record.iterdir()) == ["metrics.jsonl", "report.json", "run.json"], run
        run_info = json.loads((record / "run.json").read_text())
        assert run_info["seconds"] > 0
        assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", run_info["commit"]), run_info  # the code that trained it
    table = (tmp_path / "table" / "results.md").read_text()
    assert f"Trained: {run_info['date']} at {run_info['commit']} (ldl/seed0, ce+cutmix/seed0)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ldl") or line.startswith("| ce+cutmix")]
    assert len(rows) == 2 and all("| 1 |" in row and row.endswith(" s |") for row in rows)
    report = json.loads((tmp_path / "records" / "ldl" / "seed0" / "report.json").read_text())
    ece = json.loads((tmp_path / "records" / "ldl" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])["val_ece"]
    # one seed: its ECE with the report's 95% bootstrap interval
    assert f"| {ece:.4f} (95% CI {report['ece_ci95_low']:.4f}–{report['ece_ci95_high']:.4f}) |" in rows[0]
    assert (tmp_path / "table" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    reproduce.main(argv)  # everything finished: nothing is trained again
    assert capsys.readouterr().out.count(": done") == 2

    # A fresh checkout: the records are there (tracked in git), the runs and checkpoints are not.
    shutil.rmtree(tmp_path / "table")
    ce_record = (tmp_path / "records" / "ce" / "seed0" / "report.json").read_text()
    reproduce.main(common + ["--only", "ldl,ce+cutmix", "--table-only"] + extra)
    assert table == (tmp_path / "table" / "results.md").read_text()
    capsys.readouterr()
    reproduce.main(common + ["--only", "kd"] + extra)  # needs the teacher: trained again, its record kept
    assert "training it again as the teacher" in capsys.readouterr().out
    assert (tmp_path / "records" / "kd" / "seed0" / "report.json").exists()
    assert (tmp_path / "records" / "ce" / "seed0" / "report.json").read_text() == ce_record


def test_records_of_another_recipe_are_refused_in_one_line(tmp_path, capsys):
    # A table names one recipe: records trained with other options after -- (or an older preset) are not
    # counted in it silently, and are not taken as finished runs of this one.
    def record(run, seed, info):
        folder = tmp_path / "records" / run / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text("{}")
        (folder / "run.json").write_text(json.dumps(info))
    preset = reproduce.PRESETS["cifar10-cpu"]["args"]
    record("ce", 0, {"recipe": preset + ["--epochs", "2"]})
    # an older record holds the command only; where the data were and how fast it went do not count
    record("ldl", 1, {"command": " ".join(["tools/train_imagenet.py", "--data", "/elsewhere", "--strategy", "ldl",
                                           "--seed", "1", *preset, "--threads", "4", "--teacher", "/t.pt"])})
    common = ["--preset", "cifar10-cpu", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "out")]
    assert reproduce.parse_args(common + ["--seeds", "0", "--", "--epochs=2"]).seeds == [0]
    assert reproduce.parse_args(common + ["--seeds", "1"]).seeds == [1]
    with pytest.raises(SystemExit):
        reproduce.parse_args(common + ["--seeds", "0", "1", "--only", "ls"])  # ce seed 0 would be ls's teacher
    err = capsys.readouterr().err
    assert f"{tmp_path / 'records' / 'ce' / 'seed0'} was trained with --epochs 2; this table's recipe has " \
           "--epochs 15" in err
    with pytest.raises(SystemExit):
        reproduce.parse_args(common + ["--seeds", "1", "--table-only", "--", "--cutout", "8"])
    assert "ldl/seed1 was trained with no --cutout; this table's recipe has --cutout 8" in capsys.readouterr().err


def test_a_table_of_no_finished_run_is_refused_in_one_line(tmp_path, capsys):
    # a mistyped --records (or seeds not trained yet) would write a table of dashes and an empty provenance
    common = ["--preset", "cifar10-cpu", "--records", str(tmp_path / "records"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        reproduce.parse_args(common + ["--only", "ce,ls", "--table-only"])
    assert capsys.readouterr().err.endswith(
        f"error: --table-only: {tmp_path / 'records'} holds no finished run of ce, ls for seeds [0]: train them "
        "first (the same command without --table-only), or give --records\n")
    assert reproduce.parse_args(common + ["--only", "ce,ls"]).runs == ["ce", "ls"]  # to be trained: fine


def run_like_train_imagenet(folder):
    """A command that answers SIGINT / SIGTERM as train_imagenet.py does (finish the step, checkpoint, exit
    130), writing folder/ready when it runs and folder/signals (how many it got) when it stops."""
    script = folder / "run.py"
    script.write_text(textwrap.dedent("""
        import pathlib, signal, sys, time
        out, got = pathlib.Path(sys.argv[1]), []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: got.append(signum))
        (out / "ready").write_text("")
        for _ in range(3000):
            if got:
                break
            time.sleep(0.01)
        time.sleep(1.0)  # the running step and the checkpoint
        (out / "signals").write_text(str(len(got)))
        sys.exit(130)
    """))
    return [sys.executable, str(script), str(folder)]


def wait_for(path, seconds=30):
    for _ in range(seconds * 100):
        if path.exists():
            return True
        time.sleep(0.01)
    return False


def test_ctrl_c_reaches_the_run_once_and_is_waited_for(tmp_path):
    # train_imagenet.py answers Ctrl-C by finishing its step and checkpointing (a second one stops it at
    # once); subprocess.run used to kill it 0.25 s after the Ctrl-C, mid-checkpoint.
    def press_ctrl_c():
        wait_for(tmp_path / "ready")
        os.kill(os.getpid(), signal.SIGINT)
    handler = signal.getsignal(signal.SIGINT)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    assert reproduce.run_to_its_end(run_like_train_imagenet(tmp_path)) == 130
    assert (tmp_path / "signals").read_text() == "1"
    assert signal.getsignal(signal.SIGINT) is handler  # put back


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_does_not_outlive_a_killed_reproduce(tmp_path):
    # In its own process group the run no longer dies with a group kill of reproduce.py; killed itself
    # (SIGKILL), reproduce.py cannot pass anything on, so the kernel sends the run SIGTERM.
    code = (f"import sys; sys.path.insert(0, {str(Path(reproduce.__file__).parent)!r}); import reproduce; "
            f"reproduce.run_to_its_end({run_like_train_imagenet(tmp_path)!r})")
    parent = subprocess.Popen([sys.executable, "-c", code])
    assert wait_for(tmp_path / "ready")
    parent.kill()
    parent.wait()
    assert wait_for(tmp_path / "signals", seconds=10) and (tmp_path / "signals").read_text() == "1"


def test_a_run_that_stops_ends_the_table_in_one_line(tmp_path, monkeypatch):
    make_synthetic_dataset(tmp_path / "data" / "cifar10", num_classes=2, train_per_class=2, val_per_class=1,
                           image_size=32, seed=1)
    argv = ["--preset", "cifar10-cpu", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "table"),
            "--records", str(tmp_path / "records"), "--only", "ls,ce"]
    monkeypatch.setattr(reproduce, "run_to_its_end", lambda cmd: 130)  # interrupted
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(argv)
    assert str(stopped.value) == ("ls seed 0: train_imagenet.py stopped with exit status 130 (its message is "
                                  "above); the same command continues the table, resuming this run")
    monkeypatch.setattr(reproduce, "run_to_its_end", lambda cmd: 0)  # --stop-after: no report yet
    with pytest.raises(SystemExit, match="ls seed 0: stopped before its last epoch"):
        reproduce.main(argv + ["--", "--stop-after", "1"])
    assert not (tmp_path / "records").exists()

    # The record's time is the run's over all the calls that trained it, not the last call's.
    folder = tmp_path / "table" / "ls" / "seed0"

    def call(finish):
        def run_to_its_end(cmd):
            folder.mkdir(parents=True, exist_ok=True)
            time.sleep(0.5)
            if finish:
                (folder / "metrics.jsonl").write_text('{"epoch": 0}\n')
                (folder / "report.json").write_text("{}")
            return 0 if finish else 130
        return run_to_its_end
    args = reproduce.parse_args(argv)
    monkeypatch.setattr(reproduce, "run_to_its_end", call(finish=False))
    with pytest.raises(SystemExit):
        reproduce.train_run(args, "ls", 0, tmp_path / "data" / "cifar10")
    monkeypatch.setattr(reproduce, "run_to_its_end", call(finish=True))
    reproduce.train_run(args, "ls", 0, tmp_path / "data" / "cifar10")
    assert json.loads((tmp_path / "records" / "ls" / "seed0" / "run.json").read_text())["seconds"] >= 1.0


def test_a_record_is_written_whole_or_not_at_all(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')  # report.json is missing: the copy fails half-way
    record = tmp_path / "records" / "ce" / "seed0"
    with pytest.raises(FileNotFoundError):
        reproduce.write_record(record, run, {"seconds": 1.0})
    assert not record.exists() and list((tmp_path / "records" / "ce").iterdir()) == []
    (run / "report.json").write_text("{}")
    reproduce.write_record(record, run, {"seconds": 1.0})
    assert sorted(f.name for f in record.iterdir()) == ["metrics.jsonl", "report.json", "run.json"]


def test_unknown_run_is_one_clear_line(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--preset", "cifar10-cpu", "--only", "ce,nope"])
    assert "not in preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--preset", "cifar10-cpu", "--seeds", "0", "-1"])
    assert "--seeds must be in [0, 2**32)" in capsys.readouterr().err


def test_a_run_or_seed_given_twice_is_one_row_and_one_run():
    args = reproduce.parse_args(["--preset", "cifar10-cpu", "--only", "ls,ce,ls", "--seeds", "1", "0", "1"])
    assert args.runs == ["ls", "ce"] and args.seeds == [1, 0]


def test_records_are_not_ignored_by_git():
    # The records are committed, and only what git does not ignore travels to the GPU machine: a pattern that
    # caught docs/runs/ would lose them both ways without a word.
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    record = "docs/runs/cifar10-gpu/ce/seed0/report.json"
    check = subprocess.run(["git", "check-ignore", "-q", record], cwd=root)
    assert check.returncode == 1, f"git ignores {record}"


def test_a_copy_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "HERE", tmp_path)  # a GPU lease's copy of the files: no .git
    monkeypatch.delenv("PYSOFTLABEL_COMMIT", raising=False)
    assert reproduce.source_commit() is None
    monkeypatch.setenv("PYSOFTLABEL_COMMIT", "825f172")
    assert reproduce.source_commit() == "825f172"
