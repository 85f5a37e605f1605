"""PASCAL-VOC bounding boxes as ImageNet ships them (``BOXES/**/<image stem>.xml``) and the two box
computations of Adaptive Label Smoothing: the object fraction of a training crop and the context-only
(box-free) window of a validation image.

Several boxes of the label are combined as their union: the object fraction of a crop is the area of
(union of the label's boxes) ∩ crop over the crop's area, computed exactly (coordinate compression), so
overlapping boxes are not counted twice.

ImageNet's annotations have known flaws, handled as TensorFlow's ImageNet preprocessing
(models/research/inception, process_bounding_boxes.py) handles them: boxes that reach outside their image
(n03127925_147.xml) or have min > max, and dog boxes named by the breed's English name
("Scottish_deerhound") instead of the synset id.
"""
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageBoxes", "read_voc", "load_boxes", "object_fraction", "context_window"]


def read_voc(path):
    """(width, height, [(name, xmin, ymin, xmax, ymax), ...], repaired) of a VOC XML file, pixel coordinates
    of the original image. A box reaching outside the image is clipped to it and one with min > max put in
    order; a box with no area inside the image is dropped; ``repaired`` counts those boxes. Raises ValueError
    naming the file if it is not an annotation (malformed XML, no size or bndbox, a size of 0)."""
    try:
        root = ET.parse(path).getroot()
        width, height = (float(root.findtext(f"size/{k}")) for k in ("width", "height"))
        found = [(obj.findtext("name"), *(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
                 for obj in root.iter("object")]
    except (ET.ParseError, TypeError, ValueError) as error:
        raise ValueError(f"boxes: {path} is not a PASCAL-VOC annotation with size and bndbox ({error})") from None
    if not (width > 0 and height > 0):
        raise ValueError(f"boxes: {path} gives the image a size of {width:g}x{height:g}")
    objects, repaired = [], 0
    for name, *box in found:
        x0, x1 = sorted(min(max(v, 0.0), width) for v in (box[0], box[2]))
        y0, y1 = sorted(min(max(v, 0.0), height) for v in (box[1], box[3]))
        kept = x0 < x1 and y0 < y1
        repaired += not kept or [x0, y0, x1, y1] != box
        if kept:
            objects.append((name, x0, y0, x1, y1))
    return width, height, objects, repaired


@dataclass
class ImageBoxes:
    """The boxes of a file listing, padded to K per image: ``boxes`` [N, K, 4] (xmin, ymin, xmax, ymax as
    fractions of the image's width and height), ``own`` [N, K] (a box of the image's label), ``valid``
    [N, K] (any box). What loading met: ``skipped`` [(xml file, reason), ...] of annotation files that could
    not be read (their images count as having no box), ``repaired`` the boxes clipped to their image, put in
    order or dropped, and ``repaired_example`` a file holding one."""

    boxes: Tensor
    own: Tensor
    valid: Tensor
    skipped: list = field(default_factory=list)
    repaired: int = 0
    repaired_example: Optional[Path] = None

    def select(self, rows):
        """The boxes of the listing's files ``rows`` (indices or a bool mask), in that order."""
        rows = torch.as_tensor(rows)
        return ImageBoxes(self.boxes[rows], self.own[rows], self.valid[rows])

    @property
    def matched(self) -> int:
        """Images with at least one box of their label."""
        return int(self.own.any(dim=1).sum())


def load_boxes(boxes_root, files, labels, classes) -> ImageBoxes:
    """Finds ``<stem>.xml`` for each image file anywhere under ``boxes_root``; an image without one has no
    boxes. A box belongs to the image's label when its ``name`` is the class folder name, or is no class's
    name at all (ImageNet names some dog boxes by the breed, not the synset id; its training annotations
    hold boxes of the image's own class only). A file that cannot be read is skipped and listed in
    ``skipped``, unless no file can be read: then ValueError, naming one."""
    root = Path(boxes_root)
    if not root.is_dir():
        raise ValueError(f"boxes: {root} does not exist (expected PASCAL-VOC XML files BOXES/**/<image stem>.xml)")
    index = {p.stem: p for p in root.rglob("*.xml")}
    names = set(classes)
    found, skipped, repaired, example, read = [], [], 0, None, 0
    for path, label in zip(files, labels):
        xml = index.get(Path(path).stem)
        objects = []
        if xml is not None:
            try:
                width, height, objects, fixed = read_voc(xml)
            except ValueError as error:
                skipped.append((xml, str(error)))
            else:
                read += 1
                repaired += fixed
                example = example or (xml if fixed else None)
        found.append([(name == classes[label] or name not in names, x0 / width, y0 / height, x1 / width, y1 / height)
                      for name, x0, y0, x1, y1 in objects])
    if skipped and not read:
        raise ValueError(f"{skipped[0][1]}; none of the {len(skipped)} annotation files of the listing can be read")
    k = max(1, max(map(len, found), default=0))
    boxes, own, valid = torch.zeros(len(files), k, 4), torch.zeros(len(files), k, dtype=torch.bool), \
        torch.zeros(len(files), k, dtype=torch.bool)
    for i, objects in enumerate(found):
        for j, (is_own, *box) in enumerate(objects):
            boxes[i, j] = torch.tensor(box)
            own[i, j], valid[i, j] = is_own, True
    return ImageBoxes(boxes, own, valid, skipped, repaired, example)


def object_fraction(boxes: Tensor, own: Tensor, crops: Tensor) -> Tensor:
    """The fraction of each crop covered by the union of the image's own boxes, -1 for images without one.

    Args:
        boxes (Tensor[B, K, 4]): (xmin, ymin, xmax, ymax), fractions of the image.
        own (Tensor[B, K] bool): which boxes count.
        crops (Tensor[B, 4]): crop windows (xmin, ymin, xmax, ymax) in the same units.
    """
    lo, hi = crops[:, None, :2], crops[:, None, 2:]
    clipped = torch.cat([boxes[..., :2].clamp(lo, hi), boxes[..., 2:].clamp(lo, hi)], dim=-1)
    clipped = torch.where(own[..., None], clipped, lo.repeat(1, 1, 2))  # other boxes: empty, at the corner
    # Coordinate compression: the box edges cut the crop into cells, each inside the union or not.
    xs = torch.cat([clipped[..., 0], clipped[..., 2]], dim=1).sort(dim=1).values  # [B, 2K]
    ys = torch.cat([clipped[..., 1], clipped[..., 3]], dim=1).sort(dim=1).values
    cx, cy = (xs[:, 1:] + xs[:, :-1]) / 2, (ys[:, 1:] + ys[:, :-1]) / 2  # cell centres [B, 2K-1]
    inside_x = (cx[:, :, None] > clipped[:, None, :, 0]) & (cx[:, :, None] < clipped[:, None, :, 2])  # [B, 2K-1, K]
    inside_y = (cy[:, :, None] > clipped[:, None, :, 1]) & (cy[:, :, None] < clipped[:, None, :, 3])
    covered = (inside_y[:, :, None, :] & inside_x[:, None, :, :]).any(dim=-1)  # [B, rows, columns]
    area = (covered * (ys.diff(dim=1)[:, :, None] * xs.diff(dim=1)[:, None, :])).sum(dim=(1, 2))
    crop_area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    return torch.where(own.any(dim=1), area / crop_area, torch.full_like(area, -1.0))


def context_window(boxes: np.ndarray, min_area: float = 0.1):
    """The largest axis-aligned window of the image that overlaps no box, as (xmin, ymin, xmax, ymax)
    fractions, or None when it covers less than ``min_area`` of the image. ``boxes`` is [K, 4]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    xs = np.unique(np.concatenate([[0.0, 1.0], boxes[:, 0], boxes[:, 2]]).clip(0, 1))
    ys = np.unique(np.concatenate([[0.0, 1.0], boxes[:, 1], boxes[:, 3]]).clip(0, 1))
    x0, x1 = np.meshgrid(xs, xs, indexing="ij")
    y0, y1 = np.meshgrid(ys, ys, indexing="ij")
    xw = np.stack([x0.ravel(), x1.ravel()], 1)
    yw = np.stack([y0.ravel(), y1.ravel()], 1)
    xw, yw = xw[xw[:, 0] < xw[:, 1]], yw[yw[:, 0] < yw[:, 1]]
    # every (x interval, y interval) pair; a window is free when no box overlaps it with positive area
    free_x = (xw[:, None, 1] <= boxes[None, :, 0]) | (xw[:, None, 0] >= boxes[None, :, 2])  # [X, K]
    free_y = (yw[:, None, 1] <= boxes[None, :, 1]) | (yw[:, None, 0] >= boxes[None, :, 3])  # [Y, K]
    free = (free_x[:, None, :] | free_y[None, :, :]).all(axis=-1)  # [X, Y]
    area = (xw[:, 1] - xw[:, 0])[:, None] * (yw[:, 1] - yw[:, 0])[None, :]
    area = np.where(free, area, 0.0)
    i, j = np.unravel_index(int(area.argmax()), area.shape)
    if area[i, j] < min_area:
        return None
    return float(xw[i, 0]), float(yw[j, 0]), float(xw[i, 1]), float(yw[j, 1])
