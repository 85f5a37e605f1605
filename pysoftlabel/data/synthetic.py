"""The built-in synthetic dataset: procedurally drawn objects, one kind of shape (and a hue range) per
class, at varied sizes, colours and positions on textured backgrounds, written as JPEGs in ImageNet's folder layout with
PASCAL-VOC XML boxes as ImageNet ships them. Deterministic by seed; the default data of every tool.

    ROOT/train/<class>/<stem>.JPEG     ROOT/val/<class>/<stem>.JPEG     ROOT/boxes/<stem>.xml
"""
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import writing_folder

__all__ = ["SHAPES", "make_synthetic_dataset", "synthetic_summary"]

RECORD = "synthetic.json"  # written last: {"parameters": ..., "summary": ...}; its presence means complete

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon", "bar", "arrow",
          "ellipse", "pentagon")


def _polygon(kind, cx, cy, r, angle):
    if kind in ("triangle", "square", "pentagon", "hexagon"):
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        offset = math.pi / 4 if kind == "square" else 0.0
        return [(cx + r * math.cos(angle + offset + 2 * math.pi * k / sides),
                 cy + r * math.sin(angle + offset + 2 * math.pi * k / sides)) for k in range(sides)]
    if kind == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(angle + math.pi * k / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(angle + math.pi * k / 5)) for k in range(10)]
    if kind == "arrow":
        pts = [(-1, -0.3), (0.2, -0.3), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.3), (-1, 0.3)]
    elif kind == "diamond":  # a rhombus: a rotated square would be a square
        pts = [(0, -1), (0.55, 0), (0, 1), (-0.55, 0)]
    elif kind == "cross":
        pts = [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
               (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
    else:  # bar
        pts = [(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _background(rng, size):
    """Noise, a colour gradient and stripes of random frequency: texture that no class owns."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 215, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    freq, phase = rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
    stripes = 18 * np.sin(2 * np.pi * freq * (xx * np.cos(phase) + yy * np.sin(phase)))[..., None]
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + stripes + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _colour(rng, label, num_classes):
    """The object's colour: a hue owned by the class, jittered so that neighbouring classes overlap, at a
    random saturation and brightness. Shape and hue together make the class; neither alone is certain."""
    import colorsys
    hue = (label / num_classes + rng.normal(0, 0.6 / num_classes)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _draw(rng, kind, size, colour):
    """One image with one object of `kind`; returns the image and the object's box (xmin, ymin, xmax, ymax)."""
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.45) * size
    cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind in ("disc", "ring", "ellipse"):
        ry = r * (0.55 if kind == "ellipse" else 1.0)
        bbox = (cx - r, cy - ry, cx + r, cy + ry)
        if kind == "ring":
            draw.ellipse(bbox, outline=colour, width=max(2, int(r * 0.3)))
        else:
            draw.ellipse(bbox, fill=colour)
        points = [(bbox[0], bbox[1]), (bbox[2], bbox[3])]
    else:
        points = _polygon(kind, cx, cy, r, angle)
        draw.polygon(points, fill=colour)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    corners = (max(min(xs), 0), max(min(ys), 0), min(max(xs), size - 1), min(max(ys), size - 1))
    box = tuple(int(round(v)) for v in corners)
    return img, box


def _voc_xml(stem, folder, size, name, box):
    xmin, ymin, xmax, ymax = box
    return (f"<annotation><folder>{escape(folder)}</folder><filename>{escape(stem)}</filename>"
            f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
            f"<object><name>{escape(name)}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>\n")


def _write_class(root, split, label, num_classes, per_class, image_size, box_fraction, seed, quality):
    """Writes one class of one split; returns (images, boxes) written."""
    kind = SHAPES[label]
    name = f"c{label:02d}_{kind}"
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    boxes = 0
    for i in range(per_class):
        # One generator per image: any image can be regenerated alone, in any order (and in any process).
        rng = np.random.default_rng([seed, label, i, 0 if split == "train" else 1])
        img, box = _draw(rng, kind, image_size, _colour(rng, label, num_classes))
        stem = f"{name}_{split}_{i:05d}"
        img.save(folder / f"{stem}.JPEG", quality=quality)
        if rng.uniform() < box_fraction:
            (root / "boxes" / f"{stem}.xml").write_text(_voc_xml(stem, name, image_size, name, box))
            boxes += 1
    return per_class, boxes


def make_synthetic_dataset(root, num_classes: int = 10, train_per_class: int = 100, val_per_class: int = 25,
                           image_size: int = 64, box_fraction: float = 0.9, seed: int = 0, quality: int = 90,
                           workers: int = 1):
    """Writes the synthetic dataset under ``root`` and returns a summary dict (root, classes, train, val, boxes).

    Args:
        root (str or Path): output folder, new or empty. The dataset is written beside it and renamed into
            place when complete, with its parameters in ``root/synthetic.json``. A folder that already holds
            the dataset of these parameters is left as it is (its summary is returned); one that holds
            anything else is a ValueError.
        num_classes (int): at most ``len(SHAPES)``. Default: 10.
        train_per_class, val_per_class (int): images per class. Default: 100, 25.
        image_size (int): side in pixels. Default: 64.
        box_fraction (float): fraction of images that get a VOC box file (the rest test the no-box
            path of Adaptive Label Smoothing). Default: 0.9.
        seed (int): everything is a function of it. Default: 0.
        quality (int): JPEG quality. Default: 90.
        workers (int): processes writing classes in parallel (ImageNet-sized benchmark sets: drawing and
            encoding a 400-pixel JPEG takes about 25 ms). The files do not depend on it. The processes are
            spawned, so a script calling this with workers > 1 needs the ``if __name__ == "__main__":``
            guard. Default: 1.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if not 0 <= box_fraction <= 1:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class), ("workers", workers)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32) (numpy's seeds), got {seed}")
    root = Path(root)
    parameters = dict(num_classes=num_classes, train_per_class=train_per_class, val_per_class=val_per_class,
                      image_size=image_size, box_fraction=box_fraction, seed=seed, quality=quality)
    if _recorded(root, parameters):
        return synthetic_summary(root)
    try:
        with writing_folder(root) as partial:
            summary = _write_dataset(partial, parameters, workers)
            (partial / RECORD).write_text(json.dumps({"parameters": parameters, "summary": summary}, indent=1))
    except OSError:  # another process finished the same dataset first
        if not _recorded(root, parameters):
            raise
    return synthetic_summary(root)


def synthetic_summary(root):
    """The summary dict :func:`make_synthetic_dataset` returned for the complete dataset at ``root``, or None
    where ``root`` holds none (or only part of one)."""
    try:
        summary = json.loads((Path(root) / RECORD).read_text())["summary"]
    except FileNotFoundError:
        return None
    return {"root": str(root), **summary}


def _recorded(root, parameters):
    """True when root holds the complete dataset of these parameters; ValueError when it holds another."""
    record = Path(root) / RECORD
    if not record.exists():
        return False
    recorded = json.loads(record.read_text())["parameters"]
    if recorded != parameters:
        differ = ", ".join(f"{k}={recorded.get(k)} (asked {v})" for k, v in parameters.items() if recorded.get(k) != v)
        raise ValueError(f"{root} holds a synthetic dataset of other parameters: {differ}; choose another folder")
    return True


def _write_dataset(root, parameters, workers):
    (root / "boxes").mkdir()
    num_classes = parameters["num_classes"]
    jobs = [(root, split, label, num_classes, per_class, parameters["image_size"], parameters["box_fraction"],
             parameters["seed"], parameters["quality"])
            for split, per_class in (("train", parameters["train_per_class"]), ("val", parameters["val_per_class"]))
            for label in range(num_classes)]
    if workers == 1:
        written = [_write_class(*job) for job in jobs]
    else:  # spawned, not forked: the caller may hold CUDA or OpenMP threads that a fork would copy half-way
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            written = list(pool.map(_write_class, *zip(*jobs)))
    images = [count for count, _ in written]
    return {"classes": num_classes, "train": sum(images[:num_classes]),
            "val": sum(images[num_classes:]), "boxes": sum(boxes for _, boxes in written)}
