"""Files and folders written whole or not at all: a file is written to a temporary file beside it, fsynced
and renamed over it (checkpoints, a run's metrics and options, class names); a folder is written beside its
place and renamed into it when complete (datasets); the folder holding the new name is fsynced after each
rename. An interrupted write (Ctrl-C, a kill, a full disk, a power loss) leaves the old contents or none, never
a part that a later run would take for the whole, and a second write never mixes its files with an earlier
one's."""
import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

__all__ = ["write_atomically", "write_text_atomically", "writing_folder"]


def write_atomically(path, write) -> Path:
    """Calls ``write(file)`` on a temporary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs
    the folder, so that a reader, even after a power loss, sees the old file or the new one, never a torn one.
    The file is readable by all (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's file is the owner's alone; a run's files are for its readers too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder) -> None:
    """Fsyncs ``folder`` itself, so that the entries renamed or appended into it survive a power loss too:
    a file's fsync makes its contents durable, not the folder's record of its name."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path, text: str) -> Path:
    """Writes ``text`` to ``path`` as :func:`write_atomically` does."""
    return write_atomically(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def writing_folder(root):
    """Yields a new folder beside ``root`` to write into; when the block ends without an exception its files
    are flushed to the disk and it is renamed to ``root``, otherwise removed. ``root`` must be new or empty
    (ValueError naming it otherwise). The rename raises OSError when another process has filled ``root`` in the
    meantime."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} is not empty: choose a new or empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        yield partial
        # One sync for all of the folder's files (a dataset has thousands: an fsync each would take minutes),
        # so that a power loss after the rename cannot leave the name on files that never reached the disk.
        os.sync()
        if root.exists():
            root.rmdir()  # empty: a rename cannot replace a folder that has entries
        os.replace(partial, root)
        _sync_folder(root.parent)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
