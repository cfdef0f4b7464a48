"""Structured pruning: whole feed-forward channels or attention heads removed, so the matrices shrink and the model
runs faster everywhere (it stays a plain transformer, with a smaller d_ff or fewer heads).

Both remove the same number of units in every layer, so one config still describes the model, and both rank units
by what they add to the residual stream on calibration text, not by their weights alone:
- a SwiGLU channel: its mean absolute activation times the norm of its output column;
- an attention head: the mean norm of its output projected through its slice of wo.
Heads go in the units grouped-query attention allows: every key/value head keeps the same number of query heads, so
pruning either drops whole groups (a smaller KV cache too) or the same number of query heads in each group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.models.mlp import FeedForward
from shoal.models.transformer import Transformer


def _record(model: Transformer, modules: list[nn.Module], measure: Callable[[int, torch.Tensor], None],
            calibration: list[torch.Tensor]) -> None:
    """Run the calibration windows, handing each module's input to measure(layer index, input)."""
    handles = [m.register_forward_pre_hook(lambda _, inputs, i=i: measure(i, inputs[0].detach()))
               for i, m in enumerate(modules)]
    try:
        model.eval()
        with torch.no_grad():
            for ids in calibration:
                model(ids[None].to(model.tok_embeddings.weight.device))
    finally:
        for handle in handles:
            handle.remove()


def _rebuild(model: Transformer, changes: dict[str, int], state: dict[str, torch.Tensor]) -> Transformer:
    pruned = Transformer(dataclasses.replace(model.config, **changes)).to(model.tok_embeddings.weight)
    pruned.load_state_dict(state)
    return pruned.eval()


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

    def measure(i: int, hidden: torch.Tensor) -> None:
        activity[i] += hidden.abs().float().reshape(-1, d_ff).sum(0).cpu()

    _record(model, [f.w2 for f in layers], measure, calibration)
    state = model.state_dict()
    for i, f in enumerate(layers):
        importance = activity[i] * f.w2.weight.float().norm(dim=0).cpu()
        kept = importance.topk(keep).indices.sort().values.to(f.w1.weight.device)
        prefix = f"layers.{i}.feed_forward."
        state[prefix + "w1.weight"] = f.w1.weight[kept]
        state[prefix + "w3.weight"] = f.w3.weight[kept]
        state[prefix + "w2.weight"] = f.w2.weight[:, kept]
    return _rebuild(model, {"d_ff": keep}, state)


def head_layout(n_heads: int, n_kv_heads: int, fraction: float) -> tuple[int, int]:
    """(key/value heads kept, query heads kept per key/value head): the layout closest to removing `fraction` of the
    query heads that removes at least one; among equally close ones, the one keeping more heads, then more groups."""
    per_group = n_heads // n_kv_heads
    target = n_heads * (1 - fraction)
    if n_heads - target < 0.5:
        raise ShoalError(f"pruning {fraction:.0%} of {n_heads} attention heads removes none; prune more")
    layouts = [(g, r) for g in range(1, n_kv_heads + 1) for r in range(1, per_group + 1) if g * r < n_heads]
    if not layouts:
        raise ShoalError(f"a model with {n_heads} attention head has none to prune")
    return min(layouts, key=lambda gr: (abs(gr[0] * gr[1] - target), -gr[0] * gr[1], -gr[0]))


@torch.no_grad()
def prune_heads(model: Transformer, fraction: float, calibration: list[torch.Tensor]) -> Transformer:
    """A new model with about `fraction` of each layer's query heads removed (see head_layout), head size kept."""
    cfg, hd = model.config, model.head_dim
    per_group = cfg.n_heads // cfg.n_kv_heads
    groups, kept_per_group = head_layout(cfg.n_heads, cfg.n_kv_heads, fraction)
    attentions = [block.attention for block in model.layers]
    contribution = [torch.zeros(cfg.n_heads) for _ in attentions]

    # Each head's share of the attention output is y_h W_h^T (its hd channels through its hd columns of wo), whose
    # squared norm is y_h (W_h^T W_h) y_h^T: hd x hd Gram matrices instead of a tokens x heads x d_model product.
    columns = [a.wo.weight.float().view(-1, cfg.n_heads, hd) for a in attentions]
    grams = [torch.einsum("ohd,ohe->hde", w, w) for w in columns]

    def measure(i: int, heads_out: torch.Tensor) -> None:
        y = heads_out.float().reshape(-1, cfg.n_heads, hd)
        squared = torch.einsum("nhd,hde,nhe->nh", y, grams[i], y)
        contribution[i] += squared.clamp_min(0).sqrt().sum(0).cpu()

    _record(model, [a.wo for a in attentions], measure, calibration)
    state = model.state_dict()
    for i, attention in enumerate(attentions):
        score = contribution[i].view(cfg.n_kv_heads, per_group)
        kept_groups = score.sum(1).topk(groups).indices.sort().values
        query_heads = torch.cat([g * per_group + score[g].topk(kept_per_group).indices.sort().values
                                 for g in kept_groups.tolist()])
        device = attention.wq.weight.device
        queries, groups_rows = _head_rows(query_heads, hd, device), _head_rows(kept_groups, hd, device)
        prefix = f"layers.{i}.attention."
        state[prefix + "wq.weight"] = attention.wq.weight[queries]
        state[prefix + "wk.weight"] = attention.wk.weight[groups_rows]
        state[prefix + "wv.weight"] = attention.wv.weight[groups_rows]
        state[prefix + "wo.weight"] = attention.wo.weight[:, queries]
    return _rebuild(model, {"n_heads": groups * kept_per_group, "n_kv_heads": groups, "head_dim": hd}, state)


def _head_rows(heads: torch.Tensor, head_dim: int, device: torch.device) -> torch.Tensor:
    """The weight rows (or wo columns) of these heads."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten().to(device)
