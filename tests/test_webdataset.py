"""Writing webdataset shards (tools/make_webdataset.py): whole or not at all, never mixed with an earlier
conversion, classes named by the training split."""
import io
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data import webdataset
from pysoftlabel.data.webdataset import (class_names, find_shards, index_paths, scan_webdataset,
                                          write_webdataset)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_webdataset  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(root, num_classes=3, train_per_class=4, val_per_class=2, image_size=16)
    return root


def cls_of(shards):
    """{sample key: class} read back from the shards."""
    out = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            out.update({m.name.split(".")[0]: int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")})
    return out


def test_shards_hold_every_sample_once_and_a_second_conversion_is_refused(data, tmp_path):
    files = sorted(str(p) for p in (data / "train").rglob("*.JPEG"))
    labels = [i % 3 for i in range(len(files))]
    shards = write_webdataset(files, labels, tmp_path / "train", per_shard=5)
    assert [Path(s).name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert scan_webdataset(shards) == (12, 3)
    assert sorted(cls_of(shards).items()) == [(f"{i:09d}", labels[i]) for i in range(12)]
    # Before, shards of 100 were written over shards of 5: shard-000001 and -000002 stayed, read twice.
    with pytest.raises(ValueError, match="train is not empty"):
        write_webdataset(files, labels, tmp_path / "train", per_shard=100)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(
        Path(s).with_suffix(suffix).name for s in shards for suffix in (".tar", ".idx"))
    with pytest.raises(ValueError, match="per_shard must be at least 1"):
        write_webdataset(files, labels, tmp_path / "other", per_shard=0)


def test_each_shard_has_the_index_dalis_wds2idx_writes(data, tmp_path):
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx (nvidia-dali) makes the reference index")
    files = sorted(str(p) for p in (data / "train").rglob("*.JPEG"))
    shards = write_webdataset(files, [i % 3 for i in range(len(files))], tmp_path / "train", per_shard=5)
    assert index_paths(shards) == [s.replace(".tar", ".idx") for s in shards]
    for shard in shards:
        with wds2idx.IndexCreator(shard, str(tmp_path / "reference.idx"), verbose=False) as creator:
            creator.create_index()
        assert Path(shard).with_suffix(".idx").read_text() == (tmp_path / "reference.idx").read_text()
    Path(shards[1]).with_suffix(".idx").unlink()
    assert index_paths(shards) is None  # DALI infers them all then


def test_an_interrupted_conversion_leaves_nothing(data, tmp_path, monkeypatch):
    files = sorted(str(p) for p in (data / "train").rglob("*.JPEG"))
    opened = []

    def interrupted(*args, **kwargs):
        if opened:
            raise KeyboardInterrupt
        opened.append(args)
        return real(*args, **kwargs)

    real = tarfile.open
    monkeypatch.setattr(tarfile, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_webdataset(files, [0] * len(files), tmp_path / "train", per_shard=5)
    assert opened and list(tmp_path.iterdir()) == []  # no first shard posing as the whole set


def test_class_names_and_the_indexes_spare_reading_the_tars(data, tmp_path):
    make_webdataset.main([str(data), str(tmp_path / "wds"), "--per-shard", "5"])
    classes = sorted(p.name for p in (data / "train").iterdir())
    assert class_names(tmp_path / "wds") == classes
    for split in ("train", "val"):
        shards = find_shards(tmp_path / "wds" / split)
        # from the indexes and classes.txt, as from reading every tar
        assert scan_webdataset(shards) == webdataset._scan(tuple(shards)) == (len(cls_of(shards)), 3)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "train" / classes[0]).rename(other / "train" / "zz_renamed")
    with pytest.raises(SystemExit, match="classes.txt names other classes"):  # shards of two numberings
        make_webdataset.main([str(other), str(tmp_path / "wds"), "--splits", "test"])


def test_classes_come_from_the_training_split_whatever_is_converted(data, tmp_path):
    uneven = tmp_path / "uneven"
    shutil.copytree(data, uneven)
    shutil.rmtree(next((uneven / "val").iterdir()))  # val lacks the first class
    make_webdataset.main([str(uneven), str(tmp_path / "wds"), "--splits", "val"])
    assert not (tmp_path / "wds" / "train").exists()
    assert sorted(set(cls_of((tmp_path / "wds" / "val").glob("*.tar")).values())) == [1, 2]  # not 0, 1


@pytest.mark.parametrize("argv, match", [(["--per-shard", "0"], "--per-shard must be at least 1"),
                                         (["--seed", "-1"], "--seed at least 0")])
def test_bad_arguments_give_one_line(data, tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit):
        make_webdataset.main([str(data), str(tmp_path / "wds"), *argv])
    assert match in capsys.readouterr().err


def write_tar(path, members):
    """A tar at ``path`` of ``members``, {name: bytes, or None for a folder}."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("members, match", [
    ({"a.jpg": b"x", "a.cls": b"1", "b.jpg": b"x"}, r"/shard.tar: sample 'b' needs a .jpg and a .cls member$"),
    ({"a.cls": b"1"}, r"/shard.tar: sample 'a' needs a .jpg and a .cls member$"),
    ({"a.jpg": b"x", "a.cls": b"one"}, r"/shard.tar: a.cls holds b'one', not a class index$"),
    ({}, r"^data: no samples in the shards \("),
    ({"a": None, ".hidden": b"x", "a/.DS_Store": b"x"}, r"^data: no samples in the shards"),  # folders, dot files
    (b"not a tar file" * 100, r"/shard.tar is not a readable tar file \("),
])
def test_bad_shards_name_the_shard(tmp_path, members, match):
    shard = tmp_path / "shard.tar"
    shard.write_bytes(members) if isinstance(members, bytes) else write_tar(shard, members)
    with pytest.raises(ValueError, match=match):
        scan_webdataset([str(shard)])


def test_dot_files_and_folders_in_a_shard_are_not_samples(tmp_path):
    write_tar(tmp_path / "shard.tar", {"a": None, "a/.DS_Store": b"x", "a/x.JPG": b"x", "a/x.cls": b"4"})
    assert scan_webdataset([str(tmp_path / "shard.tar")]) == (1, 5)


@pytest.mark.parametrize("index, match", [
    ("v1.2 1\njpg 0 10 a.jpg\n", r"/shard.tar: sample 'a.jpg' needs a .jpg and a .cls member$"),
    ("v1.2 0\n", r"^data: no samples in the shards"),
])
def test_bad_indexes_name_the_shard(tmp_path, index, match):
    (tmp_path / "train").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    write_tar(tmp_path / "train" / "shard.tar", {})  # not read: the index and classes.txt stand for it
    (tmp_path / "train" / "shard.idx").write_text(index)
    with pytest.raises(ValueError, match=match):
        scan_webdataset([str(tmp_path / "train" / "shard.tar")])
