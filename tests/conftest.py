import io
import signal
import tarfile

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run tools/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def devices():
    """CPU always; CUDA as a param marked `cuda` (skipped without a GPU)."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def calibration_tolerance(dtype):
    """The calibration sums accumulate in float64 whatever the logits, but each row's confidence, NLL and
    Brier score is computed in float64 only for float64 logits (else in float32): the tolerance follows the
    rows' precision, so a float64 error is not hidden under a float32 allowance."""
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def sigterm_after(stop_at, times=1):
    """An ``EpochLog.progress`` that sends this process ``times`` SIGTERMs after training step ``stop_at`` =
    (epoch, step), as a scheduler's pre-emption (or an impatient second Ctrl-C) would."""
    def progress(self, epoch):
        def after_step(step, steps):
            if (epoch, step) == stop_at:
                for _ in range(times):
                    signal.raise_signal(signal.SIGTERM)
        return after_step
    return progress


def write_tar(path, members):
    """A tar at ``path`` of ``members``, {name: bytes, or None for a folder}: shards as other tools write them."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
