"""Device check on a CUDA GPU: correctness of the CUDA paths, then a table of timings. Prints JSON.

    python bench/gpu/check.py            # about 3-4 minutes on one H100
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from shoal.config import load_config
from shoal.data.shards import TokenWindows
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.generate import generate
from shoal.train.trainer import Trainer


def small_model(dtype=torch.float32) -> Transformer:
    cfg = resolve_model_config(replace(load_config("tiny").model, init_std=0.2), 8192)
    torch.manual_seed(0)
    return Transformer(cfg).cuda().to(dtype).eval()


def cache_matches_full_forward(dtype) -> float:
    model = small_model(dtype)
    tokens = torch.randint(0, 8192, (2, 40), device="cuda")
    with torch.no_grad():
        full = model(tokens).float()
        cache = model.new_cache(2)
        parts = [model(tokens[:, :25], cache)] + [model(tokens[:, i:i + 1], cache) for i in range(25, 40)]
    return float((torch.cat(parts, 1).float() - full).abs().max())


def generation_matches() -> bool:
    model = small_model()
    prompt = list(range(5, 17))
    with_cache = list(generate(model, prompt, 40, temperature=0.0, use_cache=True))
    without = list(generate(model, prompt, 40, temperature=0.0, use_cache=False))
    sampled = [list(generate(model, prompt, 40, temperature=1.0, seed=1, use_cache=c)) for c in (True, False)]
    return with_cache == without and sampled[0] == sampled[1]


def training_learns() -> dict:
    """A repeating random sequence is learnable: bf16 autocast + fused AdamW must drive the loss down."""
    cfg = load_config("tiny", ["train.steps=60", "train.warmup_steps=5", "train.batch_tokens=8192"])
    pattern = np.random.default_rng(0).integers(0, 512, size=4096)
    tokens = np.tile(pattern, 200).astype(np.uint16)
    trainer = Trainer(cfg, TokenWindows([tokens], cfg.train.seq_len), None, 512)
    losses = [trainer.train_step().loss for _ in range(60)]
    return {"dtype": str(trainer.dtype), "fused_adamw": trainer.optimizer.defaults.get("fused"),
            "first_loss": round(losses[0], 3), "last_loss": round(losses[-1], 3), "ok": losses[-1] < losses[0] - 2}


def decode_tokens_per_second(preset: str, new_tokens: int = 200) -> float:
    cfg = resolve_model_config(load_config(preset).model, 50257)
    model = Transformer(cfg).cuda().to(torch.bfloat16).eval()
    prompt = list(range(1, 17))
    list(generate(model, prompt, 20, temperature=0.0))
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = len(list(generate(model, prompt, new_tokens, temperature=0.0)))
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["cache_vs_full_max_abs_diff"] = {"fp32": cache_matches_full_forward(torch.float32),
                                            "bf16": cache_matches_full_forward(torch.bfloat16)}
    report["generate_same_with_and_without_cache"] = generation_matches()
    report["training"] = training_learns()
    report["decode_tokens_per_second_gpt2_124m_batch1"] = round(
        statistics.median(decode_tokens_per_second("gpt2-124m") for _ in range(3)), 1)
    print(json.dumps(report, indent=2), flush=True)
    bench = [sys.executable, "bench/train_throughput.py", "--preset", "gpt2-124m", "--steps", "4", "--rounds", "2",
             "--vocab", "50304", "--set", "train.compile=false", "--set", "train.batch_tokens=131072"]
    print(subprocess.run(bench, capture_output=True, text=True).stdout, flush=True)


if __name__ == "__main__":
    main()
