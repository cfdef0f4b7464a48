"""Training speed on one GPU: shoal's trainer against a plain PyTorch loop, GPT-2 124M and 350M shapes, bf16, compiled.

Prints JSON: tokens/s, MFU and peak memory of each side. Each side runs in its own process, so neither's memory
or compiled code affects the other. Batch 16 x 1024 tokens per optimizer step, as nanoGPT measures.

    python bench/gpu/train.py                      # one H100: about 5 minutes
    python bench/gpu/train.py --models 124m --steps 5 --set model.n_layers=2 --set train.seq_len=128 \
        --set model.max_seq_len=128 --set train.batch_tokens=2048 --set train.micro_batch_size=16  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = {  # name: overrides of the gpt2-124m preset
    "124m": [],
    "350m": ["model.d_model=1024", "model.n_layers=24", "model.n_heads=16", "model.n_kv_heads=16"],
}
BATCH = ["train.seq_len=1024", "train.batch_tokens=16384", "train.micro_batch_size=16", "train.compile=true"]
VOCAB = 50304  # GPT-2's vocabulary padded to a multiple of 64, as nanoGPT measures


def measure(side: str, overrides: list[str], steps: int) -> dict:
    """Time `steps` optimizer steps of one side after warm-up; runs in a process of its own."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from shoal.config import load_config
    from shoal.data.shards import TokenWindows
    from shoal.hardware import peak_flops, peak_memory_bytes
    from shoal.models.transformer import Transformer
    from shoal.train.trainer import Trainer

    cfg = load_config("gpt2-124m", overrides)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=8_000_000, dtype=np.int64).astype(np.uint16)
    trainer = Trainer(cfg, TokenWindows([tokens], cfg.train.seq_len), None, VOCAB)
    device, dtype = trainer.device, trainer.dtype
    if side == "shoal":
        step = lambda: trainer.train_step().seconds  # noqa: E731
    else:
        # nanoGPT's loop on the same model class, initialisation and batches: fused AdamW, bf16 autocast, the loss
        # compiled with the model, clipping, one host sync per step.
        t = cfg.train
        model = Transformer(trainer.cfg.model).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),
                                      weight_decay=t.weight_decay, fused=device.type == "cuda")
        del trainer.model, trainer.optimizer  # only the plain loop's weights and optimizer stay in memory
        if device.type == "cuda":
            torch.cuda.empty_cache()

        def micro_loss(micro):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(micro[:, :-1])
            return F.cross_entropy(logits.float().flatten(0, 1), micro[:, 1:].flatten())
        compiled = torch.compile(micro_loss) if t.compile else micro_loss
        state = {"step": 0}

        def step():
            start = time.perf_counter()
            batch = trainer.loader.batch(state["step"]).to(device, non_blocking=True)
            for micro in batch.split(t.micro_batch_size):
                loss = compiled(micro)
                (loss / trainer.micro_steps).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            state["step"] += 1
            return time.perf_counter() - start

    for _ in range(3):  # compilation and allocator warm-up
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(step() for _ in range(steps))
    peak, source = peak_flops(device, dtype)
    tokens_per_second = cfg.train.batch_tokens / seconds
    return {"tokens_per_second": round(tokens_per_second), "mfu": round(trainer.flops_per_token * tokens_per_second / peak, 4),
            "peak_memory_gib": round(peak_memory_bytes(device) / 2**30, 2), "seconds_per_step": round(seconds, 4),
            "parameters": trainer.num_params[0], "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "dtype": str(dtype).removeprefix("torch."), "peak_flops": peak, "peak_source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--side", choices=["shoal", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(measure(args.side, args.overrides, args.steps)))
        return

    results = {}
    for name in args.models.split(","):
        overrides = [*BATCH, *MODELS[name], *args.overrides]
        sides = {}
        for side in ("shoal", "plain"):
            command = [sys.executable, __file__, "--side", side, "--steps", str(args.steps),
                       *[a for o in overrides for a in ("--set", o)]]
            run = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            if run.returncode or not lines:
                raise SystemExit(f"{name} / {side} failed:\n{run.stderr[-3000:]}")
            sides[side] = json.loads(lines[0].removeprefix("RESULT "))
        results[name] = {"shoal": sides["shoal"], "plain_pytorch": sides["plain"],
                         "shoal_vs_plain": round(sides["shoal"]["tokens_per_second"]
                                                 / sides["plain"]["tokens_per_second"], 3)}
        print(f"{name}: shoal {sides['shoal']['tokens_per_second']:,} tok/s (MFU {sides['shoal']['mfu']:.1%}), "
              f"plain {sides['plain']['tokens_per_second']:,} tok/s", file=sys.stderr)
    print(json.dumps({"benchmark": "gpu_train", "batch": "16 x 1024", "timed_steps": args.steps,
                      "overrides": args.overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
