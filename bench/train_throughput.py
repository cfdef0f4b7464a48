"""Training throughput: shoal's trainer against a plain PyTorch loop, same model and batch, fp32 and bf16.

Prints JSON. Both sides run the same optimizer step (AdamW, gradient accumulation, clipping,
autocast) on the same random tokens; rounds alternate so that machine noise hits both alike.

    python bench/train_throughput.py [--preset tiny] [--steps 6] [--rounds 3] [--set model.n_layers=2 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from shoal.config import load_config
from shoal.data.shards import TokenWindows
from shoal.hardware import peak_flops
from shoal.train.trainer import Trainer


def plain_pytorch_loop(trainer: Trainer, steps: int) -> float:
    """nanoGPT-style step on a fresh copy of the same model: returns seconds per step (median)."""
    t = trainer.cfg.train
    model = type(trainer.model)(trainer.cfg.model).to(trainer.device)
    step_model = torch.compile(model) if t.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                                  fused=trainer.device.type == "cuda")
    use_autocast = trainer.dtype != torch.float32
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = trainer.loader.batch(step).to(trainer.device)
        for micro in batch.split(t.micro_batch_size):
            with torch.autocast(trainer.device.type, dtype=trainer.dtype, enabled=use_autocast):
                logits = step_model(micro[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), micro[:, 1:].flatten())
            (loss / trainer.micro_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the trainer does
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def shoal_trainer(trainer: Trainer, steps: int) -> float:
    times = [trainer.train_step().seconds for _ in range(steps)]
    return statistics.median(times[1:])


def figures(seconds: list[float], tokens_per_step: int, flops_per_token: float, peak: float) -> dict[str, float]:
    tokens_per_second = tokens_per_step / statistics.median(seconds)
    return {"tokens_per_second": round(tokens_per_second, 1), "mfu": round(flops_per_token * tokens_per_second / peak, 4),
            "seconds_per_step": round(statistics.median(seconds), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per round (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    tokens = np.random.default_rng(0).integers(0, args.vocab, size=4_000_000, dtype=np.int64).astype(np.uint16)
    results = {}
    for dtype in args.dtypes.split(","):
        cfg = load_config(args.preset, [f"train.dtype={dtype}", *args.overrides])
        trainer = Trainer(cfg, TokenWindows([tokens], cfg.train.seq_len), None, args.vocab)
        tokens_per_step = cfg.train.batch_tokens
        shoal_s, plain_s = [], []
        for _ in range(args.rounds):
            shoal_s.append(shoal_trainer(trainer, args.steps))
            plain_s.append(plain_pytorch_loop(trainer, args.steps))
        peak, source = peak_flops(trainer.device, trainer.dtype)

        shoal_fig, plain_fig = (figures(s, tokens_per_step, trainer.flops_per_token, peak) for s in (shoal_s, plain_s))
        results[dtype] = {"shoal": shoal_fig, "plain_pytorch": plain_fig,
                          "shoal_vs_plain": round(shoal_fig["tokens_per_second"] / plain_fig["tokens_per_second"], 3),
                          "peak_flops": peak, "peak_source": source}
    print(json.dumps({
        "benchmark": "train_throughput", "preset": args.preset, "overrides": args.overrides,
        "device": str(trainer.device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "parameters": trainer.model.num_params(), "flops_per_token": trainer.flops_per_token,
        "tokens_per_step": cfg.train.batch_tokens, "micro_batch": [cfg.train.micro_batch_size, cfg.train.seq_len],
        "rounds": args.rounds, "timed_steps_per_round": args.steps - 1,
        "bf16_speedup_shoal": round(results["bf16"]["shoal"]["tokens_per_second"]
                                    / results["fp32"]["shoal"]["tokens_per_second"], 3) if len(results) == 2 else None,
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
