"""Efficiency, measured: prefill and per-token decode latency through the KV cache (p50/p95), prefill and decode
throughput at a few batch sizes, peak memory, and the memory the weights and the cache take.

Prompts are random token ids: speed does not depend on which tokens they are. Every timing waits for the device
(CUDA synchronises before the clock is read), and one untimed pass warms up each shape first.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np
import torch

from shoal.models.transformer import Transformer


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def _decode_run(model: Transformer, batch: int, prompt_len: int, new_tokens: int,
                generator: torch.Generator) -> tuple[float, list[float]]:
    """One prefill of [batch, prompt_len] random tokens, then `new_tokens` single-token steps: their times in s."""
    device = model.tok_embeddings.weight.device
    cache = model.new_cache(batch, max_len=prompt_len + new_tokens)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=generator).to(device)
    start = _clock(device)
    logits = model(prompt, cache)[:, -1]
    prefill = _clock(device) - start
    steps = []
    for _ in range(new_tokens):
        start = _clock(device)
        logits = model(logits.argmax(dim=-1, keepdim=True), cache)[:, -1]
        steps.append(_clock(device) - start)
    return prefill, steps


def measure_efficiency(model: Transformer, prompt_len: int = 128, new_tokens: int = 32, repeats: int = 5,
                       batch_sizes: tuple[int, ...] = (1, 8, 32), seed: int = 0) -> dict[str, Any]:
    model.eval()
    cfg = model.config
    weight = model.tok_embeddings.weight
    device, dtype = weight.device, weight.dtype
    prompt_len = max(1, min(prompt_len, cfg.max_seq_len - new_tokens))
    new_tokens = min(new_tokens, cfg.max_seq_len - prompt_len)
    generator = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _decode_run(model, 1, prompt_len, 2, generator)  # warm-up
    prefills, steps = [], []
    for _ in range(repeats):
        prefill, decode = _decode_run(model, 1, prompt_len, new_tokens, generator)
        prefills.append(prefill)
        steps += decode
    # Batch 1 is the repeated measurement above; larger batches run once each after their own warm-up.
    throughput = {"1": {"prefill_tokens_per_second": prompt_len / float(np.median(prefills)),
                        "decode_tokens_per_second": len(steps) / sum(steps)}}
    for batch in (b for b in batch_sizes if b > 1):
        _decode_run(model, batch, prompt_len, 2, generator)
        prefill, decode = _decode_run(model, batch, prompt_len, new_tokens, generator)
        throughput[str(batch)] = {"prefill_tokens_per_second": batch * prompt_len / prefill,
                                  "decode_tokens_per_second": batch * len(decode) / sum(decode)}
    element = torch.finfo(dtype).bits // 8
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * model.head_dim * element
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "prompt_tokens": prompt_len,
            "new_tokens": new_tokens, "repeats": repeats,
            "prefill_ms": _percentiles(prefills), "decode_ms_per_token": _percentiles(steps),
            "decode_tokens_per_second": len(steps) / sum(steps), "throughput": throughput,
            "weight_bytes": weight_bytes, "kv_cache_bytes_per_token": kv_bytes_per_token,
            "peak_memory_bytes": _peak_memory(device), "peak_memory_kind": "CUDA allocator peak"
            if device.type == "cuda" else "process peak resident set (the whole evaluation)",
            "inference_flops_per_token": model.flops_per_token(prompt_len) / 3}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
