"""The built-in synthetic dataset: layout, boxes, determinism, bad arguments."""
import hashlib
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from pysoftlabel.data import make_synthetic_dataset, synthetic_summary
from pysoftlabel.data import synthetic


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_boxes_and_determinism(tmp_path):
    summary = make_synthetic_dataset(tmp_path / "a", num_classes=4, train_per_class=6, val_per_class=3,
                                     image_size=48, seed=7)
    root = tmp_path / "a"
    assert summary["train"] == 24 and summary["val"] == 12
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert classes == sorted(p.name for p in (root / "val").iterdir()) and len(classes) == 4
    for path in (root / "train").rglob("*.JPEG"):
        with Image.open(path) as img:
            assert img.size == (48, 48) and img.mode == "RGB"
    xmls = list((root / "boxes").glob("*.xml"))
    assert len(xmls) == summary["boxes"] > 0
    for xml in xmls:
        obj = ET.parse(xml).getroot().find("object")
        box = [int(obj.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert 0 <= box[0] < box[2] <= 47 and 0 <= box[1] < box[3] <= 47
        assert obj.find("name").text == xml.stem.split("_train_")[0].split("_val_")[0]
        assert any((root / s / obj.find("name").text / f"{xml.stem}.JPEG").exists() for s in ("train", "val"))
    parallel = make_synthetic_dataset(tmp_path / "b", num_classes=4, train_per_class=6, val_per_class=3,
                                      image_size=48, seed=7, workers=3)  # the same files from other processes
    make_synthetic_dataset(tmp_path / "c", num_classes=4, train_per_class=6, val_per_class=3, image_size=48, seed=8)
    assert {**parallel, "root": None} == {**summary, "root": None}
    assert digest(root) == digest(tmp_path / "b") != digest(tmp_path / "c")


@pytest.mark.parametrize("kwargs, match", [(dict(num_classes=0), "num_classes"), (dict(num_classes=99), "num_classes"),
                                           (dict(image_size=8), "image_size"), (dict(box_fraction=1.5), "box_fraction"),
                                           (dict(val_per_class=0), "val_per_class"), (dict(workers=0), "workers"),
                                           (dict(seed=-1), r"seed must be in \[0, 2\*\*32\)")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kwargs)


@pytest.mark.parametrize("argv, line", [(["--classes", "0"], "--classes must be in [1, 12], got 0"),
                                        (["--size", "8"], "--size must be at least 16, got 8"),
                                        (["--val-per-class", "0"], "--val-per-class must be at least 1, got 0"),
                                        (["--seed", "-1"], "--seed must be in [0, 2**32) (numpy's seeds), got -1")])
def test_the_tool_names_its_own_options(tmp_path, capsys, argv, line):
    # The library's messages name its parameters (num_classes, image_size); the tool's user typed --classes, --size.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import make_synthetic_dataset as tool
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "out"), *argv])
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {line}")


SMALL = dict(num_classes=2, train_per_class=3, val_per_class=1, image_size=32)


def test_written_once_and_never_mixed_with_other_files(tmp_path):
    root = tmp_path / "data"
    assert synthetic_summary(root) is None
    summary = make_synthetic_dataset(root, **SMALL)
    assert synthetic_summary(root) == summary
    before = digest(root)
    assert make_synthetic_dataset(root, **SMALL) == summary and digest(root) == before  # found, not rewritten
    with pytest.raises(ValueError, match=r"other parameters: num_classes=2 \(asked 3\)"):
        make_synthetic_dataset(root, **{**SMALL, "num_classes": 3})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's folder")
    with pytest.raises(ValueError, match="mine is not empty: choose a new or empty folder"):
        make_synthetic_dataset(tmp_path / "mine", **SMALL)
    assert digest(root) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine"]


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def interrupted(*job):
        if written:
            raise KeyboardInterrupt
        written.append(job)
        return real(*job)

    real = synthetic._write_class
    monkeypatch.setattr(synthetic, "_write_class", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_dataset(tmp_path / "data", **SMALL)
    assert written and list(tmp_path.iterdir()) == []  # neither a half dataset nor its partial folder
    monkeypatch.setattr(synthetic, "_write_class", real)
    assert make_synthetic_dataset(tmp_path / "data", **SMALL)["train"] == 6
