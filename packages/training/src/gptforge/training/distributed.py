"""``torch.distributed`` setup for ``torchrun`` (NCCL on GPU, gloo on CPU) and small helpers."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from gptforge.modeling.device import auto_device_name


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (``world_size == 1`` when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``).

    Args:
        device: The requested device; ``cuda`` (or ``auto`` on a machine with CUDA) selects
            NCCL and this rank's GPU, anything else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and auto_device_name() == "cuda")
        backend = "nccl" if cuda else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over every rank (identity in a single process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's picklable ``obj`` on rank 0, in rank order (None on the other ranks);
    ``[obj]`` in one process."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(objs: list[Any], info: DistInfo) -> list[Any]:
    """Rank 0's list of picklable objects on every rank (the list itself in one process)."""
    if info.enabled:
        dist.broadcast_object_list(objs, src=0)
    return objs


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group, all ranks together.

    The barrier keeps one rank from tearing down its gloo connections while another is still
    using them: on a loaded machine that race ended a rank with ``std::terminate`` (SIGABRT)
    after its run had finished. Called from a ``finally`` block: while an exception unwinds
    there is no barrier, since the other ranks may already be gone.
    """
    if info.enabled and dist.is_initialized():
        if sys.exc_info()[0] is None:  # not while an error unwinds: the peer may be gone
            dist.barrier()
        dist.destroy_process_group()
