"""Pruning: unstructured magnitude pruning, and structured pruning of feed-forward channels that shrinks the matrices.

- magnitude: the smallest weights of the blocks' linear layers set to zero, to a target sparsity over all of them
  (global) or in each layer. The matrices keep their shape: this is for studying quality, or for kernels that skip
  zeros; on its own it saves neither bytes nor time.
- channels: a fraction of each block's SwiGLU hidden channels removed, the same number in every layer, so the model
  stays a plain transformer with a smaller d_ff and runs faster everywhere. A channel's importance is its mean
  absolute activation on calibration text times the norm of its output column (what it actually adds to the residual
  stream), not its weights alone.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.models.mlp import FeedForward
from shoal.models.transformer import Transformer

PRUNE_METHODS = ("magnitude", "channels")


def check_pruning(method: str, sparsity: float, scope: str, model: Transformer | None = None) -> None:
    if method not in PRUNE_METHODS:
        raise ShoalError(f"unknown pruning {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    if not 0.0 < sparsity < 1.0:
        raise ShoalError(f"--sparsity must be between 0 and 1 (the share removed), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ShoalError(f"--prune-scope must be global or layer, got {scope!r}")
    if method == "channels" and model is not None and model.moe_layers():
        raise ShoalError("channel pruning covers dense feed-forward layers; this is a mixture-of-experts model")


def block_linears(model: Transformer) -> list[nn.Linear]:
    """The linear layers of the transformer blocks (the output head, tied to the embedding, is left alone)."""
    return [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "output"]


@torch.no_grad()
def magnitude_prune(model: Transformer, sparsity: float, scope: str = "global") -> float:
    """Zero the smallest-magnitude weights; returns the share of block weights now zero."""
    linears = block_linears(model)
    if scope == "global":
        magnitudes = torch.cat([m.weight.abs().flatten().float() for m in linears])
        thresholds = [_threshold(magnitudes, sparsity)] * len(linears)
    else:
        thresholds = [_threshold(m.weight.abs().flatten().float(), sparsity) for m in linears]
    for module, threshold in zip(linears, thresholds):
        module.weight.masked_fill_(module.weight.abs().float() <= threshold, 0.0)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / sum(m.weight.numel() for m in linears)


def _threshold(magnitudes: torch.Tensor, sparsity: float) -> float:
    k = int(sparsity * magnitudes.numel())
    return float(magnitudes.kthvalue(k).values) if k else float("-inf")


@torch.no_grad()
def prune_channels(model: Transformer, fraction: float, calibration: list[torch.Tensor]) -> Transformer:
    """A new model with `fraction` of each feed-forward layer's hidden channels removed (kept: a multiple of 8)."""
    layers = [block.feed_forward for block in model.layers]
    if not all(isinstance(f, FeedForward) for f in layers):
        raise ShoalError("channel pruning covers dense feed-forward layers; this is a mixture-of-experts model")
    d_ff = model.config.d_ff
    keep = min(max(8, int(round(d_ff * (1 - fraction) / 8)) * 8), d_ff)
    if keep >= d_ff:
        raise ShoalError(f"pruning {fraction:.0%} of {d_ff} channels, kept a multiple of 8, removes none; prune more")
    activity = [torch.zeros(d_ff) for _ in layers]

    def recorder(index: int):
        def hook(_: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            activity[index] += inputs[0].detach().abs().float().reshape(-1, d_ff).sum(0).cpu()
        return hook

    handles = [f.w2.register_forward_pre_hook(recorder(i)) for i, f in enumerate(layers)]
    try:
        model.eval()
        for ids in calibration:
            model(ids[None].to(model.tok_embeddings.weight.device))
    finally:
        for handle in handles:
            handle.remove()
    pruned = Transformer(dataclasses.replace(model.config, d_ff=keep)).to(model.tok_embeddings.weight)
    state = model.state_dict()
    for i, f in enumerate(layers):
        importance = activity[i] * f.w2.weight.float().norm(dim=0).cpu()
        kept = importance.topk(keep).indices.sort().values.to(f.w1.weight.device)
        prefix = f"layers.{i}.feed_forward."
        state[prefix + "w1.weight"] = f.w1.weight[kept]
        state[prefix + "w3.weight"] = f.w3.weight[kept]
        state[prefix + "w2.weight"] = f.w2.weight[:, kept]
    pruned.load_state_dict(state)
    return pruned.eval()
