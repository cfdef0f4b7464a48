"""Turn a plain `Transformer` into a distributed one, in place, from a layout: tensor or expert parallel, activation
checkpointing, per-block compile, then FSDP2 / HSDP (the order torchtitan uses, for the same reasons).

Module and parameter names never change, so checkpoints written under one layout load under any other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from shoal.models.moe import MoE
from shoal.models.transformer import Transformer
from shoal.parallel.mesh import Layout

AC_MODES = ("none", "block", "selective")

# Selective activation checkpointing keeps the outputs of these ops (the expensive ones) and recomputes the rest
# (norms, activations, rotary embeddings), which costs a few percent of speed for most of the memory saving.
_SAVED_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
              torch.ops.aten._scaled_dot_product_flash_attention.default,
              torch.ops.aten._scaled_dot_product_efficient_attention.default,
              torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}
if hasattr(torch.ops.aten, "_grouped_mm"):  # MoE experts
    _SAVED_OPS.add(torch.ops.aten._grouped_mm.default)


def parallelize(model: Transformer, layout: Layout, mesh: DeviceMesh | None, *, activation_checkpoint: str = "none",
                compile_blocks: bool = False, param_dtype: torch.dtype | None = None) -> Transformer:
    """Apply the layout to `model` (already on its device, fully initialised: every rank holds the same weights).

    `param_dtype` (GPUs): FSDP keeps fp32 master weights, gathers them in this dtype for compute, and reduces
    gradients in fp32.
    """
    if layout.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    if layout.ep > 1:
        apply_expert_parallel(model, mesh["ep"])
    if activation_checkpoint != "none":
        apply_activation_checkpointing(model, activation_checkpoint)
    if compile_blocks:
        for block in model.layers:
            block.compile()  # in place: parameter names stay as they are (no `_orig_mod.` prefix)
    if layout.dp > 1:
        apply_fsdp(model, *data_parallel_meshes(mesh, layout), param_dtype)
    return model


def data_parallel_meshes(mesh: DeviceMesh, layout: Layout) -> tuple[DeviceMesh, DeviceMesh | None]:
    """The mesh FSDP shards the model over, and the one for routed experts under expert parallelism.

    Expert-parallel ranks are data-parallel ranks, so the dense weights are sharded over dp_shard x ep; each expert
    lives on one ep rank and is sharded over dp_shard only. A leading dp_replicate dimension makes either HSDP.
    """
    shard_dims = ("dp_shard", "ep") if layout.ep > 1 else ("dp_shard",)
    dense = mesh[shard_dims]._flatten("dp_shard_ep") if layout.ep > 1 else mesh["dp_shard"]
    experts = mesh["dp_shard"] if layout.ep > 1 else None
    if layout.dp_replicate > 1:
        dense = mesh["dp_replicate", dense.mesh_dim_names[0]]
        experts = mesh["dp_replicate", "dp_shard"] if experts is not None else None
    return dense, experts


def apply_expert_parallel(model: Transformer, ep_mesh: DeviceMesh) -> None:
    """Split every MoE layer's routed experts over the ep ranks (Shard(0) on the expert dimension).

    Tokens then travel to their experts' ranks by all-to-all (MoE._exchange). Each rank's experts see the tokens of
    every ep rank, so their gradients are sums over the ep group; scaling them by 1 / ep makes them means, like
    every other gradient once FSDP has averaged over the data-parallel ranks.
    """
    ep = ep_mesh.size()
    for moe in model.moe_layers():
        for name, param in list(moe.experts.named_parameters(recurse=False)):
            moe.experts.register_parameter(name, nn.Parameter(distribute_tensor(param.data, ep_mesh, [Shard(0)])))
        moe.experts.grad_scale = 1.0 / ep
        moe.ep_group, moe.ep_size = ep_mesh.get_group(), ep


def apply_tensor_parallel(model: Transformer, tp_mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallel with sequence parallel norms.

    Between blocks the residual stream is split along the sequence (Shard(1)), so norms run on 1/tp of the tokens;
    attention and the MLP gather the sequence, split heads / hidden channels column-wise, and their output
    projections reduce-scatter back to the sequence split. The lm head returns full logits so the loss is unchanged.
    """
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    if model.config.tie_embeddings:
        # Both plans shard the shared matrix the same way (rows = vocabulary), but each made its own DTensor copy.
        model.output.weight = model.tok_embeddings.weight
    block_plan = {
        "attention_norm": SequenceParallel(),
        # Attention's inputs are (x, cos, sin, cache, mask): only x is distributed.
        # Attention's inputs: x, cos, sin, cache, mask, positions; only x is a sequence-sharded activation.
        "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None, None),
                                        desired_input_layouts=(Replicate(), None, None, None, None, None),
                                        use_local_output=True),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
        "ffn_norm": SequenceParallel(),
        "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                           use_local_output=True),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        "feed_forward.w3": ColwiseParallel(),
    }
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan)


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: Transformer, mode: str) -> None:
    """"block": keep only each block's input and recompute the block in backward; "selective": keep matmul and
    attention outputs, recompute the cheap elementwise ops."""
    if mode not in AC_MODES:
        raise ValueError(f"activation checkpointing must be one of {AC_MODES}, got {mode!r}")
    context_fn = functools.partial(create_selective_checkpoint_contexts, _save_matmuls) if mode == "selective" else None
    for block in model.layers:
        block.forward = _checkpointed(block.forward, context_fn)  # per instance: names and state dicts unchanged


def _checkpointed(forward: Callable, context_fn: Callable | None) -> Callable:
    kwargs = {"context_fn": context_fn} if context_fn is not None else {}

    @functools.wraps(forward)
    def checkpointed_forward(*args, **kw):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs, **kw)
    return checkpointed_forward


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, expert_mesh: DeviceMesh | None,
               param_dtype: torch.dtype | None) -> None:
    """FSDP2 per block, then the root (embeddings, final norm, lm head). A 2-D mesh (replicate x shard) is HSDP;
    a shard dimension of size 1 is plain data parallel (DDP): whole parameters, gradients all-reduced.
    Expert-parallel experts get their own FSDP unit on `expert_mesh`."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        if expert_mesh is not None and isinstance(block.feed_forward, MoE):
            fully_shard(block.feed_forward.experts, mesh=expert_mesh, mp_policy=mp, reshard_after_forward=i < last)
        # The last block's weights are needed again at once by the backward pass: keep them gathered.
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < last)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)


def is_distributed(model: nn.Module) -> bool:
    return any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
