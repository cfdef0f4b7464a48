"""Unstructured pruning: weights set to zero, matrices kept at their shape (structured pruning is in structured.py).

- magnitude: the smallest weights of the blocks' linear layers, to a target sparsity over all of them (global) or in
  each layer. On its own this saves neither bytes nor time: it is for studying quality, or for kernels that skip
  zeros.
- 2:4: in every run of 4 consecutive input weights of a row, the 2 smallest (50%). This is the pattern the sparse
  tensor cores of NVIDIA GPUs since Ampere skip, so `shoal serve` of a 2:4 bundle on such a GPU, in half precision,
  runs its block layers as semi-structured sparse matrices; everywhere else (and for training, evaluation or further
  compression) the matrices stay dense.
"""

from __future__ import annotations

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.models.transformer import Transformer

PRUNE_METHODS = ("magnitude", "2:4", "channels", "heads")


def check_pruning(method: str, sparsity: float, scope: str, model: Transformer | None = None) -> None:
    if method not in PRUNE_METHODS:
        raise ShoalError(f"unknown pruning {method!r}; choose one of {', '.join(PRUNE_METHODS)}")
    if not 0.0 < sparsity < 1.0:
        raise ShoalError(f"--sparsity must be between 0 and 1 (the share removed), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ShoalError(f"--prune-scope must be global or layer, got {scope!r}")
    if method == "2:4" and model is not None and any(m.in_features % 4 for m in block_linears(model)):
        raise ShoalError("2:4 sparsity needs input widths that are multiples of 4")
    if method in ("channels", "2:4") and model is not None and model.moe_layers():
        raise ShoalError(f"{method} pruning covers dense feed-forward layers (experts are not linear layers); this is "
                         "a mixture-of-experts model")


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The linear layers of the transformer blocks that compression touches. Left alone: the output head (tied to
    the embedding) and mixture-of-experts routers, small matrices whose every error misroutes tokens."""
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name != "output" and not name.endswith("router.gate")]


def zero_share(linears: list[nn.Linear]) -> float:
    return sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)


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
    return zero_share(linears)


def _threshold(magnitudes: torch.Tensor, sparsity: float) -> float:
    k = int(sparsity * magnitudes.numel())
    return float(magnitudes.kthvalue(k).values) if k else float("-inf")


@torch.no_grad()
def prune_2_4(model: Transformer) -> float:
    """Zero the 2 smallest-magnitude weights of every 4 consecutive inputs; returns the share now zero."""
    linears = block_linears(model)
    for module in linears:
        groups = module.weight.view(module.out_features, -1, 4)
        smallest = groups.abs().float().topk(2, dim=-1, largest=False).indices
        groups.scatter_(-1, smallest, 0.0)
    return zero_share(linears)


def is_2_4_sparse(weight: torch.Tensor) -> bool:
    """Whether every run of 4 consecutive inputs holds at least 2 zeros."""
    return weight.shape[-1] % 4 == 0 and bool(((weight.view(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def accelerate_2_4(model: Transformer) -> int:
    """Store the 2:4-sparse block layers of a half-precision model on a GPU with sparse tensor cores (compute
    capability 8.0+) as semi-structured sparse matrices; returns how many were converted. A layer whose shape or
    dtype the sparse kernels do not take stays dense, which is only slower."""
    device = model.tok_embeddings.weight.device
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return 0
    from torch.sparse import to_sparse_semi_structured

    converted = 0
    for module in block_linears(model):
        if module.weight.dtype in (torch.float16, torch.bfloat16) and is_2_4_sparse(module.weight):
            try:
                module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
                converted += 1
            except (RuntimeError, ValueError):  # a shape the kernels do not take
                pass
    return converted
