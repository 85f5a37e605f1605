"""Writing webdataset shards (tools/make_webdataset.py): whole or not at all, never mixed with an earlier
conversion, classes named by the training split, unreadable images left out; scanning them: from their index
or their tar headers alike, unreadable images skipped and counted, bad shards named."""
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import write_tar
from pysoftlabel.data import make_synthetic_dataset
from pysoftlabel.data.folder import scan_image_folder
from pysoftlabel.data.webdataset import class_names, find_shards, sample_keys, scan_webdataset, write_webdataset

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
    scan = scan_webdataset(shards)
    assert (scan.samples, scan.num_classes, scan.skipped) == (12, 3, ())
    assert scan.indexes == tuple(s.replace(".tar", ".idx") for s in shards)  # their own, read by DALI
    assert sorted(cls_of(shards).items()) == [(Path(f).stem, label) for f, label in zip(files, labels)]
    # Before, shards of 100 were written over shards of 5: shard-000001 and -000002 stayed, read twice.
    with pytest.raises(ValueError, match="train is not empty"):
        write_webdataset(files, labels, tmp_path / "train", per_shard=100)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(
        Path(s).with_suffix(suffix).name for s in shards for suffix in (".tar", ".idx"))
    with pytest.raises(ValueError, match="per_shard must be at least 1"):
        write_webdataset(files, labels, tmp_path / "other", per_shard=0)


@pytest.mark.parametrize("names, keys", [
    (["/d/a/n01_1.JPEG", "/d/b/n02_7.png"], ["n01_1", "n02_7"]),  # ImageNet's: the stems, which name the boxes
    (["/d/a/0001.png", "/d/b/0001.png"], ["000000000", "000000001"]),  # a stem twice (CIFAR-style folders)
    (["/d/a/x.v2.jpg", "/d/b/y.jpg"], ["000000000", "000000001"]),  # a dot would end the key early
    (["/d/a/my cat.jpg", "/d/b/y.jpg"], ["000000000", "000000001"]),  # DALI's index splits at spaces
])
def test_samples_are_named_by_their_files_stems_where_they_can_be(names, keys):
    assert sample_keys(names) == keys


def test_each_shard_has_the_index_dalis_wds2idx_writes(data, tmp_path):
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx (nvidia-dali) makes the reference index")
    files = sorted(str(p) for p in (data / "train").rglob("*.JPEG"))
    shards = write_webdataset(files, [i % 3 for i in range(len(files))], tmp_path / "train", per_shard=5)
    references = []
    for shard in shards:
        references.append(tmp_path / f"{Path(shard).stem}.reference")
        with wds2idx.IndexCreator(shard, str(references[-1]), verbose=False) as creator:
            creator.create_index()
        assert Path(shard).with_suffix(".idx").read_text() == references[-1].read_text()
    Path(shards[1]).with_suffix(".idx").unlink()  # a shard from elsewhere: the scan writes its index from the tar
    scan = scan_webdataset(shards)
    assert scan.indexes[1] != shards[1].replace(".tar", ".idx")
    assert Path(scan.indexes[1]).read_text() == references[1].read_text()


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


def test_class_names_and_the_listing_from_the_indexes_or_the_tar_headers(data, tmp_path):
    make_webdataset.main([str(data), str(tmp_path / "wds"), "--per-shard", "5"])
    classes = sorted(p.name for p in (data / "train").iterdir())
    assert class_names(tmp_path / "wds") == classes
    for split in ("train", "val"):
        shards = find_shards(tmp_path / "wds" / split)
        indexed = scan_webdataset(shards)
        assert (indexed.samples, indexed.num_classes) == (len(cls_of(shards)), 3)
        bare = tmp_path / "bare" / split  # the same shards without their indexes
        bare.mkdir(parents=True)
        for shard in shards:
            shutil.copy(shard, bare)
        walked = scan_webdataset(find_shards(bare))
        assert (walked.samples, walked.num_classes, walked.skipped) == (indexed.samples, 3, ())
        assert [Path(i).read_text() for i in walked.indexes] == [Path(i).read_text() for i in indexed.indexes]
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


WHOLE_JPEG = b"\xff\xd8\xff\xe0" + bytes(16) + b"\xff\xd9"  # what the scan's check of each end takes for a JPEG


@pytest.mark.parametrize("members, match", [
    ({"a.jpg": b"x", "a.cls": b"1", "b.jpg": b"x"}, r"/shard.tar: sample 'b' needs a .jpg and a .cls member$"),
    ({"a.cls": b"1"}, r"/shard.tar: sample 'a' needs a .jpg and a .cls member$"),
    ({"a.jpg": WHOLE_JPEG, "a.cls": b"one"}, r"/shard.tar: a.cls holds b'one', not a class index$"),
    ({"a.jpg": b"x", "a.cls": b"7"}, r"^data: no samples in the shards \(.*\) that can be read \(1 skipped, e.g. "
     r".*/shard.tar: a.jpg is neither a JPEG nor a PNG file\)$"),
    ({}, r"^data: no samples in the shards \("),
    ({"a": None, ".hidden": b"x", "a/.DS_Store": b"x"}, r"^data: no samples in the shards"),  # folders, dot files
    (b"not a tar file" * 100, r"/shard.tar is not a readable tar file \("),
])
def test_bad_shards_name_the_shard(tmp_path, members, match):
    shard = tmp_path / "shard.tar"
    shard.write_bytes(members) if isinstance(members, bytes) else write_tar(shard, members)
    with pytest.raises(ValueError, match=match):
        scan_webdataset([str(shard)])


def test_dot_files_and_folders_in_a_shard_are_not_samples(data, tmp_path):
    jpeg = next((data / "train").rglob("*.JPEG")).read_bytes()
    write_tar(tmp_path / "shard.tar", {"a": None, "a/.DS_Store": b"x", "a/x.JPG": jpeg, "a/x.cls": b"4",
                                       ".git/y.jpg": jpeg, ".git/y.cls": b"9"})
    scan = scan_webdataset([str(tmp_path / "shard.tar")])
    assert (scan.samples, scan.num_classes) == (1, 5)
    assert Path(scan.indexes[0]).read_text().splitlines()[1].split()[0::4] == ["JPG", "cls"]


@pytest.mark.parametrize("index, match", [
    ("v1.2 1\njpg 0 10 a.jpg\n", r"/shard.tar: sample 'a' needs a .jpg and a .cls member$"),
    ("v1.2 1\njpg 0 10\n", r"/shard.idx: 'jpg 0 10' is not a sample line \(extension offset size name, for each "
                            r"member\): write the index again with DALI's wds2idx$"),
    ("v1.2 0\n", r"^data: no samples in the shards"),
])
def test_bad_indexes_name_the_shard(tmp_path, index, match):
    (tmp_path / "train").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    write_tar(tmp_path / "train" / "shard.tar", {})  # not read: the index and classes.txt stand for it
    (tmp_path / "train" / "shard.idx").write_text(index)
    with pytest.raises(ValueError, match=match):
        scan_webdataset([str(tmp_path / "train" / "shard.tar")])



def shards_with_bad_images(data, out):
    """Shards of ``data``'s 12 training images, 5 a shard, three of them unreadable (empty, truncated, not an
    image), written as shards from elsewhere could hold them; returns (shards, {bad key: reason})."""
    files, labels, _ = scan_image_folder(data, "train")
    (out / "images").mkdir(parents=True)
    copies = [out / "images" / f"{i:02d}.JPEG" for i in range(len(files))]
    for i, (path, copy) in enumerate(zip(files, copies)):
        whole = Path(path).read_bytes()
        copy.write_bytes({1: b"", 2: whole[: len(whole) // 2], 3: b"not an image"}.get(i, whole))
    shards = write_webdataset([str(c) for c in copies], labels, out / "train", per_shard=5)
    return shards, {"01.jpg": "is empty", "02.jpg": "is a truncated JPEG (no end-of-image marker)",
                    "03.jpg": "is neither a JPEG nor a PNG file"}


@pytest.mark.parametrize("with_indexes", [True, False])
def test_unreadable_images_in_shards_are_skipped_and_counted(data, tmp_path, with_indexes):
    shards, bad = shards_with_bad_images(data, tmp_path)
    if not with_indexes:
        for shard in shards:
            Path(shard).with_suffix(".idx").unlink()
    scan = scan_webdataset(shards)
    assert {name.split(": ")[1]: reason for name, reason in scan.skipped} == bad
    assert all(name.split(": ")[0] in shards for name, _ in scan.skipped)
    assert (scan.samples, scan.num_classes, scan.shards) == (9, 3, tuple(shards))
    listed = [line.split()[3] for index in scan.indexes for line in Path(index).read_text().splitlines()[1:]]
    assert len(listed) == 9 and not set(listed) & set(bad)  # DALI reads the samples the indexes list
    for shard, index in zip(shards, scan.indexes):  # a shard's own index where it has one and all is readable
        clean = with_indexes and not any(name.startswith(shard) for name, _ in scan.skipped)
        assert (index == shard.replace(".tar", ".idx")) == clean


def test_a_shard_of_unreadable_images_only_is_left_out_and_a_cut_off_shard_keeps_its_whole_samples(data, tmp_path):
    jpeg = next((data / "train").rglob("*.JPEG")).read_bytes()
    write_tar(tmp_path / "a.tar", {"x.jpg": b"", "x.cls": b"0", "y.png": b"\x89PNG\r\n\x1a\n", "y.cls": b"1"})
    write_tar(tmp_path / "b.tar", {"z.jpg": jpeg, "z.cls": b"2"})
    scan = scan_webdataset([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    assert scan.shards == (str(tmp_path / "b.tar"),) and scan.samples == 1 and scan.num_classes == 3  # 0..2
    assert [reason for _, reason in scan.skipped] == ["is empty", "is a truncated PNG (no IEND chunk)"]
    # A copy cut off inside its last sample (its image, or its class): that sample is skipped, the others kept.
    shards = write_webdataset(*scan_image_folder(data, "train")[:2], tmp_path / "whole", per_shard=5)
    image = Path(shards[-1]).with_suffix(".idx").read_text().splitlines()[-1].split()  # jpg ... cls ...
    assert image[0] == "jpg" and image[4] == "cls"
    for cut, member in ((int(image[1]) + 100, image[3]), (int(image[5]), image[7])):
        copy = shutil.copytree(tmp_path / "whole", tmp_path / f"cut-{cut}")
        last = copy / Path(shards[-1]).name
        last.write_bytes(last.read_bytes()[:cut])
        scan = scan_webdataset(find_shards(copy))
        assert scan.skipped == ((f"{last}: {member}", "is cut off (the file ends inside it)"),)
        assert scan.samples == 11


def test_make_webdataset_leaves_unreadable_images_out_and_says_so(data, tmp_path, capsys):
    copy = shutil.copytree(data, tmp_path / "data")
    broken = sorted((copy / "val").rglob("*.JPEG"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    make_webdataset.main([str(copy), str(tmp_path / "wds"), "--per-shard", "4"])
    out = capsys.readouterr().out
    assert f"skipping 1 unreadable val images, e.g. {broken} is a truncated JPEG (no end-of-image marker)\n" in out
    scan = scan_webdataset(find_shards(tmp_path / "wds" / "val"))
    assert scan.samples == 5 and scan.skipped == ()


def test_rows_by_key_and_a_selection_with_its_own_indexes(data, tmp_path):
    shards = write_webdataset(*scan_image_folder(data, "train")[:2], tmp_path / "train", per_shard=5)
    listing = scan_webdataset(shards)
    keys = list(listing.keys)
    assert listing.rows_of(keys[::-1]).tolist() == list(range(12))[::-1]
    for unknown in (keys[0] + b"x", b"zz"):  # a longer key is not taken for the listed one it starts with
        with pytest.raises(ValueError, match=r"^data: sample b'.*' is not in the listing of the shards$"):
            listing.rows_of([unknown])
    chosen = listing.select([1, 7, 11])
    assert chosen.samples == 3 and list(chosen.keys) == [keys[1], keys[7], keys[11]]
    assert chosen.labels.tolist() == [listing.labels[i] for i in (1, 7, 11)]
    listed = [line.split()[3] for index in chosen.indexes for line in Path(index).read_text().splitlines()[1:]]
    assert [name.split(".")[0].encode() for name in listed] == list(chosen.keys)
    assert set(chosen.shards) <= set(listing.shards) and not set(chosen.indexes) & set(listing.indexes)
