"""Data-parallel training with torch.distributed, as ``torchrun`` launches it (one node or many).

``torchrun --nproc_per_node N -m ovdet train ...`` (and ``--nnodes``/``--rdzv_endpoint`` for
several machines) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables;
:func:`init_distributed` joins the group (NCCL on GPUs, gloo on CPU). Without them everything
runs as one process. Only rank 0 writes files; metrics are summed over ranks before logging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_sum", "barrier", "cleanup_distributed", "init_distributed"]

#: How long a collective waits for a rank before failing the job (a crashed rank never hangs it).
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes files).
        world_size: number of processes.
        local_rank: rank on this machine (its GPU index).
        device: this process's device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a one-process job.

    Each rank uses ``cuda:LOCAL_RANK`` when ``device`` is a CUDA device, else the CPU.

    Args:
        device: the device asked for (``cuda`` or ``cpu``; the index is replaced by the local rank).
        timeout_s: collective timeout (default ``$OVDET_DIST_TIMEOUT`` or 1800 s).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    timeout = timeout_s if timeout_s is not None else float(os.environ.get("OVDET_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (after the run, or when this rank fails: the others then fail fast)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all ranks (a new tensor; ``x`` itself on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
