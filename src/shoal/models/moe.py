"""Mixture-of-experts feed-forward: a router sends each token to its top-k of N SwiGLU experts.

Dropless by default: every token reaches each of its experts. The (token, expert) assignments are sorted by expert so
that every expert's tokens form one contiguous slice, and the experts run as grouped GEMMs over those slices
(`torch._grouped_mm`: one kernel per weight matrix for all experts, no Python loop, no host synchronisation). With a
capacity factor, each expert instead takes at most `capacity` tokens into a fixed [experts, capacity, d_model] buffer
(GShard): static shapes, and the overflow is dropped (those tokens keep only their residual).

Under expert parallelism (`parallel/apply.py` sets `ep_group`), each rank holds n_experts / ep of the experts; the
sorted tokens travel to the rank of their expert and back with two all-to-alls.

Balancing: the Switch/GShard auxiliary loss and the router z-loss are trained through the layer's output (see
`_AddLossGradient`), and the auxiliary-loss-free bias of DeepSeek-V3 can steer the top-k choice instead. Each layer
counts its routing decisions in the `stats` buffer, which the trainer reads, reduces over ranks and resets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.tensor import DTensor

from shoal.config import ModelConfig, MoEConfig
from shoal.models.mlp import FeedForward

# Layout of MoE.stats after the per-expert counts: dropped assignments, sums of the auxiliary and z losses, passes.
DROPPED, AUX_LOSS, Z_LOSS, PASSES = range(4)


def is_moe_layer(moe: MoEConfig, layer_id: int) -> bool:
    """MoE in layers every-1, 2*every-1, ...: with every = 2 the first layer stays dense, as in Switch and GShard."""
    return moe.n_experts > 0 and (layer_id + 1) % moe.every == 0


@dataclass
class Routing:
    experts: Tensor  # [N, k] chosen expert of each token
    weights: Tensor  # [N, k] fp32 weights of their outputs
    logits: Tensor  # [N, E] fp32 router logits
    scores: Tensor  # [N, E] fp32 softmax or sigmoid scores


class Router(nn.Module):
    def __init__(self, d_model: int, moe: MoEConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, moe.n_experts, bias=False)
        self.top_k, self.score_func = moe.top_k, moe.score_func
        # Auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores for the choice only.
        # Persistent, so it is checkpointed with the weights it steers.
        self.register_buffer("expert_bias", torch.zeros(moe.n_experts))

    def forward(self, x: Tensor) -> Routing:
        # Routing in fp32, outside autocast: near-ties between experts decide which one runs.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())
        scores = logits.softmax(dim=-1) if self.score_func == "softmax" else logits.sigmoid()
        experts = (scores + self.expert_bias).topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
        if self.top_k > 1:
            # Renormalised over the chosen experts. With one expert per token this would make every weight 1 and
            # cut the router off from the loss, so Switch's raw score is kept there.
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(experts, weights, logits, scores)


class GroupedExperts(nn.Module):
    """n_experts SwiGLU MLPs stored as stacks in nn.Linear's [out, in] layout: w1, w3 [E, d_ff, d_model],
    w2 [E, d_model, d_ff]. Under expert parallelism they are DTensors sharded on the expert dimension."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w3 = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        self.grad_scale = 1.0  # expert parallel: 1 / ep, see MoE._exchange

    def weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's experts, in the compute dtype."""
        ws = [w.to_local() if isinstance(w, DTensor) else w for w in (self.w1, self.w2, self.w3)]
        if self.grad_scale != 1.0:
            ws = [_ScaleGradient.apply(w, self.grad_scale) for w in ws]
        return tuple(w.to(dtype) for w in ws)

    def forward(self, x: Tensor, counts: Tensor, align: int = 1) -> Tensor:
        """x [M, d_model], rows sorted by expert with counts[e] rows for local expert e -> [M, d_model]."""
        dtype = _compute_dtype(x)
        w1, w2, w3 = self.weights(dtype)
        x = x.to(dtype)
        if not _grouped_mm_runs(x, w1):
            return _looped_swiglu(x, w1, w2, w3, counts)
        if align > 1:
            x, rows, counts = _pad_groups(x, counts, align)
        offsets = counts.cumsum(0).to(torch.int32)
        h = F.silu(torch._grouped_mm(x, w1.mT, offs=offsets)) * torch._grouped_mm(x, w3.mT, offs=offsets)
        y = torch._grouped_mm(h, w2.mT, offs=offsets)
        return y[rows] if align > 1 else y

    def forward_batched(self, x: Tensor) -> Tensor:
        """x [E, capacity, d_model] (capacity routing: every expert gets the same number of rows) -> same shape."""
        w1, w2, w3 = self.weights(_compute_dtype(x))
        x = x.to(w1.dtype)
        return torch.bmm(F.silu(torch.bmm(x, w1.mT)) * torch.bmm(x, w3.mT), w2.mT)


class MoE(nn.Module):
    """Routed experts (plus an optional shared expert every token goes through), in place of a block's MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        moe = cfg.moe
        self.n_experts, self.top_k = moe.n_experts, moe.top_k
        self.d_ff = moe.d_ff or cfg.d_ff
        self.capacity_factor = moe.capacity_factor
        self.aux_loss_coef, self.z_loss_coef = moe.aux_loss_coef, moe.z_loss_coef
        self.router = Router(cfg.d_model, moe)
        self.experts = GroupedExperts(moe.n_experts, cfg.d_model, self.d_ff)
        self.shared = FeedForward(cfg.d_model, moe.shared_experts * self.d_ff) if moe.shared_experts else None
        # Per-expert assignment counts, then DROPPED, AUX_LOSS, Z_LOSS, PASSES; accumulated while training.
        self.register_buffer("stats", torch.zeros(moe.n_experts + 4), persistent=False)
        self.aux_loss_scale = 1.0  # the trainer's loss scale (1 / micro-steps), applied to the balancing losses
        self.ep_group: dist.ProcessGroup | None = None  # set by expert parallelism
        self.ep_size = 1

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        routing = self.router(x)
        if self.capacity_factor > 0 and self.training:
            # Evaluation and generation route dropless: what a token gets must not depend on its batch.
            y, dropped = self._capacity_forward(x, routing)
        else:
            y, dropped = self._dropless_forward(x, routing), None
        if self.shared is not None:
            y = y + self.shared(x)
        if self.training:
            aux, z = self._balancing_losses(routing)
            if torch.is_grad_enabled():
                y = _AddLossGradient.apply(y, self.aux_loss_coef * aux + self.z_loss_coef * z, self.aux_loss_scale)
            self._record(routing, dropped, aux, z)
        return y.view(shape)

    # --- routing variants ---------------------------------------------------------------------------------------

    def _dropless_forward(self, x: Tensor, routing: Routing) -> Tensor:
        order, counts = sort_by_expert(routing.experts, self.n_experts)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        # Assignment a (token a // k, its choice a % k) goes to row inverse[a] of the expert-sorted rows. Moving rows
        # by a permutation, both ways, keeps every backward pass a gather: no scatter-add, no atomics.
        x_sorted = _PermuteRows.apply(x.repeat_interleave(self.top_k, dim=0), order, inverse)
        align = 16 if x.is_cuda else 1  # CUDA grouped GEMMs want every group's rows 16-byte aligned
        if self.ep_group is None:
            y_sorted = self.experts(x_sorted, counts, align)
        else:
            y_sorted = self._exchange(x_sorted, counts, align)
        y = _PermuteRows.apply(y_sorted, inverse, order).view(-1, self.top_k, x.shape[-1])
        # Each token's k outputs weighted and summed as one tiny matmul per token ([1, k] @ [k, d_model]), outside
        # autocast so that it stays fp32: on the CPU three times faster than broadcasting the weights.
        with torch.autocast(x.device.type, enabled=False):
            return torch.bmm(routing.weights.unsqueeze(1), y.float()).squeeze(1).type_as(x)

    def _capacity_forward(self, x: Tensor, routing: Routing) -> tuple[Tensor, Tensor]:
        """GShard capacity routing: first choices of all tokens before second choices, earlier tokens first."""
        n, k, e = x.shape[0], self.top_k, self.n_experts
        capacity = max(1, math.ceil(self.capacity_factor * n * k / e))
        choice_major = routing.experts.t().flatten()  # assignment a = choice * n + token
        order, counts = sort_by_expert(choice_major, e)
        sorted_experts = choice_major[order]
        position = torch.arange(order.numel(), device=x.device) - (counts.cumsum(0) - counts)[sorted_experts]
        kept = position < capacity
        # Dropped assignments write to (and read from) one spare row past the experts' slots.
        slot = torch.where(kept, sorted_experts * capacity + position, e * capacity)
        tokens = order % n
        buffer = x.new_zeros(e * capacity + 1, x.shape[1]).index_copy(0, slot, x[tokens])
        y = self.experts.forward_batched(buffer[:-1].view(e, capacity, -1)).reshape(e * capacity, -1)
        y = torch.cat([y, y.new_zeros(1, y.shape[1])])[slot].float()
        weights = routing.weights.t().flatten()[order, None]
        out = torch.zeros_like(x, dtype=torch.float32).index_add_(0, tokens, y * weights)
        return out.type_as(x), (~kept).sum()

    def _exchange(self, x_sorted: Tensor, counts: Tensor, align: int) -> Tensor:
        """Expert parallel: send each assignment to the rank that holds its expert, run the local experts, send the
        results back. Experts are split in contiguous ranges: rank r holds experts [r * E/ep, (r + 1) * E/ep)."""
        ep, group = self.ep_size, self.ep_group
        local = self.n_experts // ep
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts, group=group)  # [source rank, local expert] counts
        splits = torch.cat([counts.view(ep, local).sum(1), received.view(ep, local).sum(1)]).tolist()
        send, recv = splits[:ep], splits[ep:]
        x_recv = all_to_all_single_autograd(x_sorted, recv, send, group)
        # Rows arrive grouped by source rank, then expert; the grouped GEMMs want them grouped by expert.
        expert_of_row = torch.arange(local, device=counts.device).repeat(ep).repeat_interleave(received)
        by_expert = expert_of_row.argsort(stable=True)
        y = self.experts(x_recv[by_expert], received.view(ep, local).sum(0), align)
        y_recv = y[by_expert.argsort()]
        return all_to_all_single_autograd(y_recv, send, recv, group)

    # --- balance ------------------------------------------------------------------------------------------------

    def _balancing_losses(self, routing: Routing) -> tuple[Tensor, Tensor]:
        """Switch/GShard load-balancing loss E * sum_e f_e * P_e (f: share of assignments, P: mean router
        probability; 1 when balanced) and the router z-loss mean(logsumexp(logits)^2) (ST-MoE)."""
        e = self.n_experts
        assigned = torch.zeros(e, device=routing.scores.device).index_add_(
            0, routing.experts.flatten(), torch.ones(routing.experts.numel(), device=routing.scores.device))
        share = assigned / routing.experts.numel()
        probs = routing.scores / routing.scores.sum(dim=-1, keepdim=True)  # sigmoid scores do not sum to one
        aux = e * (share * probs.mean(dim=0)).sum()
        z = torch.logsumexp(routing.logits, dim=-1).square().mean()
        return aux, z

    @torch.no_grad()
    def _record(self, routing: Routing, dropped: Tensor | None, aux: Tensor, z: Tensor) -> None:
        e = self.n_experts
        self.stats[:e].index_add_(0, routing.experts.flatten(),
                                  torch.ones(routing.experts.numel(), device=self.stats.device))
        extra = torch.stack([dropped.float() if dropped is not None else aux.new_zeros(()), aux.detach(),
                             z.detach(), aux.new_ones(())])
        self.stats[e:] += extra

    def reset_stats(self) -> None:
        self.stats.zero_()

    def update_bias(self, load: Tensor, speed: float) -> None:
        """Aux-loss-free balancing step: raise the bias of under-loaded experts, lower it for over-loaded ones.
        `load` must be the same on every rank (reduced over ranks), so the replicated biases stay equal."""
        with torch.no_grad():
            self.router.expert_bias += speed * torch.sign(load.mean() - load)


def sort_by_expert(experts: Tensor, n_experts: int) -> tuple[Tensor, Tensor]:
    """Stable order that groups assignments by expert, and the number of assignments per expert.

    Counting with scatter_add (not bincount) keeps the output shape static, which torch.compile needs."""
    flat = experts.flatten()
    counts = torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    return flat.argsort(stable=True), counts


def _compute_dtype(x: Tensor) -> torch.dtype:
    # torch._grouped_mm and bmm on stacked weights are not on autocast's lists, so the cast is explicit.
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _grouped_mm_runs(x: Tensor, w1: Tensor) -> bool:
    """torch._grouped_mm has bf16 kernels on Hopper-class and newer GPUs and a CPU kernel since PyTorch 2.9. Both
    need rows whose strides are multiples of 16 bytes: d_model and the expert width d_ff (w1 is [E, d_ff, d_model])."""
    if not hasattr(torch, "_grouped_mm") or (x.shape[1] * x.element_size()) % 16 or (w1.shape[1] * w1.element_size()) % 16:
        return False
    if x.is_cuda:  # get_device_properties, unlike get_device_capability, is folded to a constant by torch.compile
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_properties(x.device).major >= 9
    # torch.compile traces the CPU kernel with the CUDA kernel's shape rules, which accept bf16 only.
    return (x.device.type == "cpu" and torch.__version__ >= (2, 9)
            and (x.dtype == torch.bfloat16 or not torch.compiler.is_compiling()))


def _looped_swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, counts: Tensor) -> Tensor:
    """The same grouped SwiGLU with one matmul per expert over its contiguous slice (needs the counts on the host)."""
    outs = [F.linear(F.silu(F.linear(part, w1[i])) * F.linear(part, w3[i]), w2[i])
            for i, part in enumerate(x.split(counts.tolist()))]
    return torch.cat(outs) if outs else x.new_zeros(0, w2.shape[1])


def _pad_groups(x: Tensor, counts: Tensor, align: int) -> tuple[Tensor, Tensor, Tensor]:
    """Copy x's expert groups into a zero buffer where each group has a multiple of `align` rows, at least `align`
    (CUDA grouped GEMMs are tuned for such tiles, and an empty group can leave garbage in its weight gradient on
    some GPUs). Returns the buffer, the buffer row of every row of x, and the padded counts. The buffer's size
    depends on shapes only, so nothing waits for the device."""
    padded = ((counts + align - 1) // align * align).clamp_min(align)
    starts = padded.cumsum(0) - padded
    expert_of_row = torch.repeat_interleave(torch.arange(counts.numel(), device=x.device), counts,
                                            output_size=x.shape[0])
    rows = starts[expert_of_row] + torch.arange(x.shape[0], device=x.device) - (counts.cumsum(0) - counts)[expert_of_row]
    buffer = x.new_zeros(x.shape[0] + counts.numel() * align, x.shape[1]).index_copy(0, rows, x)
    return buffer, rows, padded


class _AddLossGradient(torch.autograd.Function):
    """Identity on a layer's output whose backward also sends gradient `scale` into an auxiliary loss.

    This trains each MoE layer's balancing losses with the model's loss without threading them through every
    module's return value (the approach of Megatron-LM's MoEAuxLossAutoScaler)."""

    @staticmethod
    def forward(ctx, out: Tensor, loss: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        ctx.save_for_backward(loss)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        (loss,) = ctx.saved_tensors
        return grad, torch.full_like(loss, ctx.scale), None


class _PermuteRows(torch.autograd.Function):
    """x[perm], whose backward is the gather grad[inverse] (autograd's default for indexing is a scatter-add).
    index_select copies whole rows, several times faster than advanced indexing on the CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _ScaleGradient(torch.autograd.Function):
    """Identity whose gradient is multiplied by `scale`."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def loop_reference(moe: MoE, x: Tensor) -> Tensor:
    """The plainest dropless MoE: for each expert, find its tokens and add its weighted output to theirs.

    Readable and slow (one host sync and a gather/scatter per expert); the tests check the grouped layer against
    it and bench/moe.py measures the difference. No shared expert, no losses: the routed mixture only."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    routing = moe.router(x)
    w1, w2, w3 = moe.experts.weights(_compute_dtype(x))
    out = torch.zeros_like(x, dtype=torch.float32)
    for e in range(moe.n_experts):
        token, choice = torch.where(routing.experts == e)
        if token.numel() == 0:
            continue
        part = x[token].to(w1.dtype)
        y = F.linear(F.silu(F.linear(part, w1[e])) * F.linear(part, w3[e]), w2[e])
        out.index_add_(0, token, y.float() * routing.weights[token, choice, None])
    return out.type_as(x).view(shape)
