"""Checkpoints written atomically (pysoftlabel.atomic: a temporary file in the same folder, fsync, then
rename), and a writer that does it on a background thread while training goes on."""
import copy
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..atomic import write_atomically

__all__ = ["save_checkpoint", "check_checkpoint", "load_checkpoint", "require_keys", "run_checkpoint",
           "CheckpointWriter"]


def save_checkpoint(state: dict, path) -> Path:
    """Writes ``state`` to ``path`` so that a reader sees the old file or the new one, never a torn one."""
    return write_atomically(path, lambda f: torch.save(state, f))


def run_checkpoint(path):
    """The checkpoint.pt inside ``path`` (as a string) when ``path`` is the folder of a run that wrote one, else
    ``path`` as given: where the tools take a checkpoint, a run's folder stands for it."""
    inside = Path(path) / "checkpoint.pt"
    return str(inside) if inside.is_file() else path


def check_checkpoint(path) -> Path:
    """Raises ValueError unless ``path`` is a whole checkpoint file (torch.save's zip format, which ends in
    the zip directory: a cut-off or foreign file has none). Reads only the end of the file."""
    path = Path(path)
    if path.is_dir():
        inside = Path(run_checkpoint(path))
        raise ValueError(f"checkpoint: {path} is a run's folder: its checkpoint is {inside}" if inside != path else
                         f"checkpoint: {path} is a folder without a checkpoint.pt (a run's folder holds one)")
    if not path.is_file():
        raise ValueError(f"checkpoint: {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint: {path} is not a whole checkpoint (cut off, or not written by "
                         "torch.save); move it away to start over")
    return path


def load_checkpoint(path, map_location="cpu", keys=()) -> dict:
    """The state saved at ``path``; ValueError naming the file unless it is a whole checkpoint holding a dict
    with every one of ``keys``."""
    try:  # tensors and plain values only: a checkpoint from elsewhere cannot run code when it is read
        state = torch.load(check_checkpoint(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "WeightsUnpickler" in line),
                      str(error).splitlines()[0])
        raise ValueError(f"checkpoint: {path} holds more than tensors and plain values ({reason}); this program "
                         "reads checkpoints with torch.load(weights_only=True)") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: {path} holds a {type(state).__name__}, not a training state (a dict)")
    require_keys(state, path, keys)
    return state


def require_keys(state: dict, path, keys) -> None:
    """ValueError naming ``path`` and the missing ones unless the checkpoint ``state`` has every one of ``keys``."""
    missing = sorted(set(keys) - state.keys())
    if missing:
        raise ValueError(f"checkpoint: {path} has no {', '.join(missing)}: not a checkpoint of this program")


def _cpu_copy(value):
    """A deep copy of ``value`` with every tensor in it on the CPU (a copy even of CPU tensors)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return copy.deepcopy(value)  # numpy arrays and other objects a state_dict may share with its owner


class CheckpointWriter:
    """Writes checkpoints with :func:`save_checkpoint` on a background thread, so that serialising and fsyncing
    (a quarter of a second for a ResNet-18 and its optimiser) overlaps the next epoch's training.

    :meth:`save` takes a CPU copy of every tensor of ``state`` before it returns (the next training step
    changes parameters and buffers in place), after the previous write has finished: at most one write is
    in flight. :meth:`wait` returns once everything handed over is on disk and raises the error of a write
    that failed. Use it as a context manager, so that leaving the block, on an error too, waits."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._pending = None

    def save(self, state: dict, path) -> None:
        snapshot = _cpu_copy(state)
        self.wait()
        self._pending = self._pool.submit(save_checkpoint, snapshot, path)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.wait()
        finally:
            self._pool.shutdown()
