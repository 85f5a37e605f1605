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

from .atomic import writing_folder

__all__ = ["find_shards", "scan_webdataset", "write_webdataset", "parse_class_text"]


def find_shards(folder):
    """The sorted ``*.tar`` files of ``folder`` (empty if it has none)."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else []


def scan_webdataset(shards):
    """(samples, number of classes) of the shards, from their ``.cls`` members (tar headers are read and the
    images skipped; remembered per list of shards, since a training run builds a loader every epoch).
    Raises ValueError naming the shard for an unreadable tar, a bad class or a sample without an image or
    class."""
    return _scan(tuple(sorted(shards)))


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
    random order (seeded); returns the shard paths. ``out_dir`` must be new or empty (the shards of an
    earlier conversion would otherwise stay beside the new ones, their samples read twice); it appears
    only once every shard is written."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    if len(files) != len(labels):
        raise ValueError(f"files and labels must have the same length, got {len(files)} and {len(labels)}")
    out_dir = Path(out_dir)
    order = np.random.default_rng(seed).permutation(len(files))
    names = [f"shard-{start // per_shard:06d}.tar" for start in range(0, len(order), per_shard)]
    with writing_folder(out_dir) as partial:
        for name, start in zip(names, range(0, len(order), per_shard)):
            with tarfile.open(partial / name, "w") as tar:
                for i in order[start:start + per_shard]:
                    for ext, data in (("jpg", Path(files[i]).read_bytes()), ("cls", str(labels[i]).encode())):
                        info = tarfile.TarInfo(f"{i:09d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return [str(out_dir / name) for name in names]


def parse_class_text(text: torch.Tensor) -> torch.Tensor:
    """Class indices from ASCII digits, [N, L] uint8 padded with zeros (the reader's padded ``.cls``)."""
    value = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
    for column in text.long().unbind(dim=1):
        digit = (column >= 48) & (column <= 57)
        value = torch.where(digit, value * 10 + (column - 48), value)
    return value
