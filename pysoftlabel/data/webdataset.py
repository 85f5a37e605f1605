"""webdataset tar shards (``<key>.jpg`` + ``<key>.cls``, the class index as text) for data that has outgrown
folders: ``ROOT/{train,val}/*.tar``, read by DALI's webdataset reader through the same pipeline as folders.

Shards should be written in a shuffled order (:func:`write_webdataset` does): the reader shuffles within a
buffer, and the loader shuffles the order of the shards each epoch.
"""
import functools
import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text_atomically, writing_folder

__all__ = ["find_shards", "scan_webdataset", "write_webdataset", "index_paths", "class_names", "write_class_names",
           "parse_class_text"]


def find_shards(folder):
    """The sorted ``*.tar`` files of ``folder`` (empty if it has none)."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else []


CLASS_NAMES = "classes.txt"  # ROOT/classes.txt: the class of each index, one name a line (make_webdataset.py)


def class_names(root):
    """The class names of the shards under ``root`` (``ROOT/classes.txt``, line i naming class i), or None."""
    path = Path(root) / CLASS_NAMES
    return path.read_text().splitlines() if path.is_file() else None


def write_class_names(root, classes) -> None:
    """Writes ``ROOT/classes.txt``; ValueError when it holds other names (shards of two numberings)."""
    path, text = Path(root) / CLASS_NAMES, "".join(f"{name}\n" for name in classes)
    if path.is_file() and path.read_text() != text:
        raise ValueError(f"data: {path} names other classes than this conversion's; choose another output")
    write_text_atomically(path, text)  # a cut-off list would renumber the classes


def scan_webdataset(shards):
    """(samples, number of classes) of the shards (remembered per list of shards, since a training run builds
    a loader every epoch). Where every shard has its DALI index and ``ROOT/classes.txt`` names the classes,
    from those (a line per sample, no tar read); otherwise from the ``.cls`` members (tar headers are read and
    the images skipped). Raises ValueError naming the shard for an unreadable tar, a bad class or a sample
    without an image or class."""
    shards = tuple(sorted(shards))
    names = class_names(Path(shards[0]).parent.parent) if shards else None
    indexes = index_paths(shards)
    if names is not None and indexes is not None:
        return _scan_indexes(shards, tuple(indexes)), len(names)
    return _scan(shards)


@functools.lru_cache(maxsize=16)
def _scan_indexes(shards, indexes):
    samples = 0
    for shard, index in zip(shards, indexes):
        lines = Path(index).read_text().splitlines()
        for line in lines[1:]:
            fields = line.split()  # extension, offset, size, name: four per member
            extensions = {e.lower() for e in fields[0::4]}
            if "cls" not in extensions or not extensions & {"jpg", "jpeg", "png"}:
                raise ValueError(f"data: {shard}: sample {fields[3] if len(fields) > 3 else line!r} needs a .jpg "
                                 "and a .cls member")
        samples += len(lines) - 1
    if samples == 0:
        raise ValueError(f"data: no samples in the shards {shards[:3]}")
    return samples


@functools.lru_cache(maxsize=16)
def _scan(shards):
    samples, top = 0, -1
    for shard in shards:
        keys = {}
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile() or Path(member.name).name.startswith("."):
                        continue
                    key, _, ext = member.name.partition(".")
                    entry = keys.setdefault(key, {})
                    if ext == "cls":
                        text = tar.extractfile(member).read().strip()
                        if not text.isdigit():
                            raise ValueError(f"data: {shard}: {member.name} holds {text[:20]!r}, not a class index")
                        entry["cls"] = int(text)
                    elif ext.lower() in ("jpg", "jpeg", "png"):
                        entry["image"] = True
        except tarfile.TarError as error:
            raise ValueError(f"data: {shard} is not a readable tar file ({error})") from None
        for key, entry in keys.items():
            if "cls" not in entry or "image" not in entry:
                raise ValueError(f"data: {shard}: sample {key!r} needs a .jpg and a .cls member")
            top = max(top, entry["cls"])
        samples += len(keys)
    if samples == 0:
        raise ValueError(f"data: no samples in the shards {shards[:3]}")
    return samples, top + 1


def write_webdataset(files, labels, out_dir, per_shard: int = 1000, seed: int = 0):
    """Writes images ``files`` with class indices ``labels`` as shards ``out_dir/shard-NNNNNN.tar`` in a
    random order (seeded), each with its DALI index ``shard-NNNNNN.idx``; returns the shard paths.
    ``out_dir`` must be new or empty (the shards of an earlier conversion would otherwise stay beside the new
    ones, their samples read twice); it appears only once every shard is written."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    if len(files) != len(labels):
        raise ValueError(f"files and labels must have the same length, got {len(files)} and {len(labels)}")
    out_dir = Path(out_dir)
    order = np.random.default_rng(seed).permutation(len(files))
    names = [f"shard-{start // per_shard:06d}" for start in range(0, len(order), per_shard)]
    with writing_folder(out_dir) as partial:
        for name, start in zip(names, range(0, len(order), per_shard)):
            index = []  # per sample: (extension, data offset, size, member name) of each member
            with tarfile.open(partial / f"{name}.tar", "w") as tar:
                for i in order[start:start + per_shard]:
                    index.append([])
                    for ext, data in (("jpg", Path(files[i]).read_bytes()), ("cls", str(labels[i]).encode())):
                        info = tarfile.TarInfo(f"{i:09d}.{ext}")
                        info.size = len(data)
                        # the data follow the member's header block(s) where tar.offset stands now
                        offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                        tar.addfile(info, io.BytesIO(data))
                        index[-1].append((ext, offset, info.size, info.name))
            (partial / f"{name}.idx").write_text(index_text(index))
    return [str(out_dir / f"{name}.tar") for name in names]


def index_text(samples) -> str:
    """DALI's webdataset index (version 1.2, as its ``wds2idx`` writes): the sample count, then a line per sample
    of ``extension offset size name`` for each of its members. With it, DALI's reader does not walk every tar's
    headers to find the samples, which it would do at every epoch's new pipeline."""
    lines = [f"v1.2 {len(samples)}"] + [" ".join(f"{e} {o} {n} {name}" for e, o, n, name in s) for s in samples]
    return "\n".join(lines) + "\n"


def index_paths(shards):
    """The ``.idx`` file beside each shard when every shard has one, else None (DALI then infers them)."""
    paths = [str(Path(shard).with_suffix(".idx")) for shard in shards]
    return paths if all(Path(path).is_file() for path in paths) else None


def parse_class_text(text: torch.Tensor) -> torch.Tensor:
    """Class indices from ASCII digits, [N, L] uint8 padded with zeros (the reader's padded ``.cls``)."""
    value = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
    for column in text.long().unbind(dim=1):
        digit = (column >= 48) & (column <= 57)
        value = torch.where(digit, value * 10 + (column - 48), value)
    return value
