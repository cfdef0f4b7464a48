"""Training throughput: shoal's trainer against a plain PyTorch loop, same model and batch, fp32 and bf16.

Prints JSON. Both sides run the same optimizer step (AdamW, gradient accumulation, clipping,
autocast) on the same random tokens; their steps interleave, each going first in turn, so
that machine noise and warm-up hit both alike. Figures are medians over the timed steps.

    python bench/train_throughput.py [--preset tiny] [--steps 16] [--dtypes fp32,bf16] [--set model.n_layers=2 ...]
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


class PlainPyTorchLoop:
    """nanoGPT-style training step on a fresh copy of the same model, fed the trainer's batches."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        t = trainer.cfg.train
        self.model = type(trainer.model)(trainer.cfg.model).to(trainer.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),
                                           weight_decay=t.weight_decay, fused=trainer.device.type == "cuda")
        # nanoGPT computes its loss inside the compiled forward, so the loss is compiled with the model here too.
        self.micro_loss = torch.compile(self._micro_loss) if t.compile else self._micro_loss
        self.step = 0

    def _micro_loss(self, micro: torch.Tensor) -> torch.Tensor:
        trainer = self.trainer
        with torch.autocast(trainer.device.type, dtype=trainer.dtype, enabled=trainer.dtype != torch.float32):
            logits = self.model(micro[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), micro[:, 1:].flatten())

    def train_step(self) -> float:
        """One optimizer step; returns its wall time in seconds."""
        trainer, t = self.trainer, self.trainer.cfg.train
        start = time.perf_counter()
        batch = trainer.loader.batch(self.step).to(trainer.device)
        for micro in batch.split(t.micro_batch_size):
            loss = self.micro_loss(micro)
            (loss / trainer.micro_steps).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # wait for the device, as the trainer does
        self.step += 1
        return time.perf_counter() - start


def interleaved_step_times(trainer: Trainer, plain: PlainPyTorchLoop, steps: int) -> tuple[list[float], list[float]]:
    """Alternate single steps of the two, each going first in turn, so that noise on a shared machine and
    warm-up hit both alike; the first step of each (allocation, compilation) is not timed."""
    trainer.train_step()
    plain.train_step()
    shoal_s, plain_s = [], []
    for i in range(steps):
        if i % 2 == 0:
            shoal_s.append(trainer.train_step().seconds)
        plain_s.append(plain.train_step())
        if i % 2 == 1:
            shoal_s.append(trainer.train_step().seconds)
    return shoal_s, plain_s


def figures(seconds: list[float], tokens_per_step: int, flops_per_token: float, peak: float) -> dict[str, float]:
    tokens_per_second = tokens_per_step / statistics.median(seconds)
    return {"tokens_per_second": round(tokens_per_second, 1), "mfu": round(flops_per_token * tokens_per_second / peak, 4),
            "seconds_per_step": round(statistics.median(seconds), 4)}


def paired_speed_ratio(shoal_s: list[float], plain_s: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Median over step pairs of plain time / shoal time (> 1: shoal faster), with a bootstrap 95% interval.

    Steps taken side by side share the machine's state, so their ratio cancels most of a shared machine's noise.
    """
    ratios = np.array(plain_s) / np.array(shoal_s)
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(resamples, len(ratios))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return round(float(np.median(ratios)), 3), round(float(low), 3), round(float(high), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps of each side")
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
        shoal_s, plain_s = interleaved_step_times(trainer, PlainPyTorchLoop(trainer), args.steps)
        peak, source = peak_flops(trainer.device, trainer.dtype)

        shoal_fig, plain_fig = (figures(s, tokens_per_step, trainer.flops_per_token, peak) for s in (shoal_s, plain_s))
        ratio, low, high = paired_speed_ratio(shoal_s, plain_s)
        results[dtype] = {"shoal": shoal_fig, "plain_pytorch": plain_fig, "shoal_vs_plain": ratio,
                          "shoal_vs_plain_95ci": [low, high], "peak_flops": peak, "peak_source": source}
    print(json.dumps({
        "benchmark": "train_throughput", "preset": args.preset, "overrides": args.overrides,
        "device": str(trainer.device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "parameters": trainer.model.num_params(), "flops_per_token": trainer.flops_per_token,
        "tokens_per_step": cfg.train.batch_tokens, "micro_batch": [cfg.train.micro_batch_size, cfg.train.seq_len],
        "timed_steps": args.steps,
        "bf16_speedup_shoal": round(results["bf16"]["shoal"]["tokens_per_second"]
                                    / results["fp32"]["shoal"]["tokens_per_second"], 3) if len(results) == 2 else None,
        "results": results}, indent=2))


if __name__ == "__main__":
    main()
