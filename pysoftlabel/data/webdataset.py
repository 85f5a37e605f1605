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

__all__ = ["find_shards", "scan_webdataset", "ShardListing", "source_key", "write_webdataset", "sample_keys",
           "class_names", "write_class_names", "parse_class_text"]


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
    unreadable samples); the number of samples to read and of classes (the largest ``.cls`` + 1); the
    samples left out, ``("SHARD: MEMBER", reason)``; and the key and class of each sample to read, in the
    indexes' order (bytes and int32 arrays: a few bytes a sample, for the boxes of ALS)."""
    shards: tuple
    indexes: tuple
    samples: int
    num_classes: int
    skipped: tuple
    keys: np.ndarray
    labels: np.ndarray

    def rows_of(self, keys) -> np.ndarray:
        """The row of each of ``keys`` (bytes) in :attr:`keys`; ValueError for a key not listed."""
        order, query = self._key_order, np.asarray(keys, dtype=bytes)  # not cut to the listing's key width
        found = order[np.searchsorted(self.keys, query, sorter=order).clip(max=len(order) - 1)]
        missing = self.keys[found] != query
        if missing.any():
            raise ValueError(f"data: sample {keys[int(missing.argmax())]!r} is not in the listing of the shards")
        return found

    @functools.cached_property
    def _key_order(self):
        return np.argsort(self.keys, kind="stable")

    def select(self, rows) -> "ShardListing":
        """The listing of the samples ``rows`` only (in the listing's order), with indexes that list just them."""
        keep = np.zeros(self.samples, dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = True
        shards, indexes, start = [], [], 0
        for shard, index in zip(self.shards, self.indexes):
            lines = Path(index).read_text().splitlines()[1:]  # a line a sample, in the listing's order
            chosen = [line for line, kept in zip(lines, keep[start:start + len(lines)]) if kept]
            start += len(lines)
            if chosen:
                shards.append(shard)
                indexes.append(_write_index(chosen, shard))
        return ShardListing(tuple(shards), tuple(indexes), int(keep.sum()), self.num_classes, self.skipped,
                            self.keys[keep], self.labels[keep])


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
    kept, indexes, skipped, samples, top, keys, labels = [], [], [], 0, -1, [], []
    for shard, (readable, classes, bad, own_index) in zip(shards, found):
        skipped += [(f"{shard}: {name}", reason) for name, reason in bad]
        top = max([top, *classes])
        if not readable:
            continue
        keys += [_sample_key(members[0][3]).encode() for members in readable]
        labels += classes
        if bad or own_index is None:  # DALI reads the samples an index lists, and only those
            own_index = _write_index(index_lines(readable), shard)
        kept.append(shard)
        indexes.append(own_index)
        samples += len(readable)
    if samples == 0:
        raise ValueError(f"data: no samples in the shards {shards[:3]}" +
                         (f" that can be read ({len(skipped)} skipped, e.g. {skipped[0][0]} {skipped[0][1]})"
                          if skipped else ""))
    return ShardListing(tuple(kept), tuple(indexes), samples, top + 1, tuple(skipped), np.array(keys),
                        np.array(labels, dtype=np.int32))


_INDEX_FOLDER = None  # this process's indexes of shards, made on first use and removed at exit


def _write_index(lines, shard) -> str:
    """Writes an index of ``lines`` (:func:`index_lines`) for ``shard`` into this process's folder of indexes
    (a new file each time); returns its path."""
    global _INDEX_FOLDER
    if _INDEX_FOLDER is None:
        _INDEX_FOLDER = tempfile.mkdtemp(prefix="pysoftlabel-shard-index-")
        atexit.register(shutil.rmtree, _INDEX_FOLDER, True)
    handle, path = tempfile.mkstemp(suffix=f"-{Path(shard).stem}.idx", dir=_INDEX_FOLDER)
    os.close(handle)
    Path(path).write_text(index_text(lines))
    return path


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


def source_key(source) -> bytes:
    """The key of a sample from its DALI ``source_info`` (``SHARD:OFFSET:MEMBER``, bytes or a uint8 array,
    zero-padded or not), as in :attr:`ShardListing.keys`."""
    member = bytes(source).rstrip(b"\0").rsplit(b":", 1)[-1].decode()
    return _sample_key(member).encode()


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
                if not member.isfile() or any(part.startswith(".") for part in Path(member.name).parts):
                    continue
                ext = Path(member.name).name.partition(".")[2]
                samples.setdefault(_sample_key(member.name), []).append((ext, member.offset_data, member.size,
                                                                         member.name))
    except tarfile.TarError as error:
        raise ValueError(f"data: {shard} is not a readable tar file ({error})") from None
    return list(samples.items())


def write_webdataset(files, labels, out_dir, per_shard: int = 1000, seed: int = 0):
    """Writes images ``files`` with class indices ``labels`` as shards ``out_dir/shard-NNNNNN.tar`` in a
    random order (seeded), each with its DALI index ``shard-NNNNNN.idx``, the samples named by
    :func:`sample_keys`; returns the shard paths.
    ``out_dir`` must be new or empty (the shards of an earlier conversion would otherwise stay beside the new
    ones, their samples read twice); it appears only once every shard is written."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    if len(files) != len(labels):
        raise ValueError(f"files and labels must have the same length, got {len(files)} and {len(labels)}")
    out_dir, keys = Path(out_dir), sample_keys(files)
    order = np.random.default_rng(seed).permutation(len(files))
    names = [f"shard-{start // per_shard:06d}" for start in range(0, len(order), per_shard)]
    with writing_folder(out_dir) as partial:
        for name, start in zip(names, range(0, len(order), per_shard)):
            index = []  # per sample: (extension, data offset, size, member name) of each member
            with tarfile.open(partial / f"{name}.tar", "w") as tar:
                for i in order[start:start + per_shard]:
                    index.append([])
                    for ext, data in (("jpg", Path(files[i]).read_bytes()), ("cls", str(labels[i]).encode())):
                        info = tarfile.TarInfo(f"{keys[i]}.{ext}")
                        info.size = len(data)
                        # the data follow the member's header block(s) where tar.offset stands now
                        offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                        tar.addfile(info, io.BytesIO(data))
                        index[-1].append((ext, offset, info.size, info.name))
            (partial / f"{name}.idx").write_text(index_text(index_lines(index)))
    return [str(out_dir / f"{name}.tar") for name in names]


def sample_keys(files) -> list:
    """The key of each file's sample in the shards: the file's stem (ImageNet's ``n01440764_10026``, by which
    its boxes are found), or, where two files share a stem or a stem holds a dot or a space (a webdataset key
    ends at the first dot of the name, and DALI's index is split at spaces), the file's position,
    ``000000123``."""
    stems = [Path(f).stem for f in files]
    if len(set(stems)) == len(stems) and all(stem and "." not in stem and not any(c.isspace() for c in stem)
                                              for stem in stems):
        return stems
    return [f"{i:09d}" for i in range(len(files))]


def index_lines(samples) -> list:
    """The lines of DALI's webdataset index (version 1.2, as its ``wds2idx`` writes) after the first, which
    counts them: a line per sample of ``extension offset size name`` for each of its members. With an index,
    DALI's reader does not walk every tar's headers to find the samples, which it would do at every epoch's
    new pipeline."""
    return [" ".join(f"{e} {o} {n} {name}" for e, o, n, name in members) for members in samples]


def index_text(lines) -> str:
    """The index file of :func:`index_lines`: their count, then them."""
    return "\n".join([f"v1.2 {len(lines)}", *lines]) + "\n"


def parse_class_text(text: torch.Tensor) -> torch.Tensor:
    """Class indices from ASCII digits, [N, L] uint8 padded with zeros (the reader's padded ``.cls``)."""
    value = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
    for column in text.long().unbind(dim=1):
        digit = (column >= 48) & (column <= 57)
        value = torch.where(digit, value * 10 + (column - 48), value)
    return value
