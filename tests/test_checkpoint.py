"""Checkpoint files: atomic replacement, and the background writer's snapshot, ordering and errors."""
import os
import stat
import threading

import numpy as np
import pytest
import torch

from pysoftlabel.atomic import write_atomically, write_text_atomically
from pysoftlabel.engine import CheckpointWriter, load_checkpoint, save_checkpoint
from pysoftlabel.engine import checkpoint as checkpoint_module


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 2, "bad": threading.Lock()}, path)  # a lock cannot be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint({"epoch": 1}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'run'} is a run's folder: its checkpoint is "
                                         f"{tmp_path / 'run' / 'checkpoint.pt'}$"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=f"{tmp_path} is a folder without a checkpoint.pt"):
        load_checkpoint(tmp_path)


def test_text_is_replaced_whole_and_readable_by_others(tmp_path):
    path = write_text_atomically(tmp_path / "metrics.jsonl", '{"epoch": 0}\n')
    with pytest.raises(ZeroDivisionError):  # a write stopped half way (a kill, a full disk)
        write_atomically(path, lambda f: (f.write(b'{"ep'), 1 / 0))
    assert path.read_text() == '{"epoch": 0}\n' and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    write_text_atomically(path, "")
    assert path.read_text() == "" and path.stat().st_mode & 0o777 == 0o644  # mkstemp's would be 0o600


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    write_text_atomically(tmp_path / "options.json", "{}")
    assert synced == [False, True]  # the file's contents, then the folder's entry for its new name


def test_a_folder_is_flushed_before_it_takes_its_name_and_the_name_is_synced(tmp_path, monkeypatch):
    from pysoftlabel.atomic import writing_folder
    events = []
    monkeypatch.setattr(os, "sync", lambda: events.append(("sync", (tmp_path / "set").exists())))
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_ino)))
    with writing_folder(tmp_path / "set") as partial:
        (partial / "a.txt").write_text("a")
    # the files reach the disk while the folder is still partial, then the parent records its new name
    assert events == [("sync", False), ("fsync", tmp_path.stat().st_ino)]


def test_a_damaged_or_foreign_file_is_a_value_error_naming_it(tmp_path):
    whole = save_checkpoint({"epoch": 1, "w": torch.randn(1000)}, tmp_path / "whole.pt")
    data = whole.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # a copy that stopped half way
    (tmp_path / "text.pt").write_text("garbage\n")
    for name in ("cut.pt", "text.pt"):
        with pytest.raises(ValueError, match=f"{name} is not a whole checkpoint"):
            load_checkpoint(tmp_path / name)
    save_checkpoint([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a training state"):
        load_checkpoint(tmp_path / "list.pt")
    assert load_checkpoint(whole)["epoch"] == 1


def test_writer_saves_the_state_as_it_was_when_handed_over(tmp_path):
    weight, counts = torch.ones(1000), np.zeros(3)
    nested = {"model": {"w": weight}, "optimizer": {"state": [weight * 2]}, "epoch": 3, "names": ("a", "b"),
              "history": [1], "counts": counts}
    with CheckpointWriter() as writer:
        writer.save(nested, tmp_path / "ck.pt")
        weight.add_(5)  # the training step after save() changes parameters in place
        nested["history"].append(2)
        counts += 1
    # numpy arrays are copied too, but only a full unpickling reads them back (load_checkpoint does not)
    state = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert state["history"] == [1] and not state["counts"].any()
    assert torch.equal(state["model"]["w"], torch.ones(1000))
    assert torch.equal(state["optimizer"]["state"][0], torch.full((1000,), 2.0))
    assert state["epoch"] == 3 and state["names"] == ("a", "b")


def test_writer_keeps_one_write_in_flight_and_reports_failures(tmp_path, monkeypatch):
    release, order = threading.Event(), []

    def slow_save(state, path):
        release.wait(5)
        order.append(state["epoch"])
        return path

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_save)
    writer = CheckpointWriter()
    writer.save({"epoch": 0}, tmp_path / "ck.pt")
    threading.Timer(0.2, release.set).start()
    writer.save({"epoch": 1}, tmp_path / "ck.pt")  # waits for epoch 0's write first
    assert order == [0]
    writer.wait()
    assert order == [0, 1]

    def failing_save(state, path):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", failing_save)
    with pytest.raises(OSError, match="disk full"):
        with writer:
            writer.save({"epoch": 2}, tmp_path / "ck.pt")
