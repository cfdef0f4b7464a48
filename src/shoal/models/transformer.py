"""Decoder-only transformer: RMSNorm, grouped-query attention with rotary embeddings, SwiGLU, optional tied lm head.

The model is one file on purpose: config -> Transformer -> logits, plus a preallocated KV cache for sampling.
Module names follow the Llama convention (`layers.{i}.attention.wq`, `feed_forward.w1`, ...) so checkpoints are easy
to read and per-block wrapping (FSDP, activation checkpointing, torch.compile) can target `model.layers[i]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shoal.config import ModelConfig
from shoal.models.mlp import FeedForward
from shoal.models.moe import MoE, is_moe_layer


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def resolve_model_config(cfg: ModelConfig, tokenizer_vocab: int) -> ModelConfig:
    """Copy of `cfg` with the automatic (0) fields filled in: vocab_size, n_kv_heads and d_ff.

    The vocabulary is rounded up to a multiple of 64 because matmuls whose sizes are multiples of 64 run faster on
    tensor cores and in CPU GEMM kernels; the extra rows are never produced by the tokenizer.
    """
    vocab = cfg.vocab_size if cfg.vocab_size > 0 else _round_up(tokenizer_vocab, 64)
    d_ff = cfg.d_ff if cfg.d_ff > 0 else _round_up(int(8 / 3 * cfg.d_model), 64)
    return dataclasses.replace(cfg, vocab_size=vocab, n_kv_heads=cfg.n_kv_heads or cfg.n_heads, d_ff=d_ff)


def head_size(cfg: ModelConfig) -> int:
    """Channels per attention head: model.head_dim, or by default d_model / n_heads (head pruning keeps the size
    of the heads it leaves, so a pruned model sets it)."""
    return cfg.head_dim or cfg.d_model // cfg.n_heads


class KVCache:
    """Keys and values of every layer for positions 0 .. pos-1, preallocated to `max_len` positions.

    Preallocation keeps decoding free of `torch.cat` copies and allocator churn; entries at or after `pos` are stale
    and never read, which is why `reset()` only rewinds `pos`.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def reset(self) -> None:
        self.pos = 0

    def view(self, rows: slice, length: int | None = None) -> KVCache:
        """A cache sharing the storage of `rows` and their first `length` positions, at position 0: prefill one
        sequence into its row, or decode only the rows (and the positions) in use."""
        view = KVCache.__new__(KVCache)
        view.k = [k[rows, :, :length] for k in self.k]
        view.v = [v[rows, :, :length] for v in self.v]
        view.pos = 0
        return view

    def slot(self, index: int) -> KVCache:
        """A batch-of-one view of row `index`."""
        return self.view(slice(index, index + 1))


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
                ) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, [max_seq_len, head_dim // 2], in float32.

    float32 because the slowest channels turn by only ~1e-4 rad per position and bf16's ~4e-3 resolution could not
    tell nearby positions apart. Computed in float64 on the CPU (not every device has float64), then moved.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device="cpu", dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, device="cpu", dtype=torch.float64), inv_freq)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x [B, H, T, head_dim] by the angles of its positions [T, head_dim/2].

    This is the "half split" pairing (GPT-NeoX, Hugging Face Llama): two contiguous slices instead of Meta's
    interleaved pairs, so no strided views or complex numbers (Meta-layout wq / wk rows need HF's permutation).
    The rotation runs in float32 for the same reason as the tables.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id  # which slot of the KV cache this layer owns
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = head_size(cfg)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        # -1 heads: under tensor parallel this rank computes only its share of the query and key/value heads.
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and positions is not None:
            # One new token per row, each at its own position (rows decode sequences of different lengths); the mask
            # keeps every row to its own positions.
            rows = torch.arange(B, device=x.device)
            cache.k[self.layer_id][rows, :, positions] = k[:, :, 0]
            cache.v[self.layer_id][rows, :, positions] = v[:, :, 0]
            k, v = cache.k[self.layer_id], cache.v[self.layer_id]
        elif cache is not None:
            # Write this chunk at its positions, then attend over everything cached so far.
            end = cache.pos + T
            cache.k[self.layer_id][:, :, cache.pos:end] = k
            cache.v[self.layer_id][:, :, cache.pos:end] = v
            k, v = cache.k[self.layer_id][:, :, :end], cache.v[self.layer_id][:, :, :end]
        # Grouped-query attention: query head h reads kv head h // n_rep. SDPA's enable_gqa does this without copying
        # k and v, and measured faster than repeating them on CPU. On CUDA only the flash kernel takes enable_gqa
        # (half precision, no explicit mask; see the SDPA docs) and anything else would fall back to the O(T^2) math
        # kernel, so there the heads are repeated instead to keep the memory-efficient kernel.
        gqa = self.n_kv_heads != self.n_heads
        native_gqa = gqa and (q.device.type != "cuda" or (q.dtype != torch.float32 and mask is None))
        if gqa and not native_gqa:
            n_rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        # No mask and T > 1 means the keys are exactly this chunk starting at position 0: plain causal attention.
        # A single decoding token may see every cached key, so it needs no mask at all.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           enable_gqa=native_gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = Attention(cfg, layer_id)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        moe = is_moe_layer(cfg.moe, layer_id)
        self.feed_forward = MoE(cfg) if moe else FeedForward(cfg.d_model, cfg.d_ff)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, mask, positions)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("Transformer needs a resolved config: call resolve_model_config(cfg, tokenizer_vocab) "
                             f"first (vocab_size is {cfg.vocab_size})")
        cfg = resolve_model_config(cfg, cfg.vocab_size)  # fills n_kv_heads / d_ff if still 0
        if (not cfg.head_dim and cfg.d_model % cfg.n_heads) or head_size(cfg) % 2 or cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(f"bad attention shape: d_model={cfg.d_model}, n_heads={cfg.n_heads}, "
                             f"n_kv_heads={cfg.n_kv_heads}, head_dim={cfg.head_dim} (need an even head size and "
                             "n_kv_heads | n_heads)")
        self.config = cfg
        self.head_dim = head_size(cfg)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Non-persistent: derived from the config, so they stay out of state_dict() and checkpoints.
        cos, sin = rope_tables(self.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def init_weights(self, seed: int | None = None) -> None:
        """normal(0, init_std) for matrices, with the residual output projections (wo, w2) scaled by
        1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth (GPT-2); norms at one.

        Draws from the global RNG unless `seed` is given. Also recomputes the rotary tables, so a model built on the
        meta device and materialised with `to_empty()` is complete after this call.
        """
        cfg = self.config
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.tok_embeddings.weight.device).manual_seed(seed)
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():  # named_parameters() yields a tied matrix once
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    std = residual_std if name.endswith(("wo.weight", "w2.weight", "experts.w2")) else cfg.init_std
                    p.normal_(0.0, std, generator=gen)
            for moe in self.moe_layers():
                moe.router.expert_bias.zero_()
                moe.reset_stats()
        self._reset_rope()

    def _reset_rope(self) -> None:
        self.rope_cos, self.rope_sin = rope_tables(self.head_dim, self.config.max_seq_len, self.config.rope_theta,
                                                   device=self.rope_cos.device)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Transformer:
        # .to(bf16), .half(), .cuda() and to_empty() all come through here. Rebuild the rotary tables afterwards so
        # they stay exact float32 on the new device instead of being rounded or left uninitialised, and re-tie the
        # lm head: a conversion that makes new Parameter objects (meta -> real in to_empty) converts the two
        # references separately and would silently untie them.
        super()._apply(fn, recurse)
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        if self.rope_cos.device.type != "meta":
            self._reset_rope()
        return self

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens [B, T] -> logits [B, T, vocab_size].

        With `cache`, the tokens sit at positions cache.pos .. cache.pos + T - 1, their keys and values are stored in
        the cache, attention covers every cached position, and cache.pos advances by T once all layers have run.
        """
        B, T = tokens.shape
        pos = cache.pos if cache is not None else 0
        if pos + T > self.config.max_seq_len:
            raise ValueError(f"positions up to {pos + T} exceed max_seq_len={self.config.max_seq_len}")
        mask = None
        if cache is not None:
            if pos + T > cache.max_len:
                raise ValueError(f"positions up to {pos + T} exceed the KV cache length {cache.max_len}")
            if B != cache.batch_size:
                raise ValueError(f"batch of {B} sequences does not match the KV cache's batch of {cache.batch_size}")
            if pos > 0 and T > 1:
                # A chunk after earlier positions: query i (at position pos + i) sees keys 0 .. pos + i. SDPA's
                # is_causal would align the triangle to the top-left corner instead, hence the explicit mask.
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=tokens.device).tril(diagonal=pos)
        cos, sin = self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, mask)
        if cache is not None:
            cache.pos += T
        return self.output(self.norm(h))

    def decode(self, tokens: Tensor, cache: KVCache, positions: Tensor) -> Tensor:
        """One step for every row of the cache: tokens [B] at positions [B] (each row its own) -> logits [B, vocab].

        The shapes never change from step to step (all rows run, whatever their lengths), which is what a batched
        decoder that admits and retires sequences needs, and what CUDA graphs need. cache.pos is not used.
        """
        if tokens.shape != positions.shape or tokens.shape[0] != cache.batch_size:
            raise ValueError(f"decode needs one token and one position per cache row ({cache.batch_size})")
        cos = self.rope_cos[positions][:, None, None, :]  # [B, 1, 1, head_dim / 2]: broadcasts over heads
        sin = self.rope_sin[positions][:, None, None, :]
        keys = torch.arange(cache.max_len, device=tokens.device)
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, max_len]
        h = self.tok_embeddings(tokens[:, None])
        for layer in self.layers:
            h = layer(h, cos, sin, cache, mask, positions)
        return self.output(self.norm(h))[:, 0]

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache; defaults: max_seq_len positions, the dtype and device of the model's weights."""
        weight = self.tok_embeddings.weight
        cfg = self.config
        return KVCache(cfg.n_layers, batch_size, cfg.n_kv_heads, max_len or cfg.max_seq_len, self.head_dim,
                       dtype or weight.dtype, device or weight.device)

    def moe_layers(self) -> list[MoE]:
        return [layer.feed_forward for layer in self.layers if isinstance(layer.feed_forward, MoE)]

    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Parameter count, a tied embedding / lm head matrix counted once. `non_embedding` leaves out the token
        embedding table (and so, when tied, the shared lm head too); `active` counts only the top_k routed experts
        of each MoE layer that a token actually runs through."""
        n = sum(p.numel() for p in self.parameters())
        if active:
            n -= sum(_inactive_expert_params(moe) for moe in self.moe_layers())
        return n - self.tok_embeddings.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) at context length `seq_len` (PaLM, appendix B):

            6 * N + 12 * n_layers * n_heads * head_dim * seq_len

        N counts the parameters that take part in matmuls: every Linear weight including the lm head, and in MoE
        layers the router and the top_k experts a token runs through (active parameters). The embedding lookup is a
        gather, so an untied embedding table is left out; a tied matrix counts once, as the lm head. Norm weights
        are left out (elementwise). The second term is QK^T and attention-times-V over the full
        seq_len x seq_len score matrix (2 matmuls * 2 FLOPs per multiply-add * 3 for forward + backward), without
        discounting the causally masked half, as PaLM does.
        """
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        matmul_params += sum(sum(w.numel() for w in moe.experts.parameters()) - _inactive_expert_params(moe)
                             for moe in self.moe_layers())
        return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.n_heads * self.head_dim * seq_len


def _inactive_expert_params(moe: MoE) -> int:
    """Routed-expert parameters a token does not use: all but top_k of the n_experts (global shapes under EP)."""
    total = sum(w.numel() for w in moe.experts.parameters())
    return total - total * moe.top_k // moe.n_experts
