"""Boxes for Adaptive Label Smoothing: VOC parsing and its errors, the object fraction of a crop against
pixel counting, the context-only window against a brute-force search."""
from pathlib import Path

import numpy as np
import pytest
import torch

from pysoftlabel.data.boxes import context_window, load_boxes, object_fraction, read_voc

GRID = 200  # raster resolution of the direct computations


def raster(box):
    """The pixels of a box (fractions) on a GRID x GRID raster."""
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    centre_x, centre_y = (xs + 0.5) / GRID, (ys + 0.5) / GRID
    return (centre_x > box[0]) & (centre_x < box[2]) & (centre_y > box[1]) & (centre_y < box[3])


def test_object_fraction_is_the_covered_share_of_the_crop():
    g = torch.Generator().manual_seed(0)
    b, k = 12, 4
    corners = (torch.randint(0, GRID + 1, (b, k, 2, 2), generator=g).float() / GRID).sort(dim=2).values
    boxes = corners.permute(0, 1, 3, 2).reshape(b, k, 4)[..., [0, 2, 1, 3]]  # (x0, y0, x1, y1), overlapping at will
    own = torch.rand(b, k, generator=g) < 0.6
    own[0] = False  # no box of its label: -1
    crop_corners = (torch.randint(0, GRID + 1, (b, 2, 2), generator=g).float() / GRID).sort(dim=1).values
    crops = crop_corners.permute(0, 2, 1).reshape(b, 4)[:, [0, 2, 1, 3]]
    crops[:, 2:] = torch.maximum(crops[:, 2:], crops[:, :2] + 5 / GRID).clamp(max=1)
    crops[:, :2] = torch.minimum(crops[:, :2], crops[:, 2:] - 5 / GRID)
    got = object_fraction(boxes, own, crops)
    assert got[0] == -1
    for i in range(1, b):
        union = torch.zeros(GRID, GRID, dtype=torch.bool)
        for j in range(k):
            if own[i, j]:
                union |= raster(boxes[i, j])
        inside = raster(crops[i])
        want = (union & inside).sum() / inside.sum() if own[i].any() else -1
        assert float(got[i]) == pytest.approx(float(want), abs=1e-6), i


def test_context_window_is_free_and_largest():
    g = np.random.default_rng(1)
    for _ in range(5):
        corners = np.sort(g.integers(0, 11, size=(3, 2, 2)) / 10, axis=1)
        boxes = corners.transpose(0, 2, 1).reshape(3, 4)[:, [0, 2, 1, 3]]
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        window = context_window(boxes, min_area=0.0)
        best = 0.0  # brute force over the tenths grid, where every box edge lies
        for x0 in range(10):
            for x1 in range(x0 + 1, 11):
                for y0 in range(10):
                    for y1 in range(y0 + 1, 11):
                        w = np.array([x0, y0, x1, y1]) / 10
                        if all(w[2] <= b[0] or w[0] >= b[2] or w[3] <= b[1] or w[1] >= b[3] for b in boxes):
                            best = max(best, (w[2] - w[0]) * (w[3] - w[1]))
        if best == 0:
            assert window is None
            continue
        x0, y0, x1, y1 = window
        assert (x1 - x0) * (y1 - y0) == pytest.approx(best)
        assert all(x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3] for b in boxes)
    assert context_window(np.array([[0.0, 0.0, 1.0, 0.95]]), min_area=0.1) is None  # only a sliver is free


def voc(path, width, height, objects):
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height></size>{body}</annotation>")
    return path


def test_load_boxes_by_stem_anywhere_and_by_label(tmp_path):
    (tmp_path / "boxes" / "deep" / "er").mkdir(parents=True)
    voc(tmp_path / "boxes" / "deep" / "er" / "img1.xml", 100, 50, [("cat", 10, 5, 60, 25), ("dog", 0, 0, 100, 50)])
    voc(tmp_path / "boxes" / "img2.xml", 10, 10, [("dog", 1, 1, 2, 2)])
    boxes = load_boxes(tmp_path / "boxes", ["a/cat/img1.JPEG", "a/cat/img2.JPEG", "a/dog/img3.JPEG"], [0, 0, 1],
                       ["cat", "dog"])
    torch.testing.assert_close(boxes.boxes[0, 0], torch.tensor([0.1, 0.1, 0.6, 0.5]))
    assert boxes.own.tolist() == [[True, False], [False, False], [False, False]]
    assert boxes.valid.sum(dim=1).tolist() == [2, 1, 0] and boxes.matched == 1


@pytest.mark.parametrize("text, match", [
    ("<annotation><size><width>10</width>", "not a PASCAL-VOC annotation"),
    ("<annotation><object><name>a</name></object></annotation>", "not a PASCAL-VOC annotation"),
    ("<annotation><size><width>0</width><height>10</height></size></annotation>", "a size of 0x10"),
])
def test_bad_xml_names_the_file(tmp_path, text, match):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        read_voc(path)
    assert str(path) in str(error.value)


def test_boxes_outside_the_image_are_clipped_ordered_or_dropped(tmp_path):
    # ImageNet has boxes reaching outside their image (n03127925_147.xml) and boxes with min > max
    path = voc(tmp_path / "n.xml", 100, 50, [("a", 90, 10, 120, 20), ("a", 60, 40, 20, 5), ("a", 150, 0, 160, 10),
                                             ("a", 10, 10, 20, 20), ("a", 5, 5, 5, 9)])
    width, height, objects, repaired = read_voc(path)
    assert objects == [("a", 90, 10, 100, 20), ("a", 20, 5, 60, 40), ("a", 10, 10, 20, 20)] and repaired == 4


def test_unreadable_annotations_are_skipped_and_other_names_are_the_images_own(tmp_path):
    (tmp_path / "boxes").mkdir()
    voc(tmp_path / "boxes" / "img1.xml", 10, 10, [("Scottish_deerhound", 1, 1, 5, 5)])  # ImageNet: a breed's name
    voc(tmp_path / "boxes" / "img2.xml", 10, 10, [("dog", 1, 1, 5, 5), ("cat", 5, 5, 9, 9), ("a", 20, 20, 30, 30)])
    (tmp_path / "boxes" / "img3.xml").write_text("<annotation><size><width>10")
    boxes = load_boxes(tmp_path / "boxes", ["dog/img1.JPEG", "dog/img2.JPEG", "dog/img3.JPEG"], [0, 0, 0],
                       ["dog", "cat"])
    assert boxes.own.tolist() == [[True, False], [True, False], [False, False]]  # the cat box is another class's
    assert [Path(f).name for f, _ in boxes.skipped] == ["img3.xml"] and "not a PASCAL-VOC" in boxes.skipped[0][1]
    assert boxes.repaired == 1 and boxes.repaired_example.name == "img2.xml" and boxes.matched == 2
    with pytest.raises(ValueError, match=r"img3.xml is not a PASCAL-VOC annotation .*none of the 1 annotation"):
        load_boxes(tmp_path / "boxes", ["dog/img3.JPEG"], [0], ["dog"])


def test_missing_boxes_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_boxes(tmp_path / "nope", [], [], [])
