"""Process groups: one process, N spawned processes on this node, or a torchrun launch."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(use_cuda: bool, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by the environment (``RANK``, ``WORLD_SIZE``, ...), if any.

    ``timeout`` bounds each collective (torch's default, 30 min for gloo and NCCL, leaves room for a data build).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank, local_rank, world_size, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


_SPAWNED = "SE3PYG_SPAWNED_WORKER"


def shutdown() -> None:
    """Leave the process group; in workers of :func:`spawn` it is left by the process's exit instead.

    Destroying a gloo group joins its threads while holding the GIL, and a thread still releasing the
    last work item needs the GIL: an occasional deadlock at the very end of a run. Spawned workers skip
    the destructor and end with ``os._exit`` once their work is done.
    """
    if dist.is_initialized() and not os.environ.get(_SPAWNED):
        dist.destroy_process_group()


def _worker(local_rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        **{_SPAWNED: "1"},
    )
    fn(*args)  # an exception propagates to torch.multiprocessing, which reports it and exits non-zero
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nprocs`` processes of one process group on this node."""
    torch.multiprocessing.spawn(_worker, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True)
