"""The checks the fake (meta) kernels share with the native ones, so that a call that fails eagerly fails
under torch.compile (FakeTensor) and on meta tensors too, with the same ValueError."""
import torch


def check_fake_args(logits, **tensors):
    """``logits`` [N, C] and the other tensor arguments (None where absent) on the device of ``logits``."""
    torch._check_value(logits.dim() == 2, lambda: f"logits must have shape [N, C], got {list(logits.shape)}")
    for name, tensor in tensors.items():
        if tensor is not None:
            torch._check_value(tensor.device == logits.device,
                               lambda: f"{name} is on {tensor.device} but logits is on {logits.device}")
