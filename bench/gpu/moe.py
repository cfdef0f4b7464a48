"""MoE training speed on one GPU: GPT-2 base with 8 experts top-2 (gpt2-124m-moe), shoal's grouped dropless layer
against a naive per-expert loop, and the dense GPT-2 base it is built on; bf16.

Prints JSON: tokens/s, MFU (active parameters) and peak memory of each, and the two ratios the design asks for:
grouped / loop (goal >= 3) and MoE MFU / dense MFU, i.e. tokens/s per active parameter (goal >= 0.6). First it
checks on the GPU that the grouped layer (padded groups, torch._grouped_mm) matches the loop. Each variant runs in
its own process. Batch 16 x 1024 tokens per optimizer step.

    python bench/gpu/moe.py                        # one H100: about 6 minutes
    python bench/gpu/moe.py --steps 3 --set model.n_layers=2 --set train.seq_len=128 --set model.max_seq_len=128 \
        --set train.batch_tokens=2048 --set train.micro_batch_size=16  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

VARIANTS = {  # name: (preset, overrides)
    "moe_grouped": ("gpt2-124m-moe", ["train.compile=true"]),
    # The loop's per-expert token counts change every step; compiled, that means recompiling and graph breaks.
    "moe_loop": ("gpt2-124m-moe", ["train.compile=false"]),
    "dense": ("gpt2-124m", ["train.compile=true"]),
}
BATCH = ["train.seq_len=1024", "train.batch_tokens=16384", "train.micro_batch_size=16"]
VOCAB = 50304


def check_layer() -> dict:
    """The grouped layer against the per-expert loop, forward and input gradient, on this device."""
    import torch

    from shoal.config import ModelConfig, MoEConfig
    from shoal.models.moe import MoE, loop_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    moe = MoE(ModelConfig(vocab_size=64, d_model=768, n_heads=12, d_ff=2048,
                          moe=MoEConfig(n_experts=8, top_k=2, d_ff=1024, aux_loss_coef=0, z_loss_coef=0))).to(device)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(4096, 768, device=device)
    out = {}
    for name, forward in (("grouped", moe), ("loop", lambda t: loop_reference(moe, t))):
        xi = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = forward(xi)
        y.float().square().sum().backward()
        out[name] = (y.float(), xi.grad)
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(out["grouped"], out["loop"])]
    return {"output_relative_error": rel[0], "input_grad_relative_error": rel[1], "ok": max(rel) < 2e-2}


def measure(preset: str, overrides: list[str], steps: int, loop: bool) -> dict:
    import numpy as np
    import torch

    from shoal.config import load_config
    from shoal.data.shards import TokenWindows
    from shoal.hardware import peak_flops, peak_memory_bytes
    from shoal.models.moe import MoE, loop_reference
    from shoal.train.trainer import Trainer

    if loop:
        MoE.forward = loop_reference  # the naive layer: routed mixture only, one gather/scatter per expert
    cfg = load_config(preset, overrides)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=8_000_000, dtype=np.int64).astype(np.uint16)
    trainer = Trainer(cfg, TokenWindows([tokens], cfg.train.seq_len), None, VOCAB)
    for _ in range(3):  # compilation and allocator warm-up
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    seconds = statistics.median(trainer.train_step().seconds for _ in range(steps))
    peak, source = peak_flops(trainer.device, trainer.dtype)
    tokens_per_second = cfg.train.batch_tokens / seconds
    return {"tokens_per_second": round(tokens_per_second), "mfu": round(trainer.flops_per_token * tokens_per_second / peak, 4),
            "peak_memory_gib": round(peak_memory_bytes(trainer.device) / 2**30, 2), "seconds_per_step": round(seconds, 4),
            "parameters": trainer.num_params[0], "active_parameters": trainer.num_params[2],
            "flops_per_token": trainer.flops_per_token, "compiled": cfg.train.compile, "peak_source": source,
            "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        print("RESULT " + json.dumps(check_layer()))
        return
    if args.variant:
        preset, overrides = VARIANTS[args.variant]
        print("RESULT " + json.dumps(measure(preset, [*BATCH, *overrides, *args.overrides], args.steps,
                                             loop=args.variant == "moe_loop")))
        return

    def child(*flags: str) -> dict:
        command = [sys.executable, __file__, *flags, "--steps", str(args.steps),
                   *[a for o in args.overrides for a in ("--set", o)]]
        run = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode or not lines:
            raise SystemExit(f"{' '.join(flags)} failed:\n{run.stderr[-3000:]}")
        return json.loads(lines[0].removeprefix("RESULT "))

    check = child("--check")
    print(f"layer check: {check}", file=sys.stderr)
    results = {}
    for name in args.variants.split(","):
        results[name] = child("--variant", name)
        print(f"{name}: {results[name]['tokens_per_second']:,} tok/s, MFU {results[name]['mfu']:.1%}", file=sys.stderr)
    ratios = {}
    if {"moe_grouped", "moe_loop"} <= results.keys():
        ratios["grouped_vs_loop"] = round(results["moe_grouped"]["tokens_per_second"]
                                          / results["moe_loop"]["tokens_per_second"], 3)
    if {"moe_grouped", "dense"} <= results.keys():
        ratios["per_active_parameter_vs_dense"] = round(results["moe_grouped"]["mfu"] / results["dense"]["mfu"], 3)
    print(json.dumps({"benchmark": "gpu_moe", "batch": "16 x 1024", "timed_steps": args.steps,
                      "overrides": args.overrides, "layer_check": check, "results": results, **ratios}, indent=2))


if __name__ == "__main__":
    main()
