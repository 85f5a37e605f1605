"""Loading the native extension ``pysoftlabel._C`` and reporting what it was built with."""
import torch

try:
    from . import _C  # registers torch.ops.pysoftlabel.*
except ImportError as error:  # a source checkout without a build, or a build for another PyTorch
    _C = None
    _IMPORT_ERROR = error
else:
    _IMPORT_ERROR = None


def extension_info():
    """Which backends the native extension was compiled with.

    Returns:
        dict: ``{"cpu": bool, "cuda": bool, "cuda_archs": str, "built_with_torch": str,
        "cuda_available": bool, "error": str or None}``. ``cpu`` and ``cuda`` are False when the
        extension is not built; ``error`` then says why it could not be imported.
    """
    if _C is None:
        return {"cpu": False, "cuda": False, "cuda_archs": "", "built_with_torch": None,
                "cuda_available": torch.cuda.is_available(), "error": str(_IMPORT_ERROR)}
    info = dict(_C.build_info())
    info["cuda_available"] = torch.cuda.is_available()
    info["error"] = None
    return info


def native_available(device):
    """True when the extension has kernels for tensors on ``device``."""
    if _C is None:
        return False
    device = torch.device(device)
    if device.type == "cpu":
        return True
    return device.type == "cuda" and bool(_C.build_info()["cuda"])


def choose_backend(backend, device):
    """Resolve ``backend`` ("auto", "native" or "reference") for tensors on ``device``: True for native."""
    if backend not in ("auto", "native", "reference"):
        raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")
    if backend == "reference":
        return False
    available = native_available(device)
    if backend == "native" and not available:
        reason = f" ({_IMPORT_ERROR})" if _C is None else ""
        raise RuntimeError(f"backend='native': pysoftlabel's extension has no kernels for {device}{reason}; "
                           "build it with `pip install --no-build-isolation .`")
    return available
