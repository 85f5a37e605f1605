"""Folders written whole or not at all: a dataset is written beside its folder and renamed into place when
complete, so that an interrupted write (Ctrl-C, a full disk) never leaves part of a dataset that a later run
would take for the whole one, and a second write never mixes its files with an earlier one's."""
import contextlib
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["writing_folder"]


@contextlib.contextmanager
def writing_folder(root):
    """Yields a new folder beside ``root`` to write into; when the block ends without an exception it is
    renamed to ``root``, otherwise removed. ``root`` must be new or empty (ValueError naming it otherwise).
    The rename raises OSError when another process has filled ``root`` in the meantime."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} is not empty: choose a new or empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        yield partial
        if root.exists():
            root.rmdir()  # empty: a rename cannot replace a folder that has entries
        os.replace(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
