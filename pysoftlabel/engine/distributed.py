"""torchrun / DDP set-up and the few collectives the loops need; every function is a no-op in one process."""
import gc
import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "shutdown_distributed", "is_main_process", "all_reduce_", "barrier"]


def init_distributed(device_type: str):
    """Joins the process group torchrun describes (NCCL on GPUs, gloo on CPUs); returns (rank, world size,
    local rank), (0, 1, 0) when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def shutdown_distributed():
    """Leaves the process group, and frees it while the interpreter is whole: call it before the process exits.

    destroy_process_group() leaves gloo's worker threads running while anything (a DDP model in a reference
    cycle) still holds the group, and one of them frees the last collective's tensors after the collective
    has returned. If that happens during interpreter shutdown, it cannot take the GIL to release their Python
    objects and the process dies of std::terminate (SIGABRT, "terminate called without an active
    exception"): 1 exit in 15 to 20 of two gloo processes here, pytorch/pytorch#179291. Collecting the cycles
    now frees the group, whose destructor joins those threads."""
    if _active():
        dist.destroy_process_group()
        gc.collect()


def _active():
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not _active() or dist.get_rank() == 0


def all_reduce_(tensor, op=dist.ReduceOp.SUM):
    """In-place all-reduce over the default group; returns the tensor."""
    if _active():
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier():
    if _active():
        dist.barrier()
