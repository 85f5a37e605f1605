"""The built-in synthetic dataset: layout, boxes, determinism, bad arguments."""
import hashlib
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from pysoftlabel.data import make_synthetic_dataset


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
                                           (dict(val_per_class=0), "val_per_class"), (dict(workers=0), "workers")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kwargs)
