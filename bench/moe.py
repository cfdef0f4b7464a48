"""MoE layer speed on the CPU: shoal's grouped dropless layer against the per-expert loop and a dense MLP with the
same active parameters, forward + backward, in the same run.

Prints JSON. The three run interleaved (each going first in turn) on the same tokens, so machine noise hits them
alike; figures are medians over the timed rounds. The default shape is the tiny-moe preset's: 8 experts of 384
hidden units, top-2, d_model 256, one micro-batch of 16 x 256 tokens, bf16 autocast.

    python bench/moe.py [--tokens 4096] [--d-model 256] [--experts 8] [--top-k 2] [--d-ff 384] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from shoal.config import ModelConfig, MoEConfig
from shoal.hardware import pick_dtype
from shoal.models.mlp import FeedForward
from shoal.models.moe import MoE, loop_reference


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16 * 256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-ff", type=int, default=384)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = pick_dtype(args.dtype, torch.device("cpu"))
    cfg = ModelConfig(vocab_size=64, d_model=args.d_model, n_heads=4, d_ff=args.d_ff * args.top_k,
                      moe=MoEConfig(n_experts=args.experts, top_k=args.top_k, d_ff=args.d_ff))
    moe = MoE(cfg).train()
    dense = FeedForward(args.d_model, args.d_ff * args.top_k)  # the active expert width in one MLP
    for module in (moe, dense):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(args.tokens, args.d_model, requires_grad=True)
    grad = torch.randn(args.tokens, args.d_model)

    def run(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                y = forward(x)
            y.backward(grad.to(y.dtype))
        return step

    sides = {"grouped": run(moe), "per_expert_loop": run(lambda t: loop_reference(moe, t)), "dense_mlp": run(dense)}
    for step in sides.values():  # warm-up: allocator, kernel selection
        step()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(args.rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name].append(timed(sides[name]))
    tps = {name: args.tokens / statistics.median(s) for name, s in seconds.items()}
    active = {"grouped": moe.router.gate.weight.numel() + sum(w.numel() for w in moe.experts.parameters())
              * args.top_k // args.experts, "dense_mlp": sum(p.numel() for p in dense.parameters())}
    print(json.dumps({
        "benchmark": "moe_layer_cpu", "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."),
        "shape": {"tokens": args.tokens, "d_model": args.d_model, "experts": args.experts, "top_k": args.top_k,
                  "d_ff_per_expert": args.d_ff},
        "active_parameters": active, "timed_rounds": args.rounds,
        "tokens_per_second": {name: round(v) for name, v in tps.items()},
        "grouped_vs_loop": round(tps["grouped"] / tps["per_expert_loop"], 3),
        "grouped_vs_dense": round(tps["grouped"] / tps["dense_mlp"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
