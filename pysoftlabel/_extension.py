"""Loading the native extension ``pysoftlabel._C`` and reporting what it was built with."""
import torch

try:
    from . import _C  # registers torch.ops.pysoftlabel.*
except ImportError as error:  # a source checkout without a build, or a build for another PyTorch
    _C = None
    _IMPORT_ERROR = error
    _BUILD = {"cpu": False, "cuda": False, "cuda_archs": "", "built_with_torch": None, "cpu_capability": None,
              "openmp": False}
else:
    _IMPORT_ERROR = None
    _BUILD = dict(_C.build_info())


def extension_info():
    """Which backends the native extension was compiled with.

    Returns:
        dict: ``{"cpu": bool, "cuda": bool, "cuda_archs": str, "built_with_torch": str,
        "cpu_capability": str, "openmp": bool, "cuda_available": bool, "error": str or None}``. ``cpu`` and
        ``cuda`` are False when the extension is not built; ``error`` then says why it could not be imported.
        ``cpu_capability`` is the instruction set the CPU kernel runs with ("avx512", "avx2" or "default":
        the best the CPU has, at most the environment's ``ATEN_CPU_CAPABILITY``). ``openmp``: whether the CPU
        kernels were compiled with OpenMP, so that they run on PyTorch's threads (False: on one thread, as
        where the compiler had no OpenMP).
    """
    info = dict(_BUILD)
    info["cuda_available"] = torch.cuda.is_available()
    info["error"] = None if _IMPORT_ERROR is None else str(_IMPORT_ERROR)
    return info


def native_available(device):
    """True when the extension has kernels for tensors on ``device``."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return bool(_BUILD.get(kind, False))


def check_backend(backend):
    if backend not in ("auto", "native", "reference"):
        raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")


def choose_backend(backend, device):
    """Resolve ``backend`` ("auto", "native" or "reference") for tensors on ``device``: True for native."""
    check_backend(backend)
    if backend == "reference":
        return False
    available = native_available(device)
    if backend == "native" and not available:
        reason = f" ({_IMPORT_ERROR})" if _C is None else ""
        raise RuntimeError(f"backend='native': pysoftlabel's extension has no kernels for {device}{reason}; "
                           "build it with `pip install --no-build-isolation .`")
    return available
