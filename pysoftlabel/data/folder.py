"""Scanning an ImageNet-layout folder (ROOT/<split>/<class>/<image>) into a file list, with clear errors."""
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "scan_image_folder"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # any case; ImageNet has PNG and CMYK files named .JPEG


def scan_image_folder(root, split: str, classes=None, per_class=None):
    """Returns (files, labels, classes) for ``root/split``: classes are the sorted sub-folders (or the given
    list, so that val uses train's), labels their indices. ``per_class`` keeps the first N files (by name)
    of each class: a stated, reproducible training subset. Raises ValueError naming what is wrong."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise ValueError(f"data: {folder} does not exist; expected ImageNet layout ROOT/{{train,val}}/<class>/<image>")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        loose = [p.name for p in folder.iterdir()][:3]
        raise ValueError(f"data: {folder} has no class folders (found {loose}); expected {folder}/<class>/<image>")
    classes = list(found if classes is None else classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"data: {folder} has classes not in the training set: {unknown[:5]}")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if class_dir.is_dir() else []
        if split == "train" and not images:
            raise ValueError(f"data: class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
        images = images if per_class is None else images[:per_class]
        files += [str(p) for p in images]
        labels += [label] * len(images)
    if not files:
        raise ValueError(f"data: no images under {folder}")
    return files, labels, classes
