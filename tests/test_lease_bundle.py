"""tools/lease_bundle.py: archives split into parts here come back whole there, one call's parts at a time."""
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lease_bundle  # noqa: E402


def archive(path, files, mode):
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def packed(tmp_path):
    """Two archives packed into parts of 40 kB, and where each should be unpacked."""
    site, data = tmp_path / "there" / "site", tmp_path / "there" / "tmp"
    lib = os.urandom(70_000)  # random: the xz archive stays about this size
    members = {archive(tmp_path / "site.tar.xz", {"nvidia/dali/lib.so": lib}, "w:xz"): site,
               archive(tmp_path / "cifar10.tar.gz", {"cifar10/train/cat/0.png": b"png"}, "w:gz"): data}
    here = tmp_path / "here"
    here.mkdir()
    folders = lease_bundle.pack(members, part_bytes=40_000, root=here)
    return folders, site, data, lib


def call(folder, tmp_path, store):
    """One device call: a checkout that carries only ``folder``."""
    checkout = tmp_path / "checkout"
    shutil.rmtree(checkout, ignore_errors=True)
    checkout.mkdir()
    shutil.copytree(folder, checkout / folder.name)
    return lease_bundle.receive(store=store, root=checkout)


def test_parts_are_equal_and_unpack_after_the_last(packed, tmp_path, capsys):
    folders, site, data, lib = packed
    assert [f.name for f in folders] == [".lease0", ".lease1", ".lease2"]
    sizes = [(f / "part").stat().st_size for f in folders]
    assert max(sizes) <= 40_000 and max(sizes) - min(sizes) <= 1
    store = tmp_path / "store"
    assert not call(folders[0], tmp_path, store)
    assert "1 of 3 parts here; next, carry .lease1, .lease2" in capsys.readouterr().out
    assert not call(folders[2], tmp_path, store)  # any order
    assert not site.exists()
    assert call(folders[1], tmp_path, store)
    assert (site / "nvidia" / "dali" / "lib.so").read_bytes() == lib
    assert (data / "cifar10" / "train" / "cat" / "0.png").read_bytes() == b"png"
    assert sorted(p.name for p in store.iterdir()) == ["manifest.json", "unpacked"]  # nothing kept twice
    assert call(folders[1], tmp_path, store)  # the same call again: done already
    assert "already unpacked" in capsys.readouterr().out


def test_a_damaged_part_is_refused(packed, tmp_path):
    folders, site, _, _ = packed
    part = folders[1] / "part"
    part.write_bytes(part.read_bytes()[:-1] + b"?")
    store = tmp_path / "store"
    for folder in folders[:2]:
        call(folder, tmp_path, store)
    with pytest.raises(SystemExit, match="does not match its manifest"):
        call(folders[2], tmp_path, store)
    assert not site.exists()


def test_a_part_of_another_payload_is_refused(packed, tmp_path):
    folders, _, _, _ = packed
    store = tmp_path / "store"
    call(folders[0], tmp_path, store)
    other = tmp_path / "other"
    other.mkdir()
    again = lease_bundle.pack({archive(tmp_path / "x.tar.gz", {"x": b"x"}, "w:gz"): tmp_path / "x"},
                              part_bytes=40_000, root=other)
    with pytest.raises(SystemExit, match="another payload"):
        call(again[0], tmp_path, store)


def test_a_call_with_nothing_to_receive_says_so(tmp_path):
    with pytest.raises(SystemExit, match="carried no .lease<K> folder"):
        lease_bundle.receive(store=tmp_path / "store", root=tmp_path)


def test_command_line_names_a_bad_member(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "lease_bundle.py"), "pack", "nosuch.tar.gz=/tmp"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "nosuch.tar.gz: no such file" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "lease_bundle.py"), "pack", "x.tar.gz"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and "ARCHIVE=DEST" in done.stderr
