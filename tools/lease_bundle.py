"""What a GPU lease needs that the machine lacks (NVIDIA DALI, CIFAR-10), carried in as few calls as possible.

A device call carries at most 64 MiB, the checkout included, and the machine keeps /tmp only while it stays
warm, so each extra call is time on the lease and one more gap in which the machine can go back. ``pack``
writes one payload (a tar of the given archives) split into equal parts, ``.lease0/`` ... ``.leaseK/`` in the
checkout, each with a manifest. ``receive``, run on the machine in every call, keeps the parts that call carried
in a folder of /tmp and, once every part is there, checks the payload's SHA-256 and unpacks each archive into
the folder the manifest names for it (once: a later call only says it is done).

    python tools/lease_bundle.py pack dali-site.tar.xz=/tmp/site cifar10.tar.gz=/tmp     # here
    python tools/lease_bundle.py receive                                                 # there, every call
"""
import argparse
import hashlib
import json
import math
import shutil
import sys
import tarfile
from pathlib import Path

PREFIX = ".lease"  # the part folders: .lease0, .lease1, ... (git-ignored)
MANIFEST = "manifest.json"
CHUNK = 1 << 20


def copy_hashing(source, out, digest, limit=None):
    """Copies ``source`` into ``out`` (``limit`` bytes at most), adding what it copies to ``digest``: the
    payload's SHA-256 is taken in the same pass that splits or joins it, not by reading it again."""
    while limit != 0 and (block := source.read(CHUNK if limit is None else min(CHUNK, limit))):
        out.write(block)
        digest.update(block)
        limit = None if limit is None else limit - len(block)


def pack(members, part_bytes, root=Path(".")):
    """Writes ``root/.leaseK/part`` and ``manifest.json`` for the archives ``members`` ({path: destination}),
    in as few equal parts of at most ``part_bytes`` as hold them. Returns the part folders."""
    for old in root.glob(f"{PREFIX}[0-9]*"):
        shutil.rmtree(old)
    staging = root / f"{PREFIX}-payload.tar"
    with tarfile.open(staging, "w") as tar:  # no compression: the members are archives already
        for path in members:
            tar.add(path, arcname=Path(path).name)
    size = staging.stat().st_size
    count = max(1, math.ceil(size / part_bytes))
    part_size = math.ceil(size / count)
    digest, folders = hashlib.sha256(), []
    with open(staging, "rb") as payload:
        for index in range(count):
            folder = root / f"{PREFIX}{index}"
            folder.mkdir()
            with open(folder / "part", "wb") as out:
                copy_hashing(payload, out, digest, part_size)
            folders.append(folder)
    staging.unlink()
    manifest = {"parts": count, "size": size, "sha256": digest.hexdigest(),
                "members": {Path(path).name: str(dest) for path, dest in members.items()}}
    for index, folder in enumerate(folders):
        (folder / MANIFEST).write_text(json.dumps({**manifest, "index": index}, indent=1) + "\n")
    return folders


def receive(store=Path("/tmp/lease"), root=Path(".")):
    """Copies the parts found in ``root`` into ``store``; unpacks the payload once every part is there.
    Returns True when the payload is (now or already) unpacked."""
    store.mkdir(parents=True, exist_ok=True)
    kept, done = store / MANIFEST, store / "unpacked"
    for manifest_path in sorted(root.glob(f"{PREFIX}[0-9]*/{MANIFEST}")):
        manifest = json.loads(manifest_path.read_text())
        if kept.exists() and json.loads(kept.read_text())["sha256"] != manifest["sha256"]:
            sys.exit(f"lease: {manifest_path.parent} belongs to another payload than the parts already in {store} "
                     f"(run tools/prepare_lease.sh once, and carry its parts on one warm machine)")
        kept.write_text(json.dumps({key: value for key, value in manifest.items() if key != "index"}))
        if not done.exists():
            shutil.copyfile(manifest_path.parent / "part", store / f"part{manifest['index']}")
    if not kept.exists():
        sys.exit(f"lease: this call carried no {PREFIX}<K> folder and {store} holds no part")
    manifest = json.loads(kept.read_text())
    if done.exists() and done.read_text() == manifest["sha256"]:
        print(f"lease: already unpacked ({', '.join(f'{m} in {d}' for m, d in manifest['members'].items())})")
        return True
    missing = [index for index in range(manifest["parts"]) if not (store / f"part{index}").exists()]
    if missing:
        print(f"lease: {manifest['parts'] - len(missing)} of {manifest['parts']} parts here; "
              f"next, carry {', '.join(f'.lease{index}' for index in missing)}")
        return False
    payload, digest = store / "payload.tar", hashlib.sha256()
    with open(payload, "wb") as out:
        for index in range(manifest["parts"]):
            with open(store / f"part{index}", "rb") as part:
                copy_hashing(part, out, digest)
            (store / f"part{index}").unlink()  # /tmp holds the payload once, not twice
    if payload.stat().st_size != manifest["size"] or digest.hexdigest() != manifest["sha256"]:
        sys.exit(f"lease: the payload in {payload} does not match its manifest (a part was cut short or mixed up)")
    with tarfile.open(payload) as outer:
        for member in outer.getmembers():
            dest = Path(manifest["members"][member.name])
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|*") as inner:
                inner.extractall(dest, filter="data")
            print(f"lease: unpacked {member.name} into {dest}")
    payload.unlink()
    done.write_text(manifest["sha256"])
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="split archives into the parts that calls carry (here)")
    packing.add_argument("members", nargs="+", metavar="ARCHIVE=DEST",
                         help="an archive (tar, tar.gz, tar.xz) and the folder on the machine to unpack it into")
    packing.add_argument("--part-mib", type=int, default=59,
                         help="largest part, MiB (default 59: a call carries 64 MiB with the checkout)")
    commands.add_parser("receive", help="keep this call's parts; unpack once all are in (on the machine)")
    args = parser.parse_args(argv)
    if args.command == "receive":
        receive()
        return
    members = {}
    for item in args.members:
        path, sep, dest = item.partition("=")
        if not sep or not dest:
            parser.error(f"{item!r}: give each archive as ARCHIVE=DEST, the folder to unpack it into there")
        if not Path(path).is_file():
            parser.error(f"{path}: no such file")
        members[path] = dest
    for folder in pack(members, args.part_mib << 20):
        print(f"{folder}: {(folder / 'part').stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
