"""Sampling: temperature, top-k and nucleus (top-p) filtering, and a token-by-token generator over a KV cache."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from shoal.models.transformer import Transformer


def sample_next(logits: Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row of logits [B, V]; returns token ids [B].

    temperature 0 is greedy (argmax). Otherwise tokens are drawn from softmax(logits / temperature) restricted to the
    top_k most likely tokens (0: no limit; tokens tied with the k-th are kept) and then to the smallest set whose
    probability reaches top_p (1.0: no limit; the most likely token is always kept).
    """
    if temperature < 0 or top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need temperature >= 0, top_k >= 0 and top_p in [0, 1], got {temperature}, {top_k}, {top_p}")
    logits = logits.float()  # bf16 logits would round the small probabilities the tail filters decide on
    if temperature == 0:
        return logits.argmax(dim=-1)
    # Shifted so the largest is 0 before scaling, and the temperature kept above float32's zero: a tiny temperature
    # sends the rest to -inf (greedy in effect), never to inf - inf or 0 / 0 = nan.
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= top_p  # the tokens before this one already reach top_p
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_request(model: Transformer, prompt: list[int], context: int, temperature: float, top_k: int,
                  top_p: float) -> None:
    """ValueError for a prompt or sampling settings that `model` cannot run within `context` positions."""
    cfg = model.config
    if not prompt:
        raise ValueError("the prompt is empty: generation needs at least one token")
    if len(prompt) > context:
        raise ValueError(f"the prompt has {len(prompt)} tokens, more than the context of {context} "
                         f"(the model's max_seq_len is {cfg.max_seq_len})")
    if min(prompt) < 0 or max(prompt) >= cfg.vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    if temperature < 0 or top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need temperature >= 0, top_k >= 0 and top_p in [0, 1], got {temperature}, {top_k}, {top_p}")


def generate(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, use_cache: bool = True,
             stop_token: int | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids after `prompt`, one at a time, so callers can stream them.

    Stops early at `stop_token` (which is not yielded) and when the context window is full: every token is predicted
    from at most max_seq_len tokens, so at most max_seq_len - len(prompt) + 1 new tokens come out; the window never
    slides, because a sliding window would silently drop the start of the prompt. `seed` seeds a private sampling
    generator (same seed, same tokens; None draws from torch's global RNG). With `use_cache` the prompt is run once
    and each new token costs one single-position forward through the KV cache; without it the whole sequence is
    recomputed every step (slower, for checking the cache). Both give the same tokens.

    Raises ValueError (at the call, not at the first token) for an empty prompt, a prompt longer than max_seq_len,
    token ids outside the vocabulary or bad sampling settings.
    """
    cfg = model.config
    check_request(model, prompt, cfg.max_seq_len, temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return _generate(model, prompt, min(max_new_tokens, cfg.max_seq_len - len(prompt) + 1), temperature, top_k,
                     top_p, seed, use_cache, stop_token)


@torch.inference_mode()  # torch's decorator re-enters the mode around each step of a generator, not across yields
def _generate(model: Transformer, prompt: list[int], n_new: int, temperature: float, top_k: int, top_p: float,
              seed: int | None, use_cache: bool, stop_token: int | None) -> Iterator[int]:
    if n_new == 0:
        return
    device = model.tok_embeddings.weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        tokens = torch.tensor([prompt], dtype=torch.long, device=device)
        # The last new token is never fed back, so the cache needs len(prompt) + n_new - 1 positions.
        cache = model.new_cache(1, max_len=len(prompt) + n_new - 1) if use_cache else None
        logits = model(tokens, cache)[:, -1]
        for i in range(n_new):
            next_token = sample_next(logits, temperature, top_k, top_p, generator)
            token = int(next_token.item())
            if token == stop_token:
                return
            yield token
            if i == n_new - 1:
                return
            if cache is not None:
                logits = model(next_token.view(1, 1), cache)[:, -1]
            else:
                tokens = torch.cat((tokens, next_token.view(1, 1)), dim=1)
                logits = model(tokens)[:, -1]
    finally:
        model.train(was_training)
