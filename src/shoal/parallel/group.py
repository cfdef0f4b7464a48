"""The process group of a run started by torchrun, and the few collectives the trainer needs.

A run without torchrun's environment is a single process: every helper here is then a no-op, so the same code
trains on a laptop and on many nodes.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from shoal.errors import ShoalError, TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart: int = 0  # how many times torchrun has restarted the group (elastic restarts)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def process_info() -> ProcessInfo:
    """This process's place in the run, from torchrun's environment (RANK, WORLD_SIZE, ...)."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return ProcessInfo()
    return ProcessInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def init_process_group(device: torch.device, timeout_s: float) -> ProcessInfo:
    """Join the group torchrun set up (NCCL on GPUs, gloo on CPUs); returns the process info.

    Each GPU process takes the GPU of its local rank. The timeout bounds every collective, so a rank that dies or
    hangs turns into an error on the others instead of a silent hang.
    """
    info = process_info()
    if not info.distributed or dist.is_initialized():
        return info
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                            device_id=torch.device("cuda", info.local_rank) if device.type == "cuda" else None)
    # Restart counts are kept per node (only the node whose worker failed counts a restart), so agree on the largest.
    restart = torch.tensor([info.restart], device=device)
    dist.all_reduce(restart, op=dist.ReduceOp.MAX)
    return dataclasses.replace(info, restart=int(restart.item()))


def agree(decide: Callable[[], T]) -> T:
    """Rank 0 calls `decide`; every rank gets its result, or raises the same ShoalError it raised.

    For decisions read from shared files (which checkpoint to resume from): one rank reads them, so ranks cannot
    see different states of a network file system, and an error stops every rank instead of leaving the others
    waiting in their next collective.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return decide()
    message: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            message = [("ok", decide())]
        except ShoalError as e:
            message = [("error", type(e), str(e))]
    dist.broadcast_object_list(message, src=0)
    if message[0][0] == "error":
        raise message[0][1](message[0][2])
    return message[0][1]


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def destroy_process_group() -> None:
    """Leave the group. Call it once the distributed model is no longer referenced: the collection first frees that
    model (its modules form reference cycles) while the group is alive, because communication work objects still
    holding tensors at interpreter shutdown can abort the process (SIGABRT) after a successful run."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all ranks (in place); gloo has no AVG, so SUM then divide. A NaN on any rank makes it NaN on all."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


@contextmanager
def collective_errors(timeout_s: float) -> Iterator[None]:
    """Turn a failed or timed-out collective into one line that names this rank and what to look at.

    Without it a hung peer shows up as a long C++ message from the communication library on every rank.
    """
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        if not dist.is_initialized():
            raise
        rank, world = dist.get_rank(), dist.get_world_size()
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "timed out" in str(e).lower() or "timeout" in str(e).lower():
            raise TrainingError(f"rank {rank} of {world}: a collective timed out after {timeout_s:g} s waiting for "
                                f"the other ranks (one of them is stuck or died; raise parallel.timeout_s if "
                                f"they are only slow): {first_line}") from None
        if isinstance(e, dist.DistError) or "gloo" in str(e).lower() or "nccl" in str(e).lower():
            raise TrainingError(f"rank {rank} of {world}: a collective failed (a peer process probably died): "
                                f"{first_line}") from None
        raise
