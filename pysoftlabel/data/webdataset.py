"""webdataset tar shards (``<key>.jpg`` + ``<key>.cls``, the class index as text) for data that has outgrown
folders: ``ROOT/{train,val}/*.tar``, read by DALI's webdataset reader through the same pipeline as folders.

Shards should be written in a shuffled order (:func:`write_webdataset` does): the reader shuffles within a
buffer, and the loader shuffles the order of the shards each epoch.
"""
import atexit
import functools
import io
import os
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text_atomically, writing_folder
from .folder import CUT_OFF, IMAGE_SUFFIXES, unreadable_region

__all__ = ["find_shards", "scan_webdataset", "ShardListing", "write_webdataset", "class_names", "write_class_names",
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


@dataclass(frozen=True)
class ShardListing:
    """What :func:`scan_webdataset` found: the shards with readable samples and, for each, the DALI index the
    reader takes (the shard's own ``.idx``, or one the scan wrote: for a shard without one, or without its
    unreadable samples); the number of samples to read and of classes (the largest ``.cls`` + 1); and the
    samples left out, ``("SHARD: MEMBER", reason)``."""
    shards: tuple
    indexes: tuple
    samples: int
    num_classes: int
    skipped: tuple


def scan_webdataset(shards) -> ShardListing:
    """Lists the samples of the shards (remembered while the files stay as they are, since a training run
    builds a loader every epoch). Each sample needs an image (``.jpg``, ``.jpeg`` or ``.png``, any case) and
    a ``.cls``; members are found from the shard's DALI index (v1.2) where it has one, else from the tar's
    headers. Each image is checked as files are (:func:`~pysoftlabel.data.folder.unreadable_region`: 8 bytes
    at each end), so that one empty, truncated or foreign image is skipped and counted instead of stopping
    DALI. Raises ValueError naming the shard for an unreadable tar, a bad class or a sample without an image
    or class."""
    shards = sorted(shards)
    # remembered while the shards and their indexes stay as they were (a file rewritten has another stamp)
    return _scan(tuple(shards), tuple((_stamp(s), _stamp(Path(s).with_suffix(".idx"))) for s in shards))


def _stamp(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _scan(shards, stamps):
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(_scan_shard, shards))
    kept, indexes, skipped, samples, top, folder = [], [], [], 0, -1, None
    for shard, (readable, classes, bad, own_index) in zip(shards, found):
        skipped += [(f"{shard}: {name}", reason) for name, reason in bad]
        top = max([top, *classes])
        if not readable:
            continue
        if bad or own_index is None:  # DALI reads the samples an index lists, and only those
            if folder is None:
                folder = tempfile.mkdtemp(prefix="pysoftlabel-shard-index-")
                atexit.register(shutil.rmtree, folder, True)
            own_index = os.path.join(folder, f"{len(kept):06d}-{Path(shard).stem}.idx")
            Path(own_index).write_text(index_text(readable))
        kept.append(shard)
        indexes.append(own_index)
        samples += len(readable)
    if samples == 0:
        raise ValueError(f"data: no samples in the shards {shards[:3]}" +
                         (f" that can be read ({len(skipped)} skipped, e.g. {skipped[0][0]} {skipped[0][1]})"
                          if skipped else ""))
    return ShardListing(tuple(kept), tuple(indexes), samples, top + 1, tuple(skipped))


def _scan_shard(shard):
    """(readable samples as index entries, their classes, [(member, reason)] of the unreadable ones, the
    shard's own index file or None) of one shard."""
    index = Path(shard).with_suffix(".idx")
    listed = _index_samples(shard, index) if index.is_file() else None
    try:
        with open(shard, "rb") as f:
            samples = listed if listed is not None else _tar_samples(shard, f)
            readable, classes, bad = [], [], []
            for key, members in samples:
                by_ext = {ext.lower(): (offset, size, name) for ext, offset, size, name in members}
                image = next((by_ext[s[1:]] for s in IMAGE_SUFFIXES if s[1:] in by_ext), None)
                if "cls" not in by_ext or image is None:
                    raise ValueError(f"data: {shard}: sample {key!r} needs a .jpg and a .cls member")
                reason = unreadable_region(f, *image[:2])
                if reason is not None:
                    bad.append((image[2], reason))
                    continue
                offset, size, name = by_ext["cls"]
                f.seek(offset)
                text = f.read(size)
                if len(text) < size:  # a copy cut off inside its last sample's class
                    bad.append((name, CUT_OFF))
                    continue
                if not text.strip().isdigit():
                    raise ValueError(f"data: {shard}: {name} holds {text.strip()[:20]!r}, not a class index")
                classes.append(int(text))
                readable.append(members)
    except OSError as error:
        raise ValueError(f"data: {shard} cannot be read ({error.strerror})") from None
    return readable, classes, bad, (str(index) if listed is not None else None)


def _sample_key(name: str) -> str:
    """The sample a member belongs to: its path up to the first dot of its file name (webdataset's rule)."""
    folder, slash, base = name.rpartition("/")
    return folder + slash + base.partition(".")[0]


def _index_samples(shard, index):
    """[(key, [(ext, offset, size, name), ...]), ...] from a DALI index of version 1.2 (``wds2idx``'s and
    :func:`write_webdataset`'s), or None for another version (the tar's headers are read instead)."""
    lines = Path(index).read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2"):
        return None
    samples = []
    for line in lines[1:]:
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ValueError(f"data: {index}: {line[:80]!r} is not a sample line (extension offset size name, "
                             "for each member): write the index again with DALI's wds2idx")
        members = [(e, int(o), int(n), name) for e, o, n, name in zip(*[iter(fields)] * 4)]
        samples.append((_sample_key(members[0][3]), members))
    return samples


def _tar_samples(shard, f):
    """[(key, [(ext, offset, size, name), ...]), ...] from the tar's headers (file members; names starting
    with a dot, as macOS's ``._`` copies, are not samples), in the tar's order."""
    samples = {}
    try:
        with tarfile.open(fileobj=f) as tar:
            for member in tar:
                base = Path(member.name).name
                if not member.isfile() or base.startswith(".") or any(
                        part.startswith(".") for part in Path(member.name).parts[:-1]):
                    continue
                ext = base.partition(".")[2]
                samples.setdefault(_sample_key(member.name), []).append((ext, member.offset_data, member.size,
                                                                         member.name))
    except tarfile.TarError as error:
        raise ValueError(f"data: {shard} is not a readable tar file ({error})") from None
    return list(samples.items())


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


def parse_class_text(text: torch.Tensor) -> torch.Tensor:
    """Class indices from ASCII digits, [N, L] uint8 padded with zeros (the reader's padded ``.cls``)."""
    value = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
    for column in text.long().unbind(dim=1):
        digit = (column >= 48) & (column <= 57)
        value = torch.where(digit, value * 10 + (column - 48), value)
    return value
