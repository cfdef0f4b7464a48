"""The parallel layout of a run: how many ways the batch is replicated and sharded and the layers are split, checked
against the world size and the model, and turned into a named `DeviceMesh`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from shoal.config import ModelConfig, ParallelConfig
from shoal.errors import ConfigError

MESH_DIMS = ("dp_replicate", "dp_shard", "ep", "tp")


@dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    ep: int = 1  # expert-parallel ranks are data-parallel ranks too: each takes its own slice of the batch

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.ep * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different slices of each global batch are processed at once."""
        return self.dp_replicate * self.dp_shard * self.ep

    def describe(self) -> str:
        parts = [f"{name}={getattr(self, name)}" for name in MESH_DIMS if getattr(self, name) > 1]
        return " x ".join(parts) or "single process"


def resolve_layout(p: ParallelConfig, world_size: int) -> Layout:
    """The layout for `world_size` processes; dp_shard = -1 takes every process that dp_replicate, ep and tp leave."""
    dp_shard = p.dp_shard
    if dp_shard == -1:
        rest = p.dp_replicate * p.ep * p.tp
        if world_size % rest:
            raise ConfigError(f"parallel.dp_replicate * parallel.ep * parallel.tp = {rest} does not divide the "
                              f"{world_size} processes of this run; launch a multiple of {rest} processes (--nproc)")
        dp_shard = world_size // rest
    layout = Layout(p.dp_replicate, dp_shard, p.tp, p.ep)
    if layout.world_size != world_size:
        raise ConfigError(f"the [parallel] layout dp_replicate={p.dp_replicate} x dp_shard={dp_shard} x ep={p.ep} x "
                          f"tp={p.tp} needs {layout.world_size} processes but this run has {world_size}; launch with "
                          f"--nproc {layout.world_size} or set parallel.dp_shard=-1")
    return layout


def check_layout_fits(layout: Layout, model: ModelConfig, seq_len: int, global_batch: int, micro_batch: int) -> None:
    """Clear errors for a layout that cannot split this model or this batch (model must be resolved)."""
    tp = layout.tp
    for key, value in (("model.n_heads", model.n_heads), ("model.n_kv_heads", model.n_kv_heads),
                       ("model.d_ff", model.d_ff), ("model.vocab_size", model.vocab_size), ("train.seq_len", seq_len)):
        if value % tp:
            raise ConfigError(f"parallel.tp={tp} must divide {key} ({value}): tensor parallel splits it evenly "
                              "over the ranks")
    if global_batch % layout.dp:
        raise ConfigError(f"the global batch of {global_batch} sequences (train.batch_tokens / train.seq_len) does "
                          f"not split over {layout.dp} data-parallel ranks; make it a multiple of {layout.dp}")
    local = global_batch // layout.dp
    if local % min(micro_batch, local):
        raise ConfigError(f"each data-parallel rank gets {local} sequences per step, which train.micro_batch_size="
                          f"{micro_batch} does not divide; pick a micro batch that divides {local}")


def build_mesh(layout: Layout, device: torch.device) -> DeviceMesh | None:
    """A 4-D mesh named (dp_replicate, dp_shard, ep, tp); None for a single process."""
    if layout.world_size == 1:
        return None
    shape = (layout.dp_replicate, layout.dp_shard, layout.ep, layout.tp)
    return init_device_mesh(device.type, shape, mesh_dim_names=MESH_DIMS)


def dp_rank(mesh: DeviceMesh | None) -> int:
    """This rank's index among the data-parallel ranks (ranks that differ only in tp share a batch slice)."""
    if mesh is None:
        return 0
    rank = 0
    for name in ("dp_replicate", "dp_shard", "ep"):
        rank = rank * mesh[name].size() + mesh.get_local_rank(name)
    return rank
