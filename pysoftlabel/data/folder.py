"""Scanning an ImageNet-layout folder (ROOT/<split>/<class>/<image>) into a file list, with clear errors,
the cheap check that keeps unreadable files out of the DALI pipeline, and the check that a training set
fills a batch."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "scan_image_folder", "class_images", "unreadable_image", "unreadable_region",
           "drop_unreadable", "skipped_line", "check_fills_a_batch", "missing_split"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # any case; ImageNet has PNG and CMYK files named .JPEG


def missing_split(root, split: str) -> str:
    """Why ``root`` has no ``split`` folder, for a one-line error, with the folder meant where it can be seen:
    ``root`` does not exist, is a file (an archive still to unpack), is a split folder itself (its parent is
    the root), or holds the root one level down (the folder an archive unpacked into)."""
    root = Path(root)
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        archive = root.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".zip"))
        return f"{root} is a file, not a folder" + (f"; unpack it and give the folder that holds {split}/"
                                                    if archive else "")
    if (root.parent / split).is_dir() and (root.parent / "train").is_dir() and root.parent != root:
        return f"{root} is one split of the data; give the folder above it, {root.parent}, which holds {split}/"
    below = sorted(str(d.parent) for d in root.glob(f"*/{split}") if d.is_dir())
    if below:
        return f"{root} has no {split}/ folder; {' and '.join(below[:2])} {'has' if len(below) == 1 else 'have'} one"
    return f"{root} has no {split}/ folder (ImageNet layout ROOT/{split}/<class>/<image>, or shards ROOT/{split}/*.tar)"


def scan_image_folder(root, split: str, classes=None, per_class=None):
    """Returns (files, labels, classes) for ``root/split``: classes are the sorted sub-folders, hidden ones
    left out (or the given list, so that val uses train's), labels their indices. A class's images are those
    in its folder and below it, in torchvision ``ImageFolder``'s order (:func:`class_images`). ``per_class``
    keeps the first N of each class: a stated, reproducible training subset. Raises ValueError naming what is
    wrong."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise ValueError(f"data: {folder} does not exist; expected ImageNet layout ROOT/{{train,val}}/<class>/<image>")
    # Hidden folders (.ipynb_checkpoints, .git, ...) are not classes.
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        loose = [p.name for p in folder.iterdir()][:3]
        hint = ("; ImageNet's validation images come in one folder: move each into the folder of its class "
                "first (as PyTorch's ImageNet example's valprep.sh does)"
                if any(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in loose) else "")
        raise ValueError(f"data: {folder} has no class folders (found {loose}); expected {folder}/<class>/<image>"
                         + hint)
    classes = list(found if classes is None else classes)
    unknown = sorted(set(found) - set(classes))
    if unknown and len(unknown) == len(found):
        raise ValueError(f"data: none of the folders of {folder} ({', '.join(unknown[:3])}"
                         f"{', ...' if len(unknown) > 3 else ''}) is a training class: its images must be in "
                         "folders named as train's classes (ImageNet's and Tiny ImageNet's validation images come "
                         "in one folder, with a list of their classes: sort them into class folders first)")
    if unknown:
        raise ValueError(f"data: {folder} has classes not in the training set: {unknown[:5]}")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        images = class_images(class_dir) if class_dir.is_dir() else []
        if split == "train" and not images:
            raise ValueError(f"data: class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)}) in it or "
                             "below it")
        images = images if per_class is None else images[:per_class]
        files += images
        labels += [label] * len(images)
    if not files:
        raise ValueError(f"data: no images under {folder}")
    return files, labels, classes


def class_images(class_dir) -> list:
    """The image files in ``class_dir`` and its sub-folders (Tiny ImageNet's ``<class>/images/``, say),
    symbolic links followed (each folder once): the JPEG and PNG files torchvision's ``ImageFolder`` finds, in
    its order (folders by path, then files by name), except hidden files and folders (``.ipynb_checkpoints``,
    macOS's ``._`` copies), which are left out."""
    def walk():
        seen = set()  # folders by identity: a link back up the tree is followed once, not forever
        for folder, subfolders, names in os.walk(class_dir, followlinks=True):
            stat = os.stat(folder)
            identity = (stat.st_dev, stat.st_ino)
            if identity in seen:
                subfolders[:] = []
                continue
            seen.add(identity)
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # not descended into
            yield folder, names
    return [os.path.join(folder, name) for folder, names in sorted(walk()) for name in sorted(names)
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]


def check_fills_a_batch(count: int, batch_size: int, num_shards: int, where) -> None:
    """ValueError when ``count`` training images over ``num_shards`` processes leave a process less than one
    batch: training drops the last partial batch, so it would train on nothing (DALI stops with a message
    about its reader instead; the resident path trained zero steps and went on)."""
    share = count // num_shards
    if share < batch_size:
        per = f" ({share} per process over {num_shards})" if num_shards > 1 else ""
        raise ValueError(f"data: {where} has {count} training images{per}, fewer than one batch of {batch_size}; "
                         "training drops a partial batch and would train on nothing: lower the batch size")


def unreadable_image(path):
    """Why ``path`` cannot be a whole JPEG or PNG image, or None (:func:`unreadable_region` of the whole file).
    Reads 8 bytes at each end, so a million files take seconds. DALI would stop the whole run at such a file."""
    try:
        with open(path, "rb") as f:
            return unreadable_region(f, 0, os.fstat(f.fileno()).st_size)
    except OSError as error:
        return f"cannot be read ({error.strerror})"


CUT_OFF = "is cut off (the file ends inside it)"


def unreadable_region(f, offset: int, size: int):
    """Why the ``size`` bytes at ``offset`` of the open binary file ``f`` (a file, or an image inside a tar
    shard) cannot be a whole JPEG or PNG image, or None: empty, cut off by the end of ``f``, an unknown
    format, or truncated (no JPEG end-of-image marker near the end, which byte stuffing keeps out of the coded
    data; no PNG IEND chunk). Reads the first 8 bytes and the last KiB."""
    if size == 0:
        return "is empty"
    f.seek(offset)
    head = f.read(8)
    start = offset + max(0, size - 1024)
    f.seek(start)
    tail = f.read(offset + size - start)
    if len(tail) < offset + size - start:
        return CUT_OFF
    if head[:3] == b"\xff\xd8\xff":
        return None if b"\xff\xd9" in tail else "is a truncated JPEG (no end-of-image marker)"
    if head == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in tail[-16:] else "is a truncated PNG (no IEND chunk)"
    return "is neither a JPEG nor a PNG file"


def unreadable_images(files, threads: int = 16):
    """[(file, reason), ...]: the files of ``files`` that :func:`unreadable_image` finds unreadable, in order."""
    with ThreadPoolExecutor(threads) as pool:
        reasons = list(pool.map(unreadable_image, files))
    return [(f, r) for f, r in zip(files, reasons) if r is not None]


def drop_unreadable(files, labels, threads: int = 16):
    """(files, labels, [(file, reason), ...]): the listing without unreadable images, and what was dropped."""
    dropped = unreadable_images(files, threads)
    gone = {f for f, _ in dropped}
    keep = [i for i, f in enumerate(files) if f not in gone]
    return [files[i] for i in keep], [labels[i] for i in keep], dropped


def skipped_line(skipped, what: str) -> str:
    """The log line for the files :func:`drop_unreadable` left out of ``what`` ("training images", ...): how
    many, and the first with its reason."""
    return f"skipping {len(skipped)} unreadable {what}, e.g. {skipped[0][0]} {skipped[0][1]}"
