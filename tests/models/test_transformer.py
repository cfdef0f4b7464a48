"""The transformer on small real models: shapes, causality, KV cache equivalence, GQA, counts, init, dtypes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from shoal.config import ModelConfig
from shoal.models.transformer import Transformer, apply_rope, resolve_model_config, rope_tables

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, init_std=0.2)


def small_model(seed: int = 0, vocab: int = 64, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(resolve_model_config(ModelConfig(**{**SMALL, **overrides}), vocab)).eval()


def tokens(batch: int, length: int, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_resolve_model_config_fills_automatic_fields():
    cfg = ModelConfig(d_model=256, n_heads=4)
    resolved = resolve_model_config(cfg, 8001)
    assert (resolved.vocab_size, resolved.n_kv_heads, resolved.d_ff) == (8064, 4, 704)  # 682.67 -> 682 -> 704
    assert (cfg.vocab_size, cfg.n_kv_heads, cfg.d_ff) == (0, 0, 0)  # a copy: the input is untouched
    assert resolve_model_config(cfg, 8192).vocab_size == 8192  # already a multiple of 64
    assert resolve_model_config(cfg, 257).vocab_size == 320
    assert resolve_model_config(ModelConfig(d_model=768), 10).d_ff == 2048
    explicit = resolve_model_config(ModelConfig(vocab_size=100, n_heads=4, n_kv_heads=1, d_ff=100), 8001)
    assert (explicit.vocab_size, explicit.n_kv_heads, explicit.d_ff) == (100, 1, 100)


def test_unresolved_or_bad_config_is_refused():
    with pytest.raises(ValueError, match="resolve_model_config"):
        Transformer(ModelConfig())
    with pytest.raises(ValueError, match="n_kv_heads"):
        Transformer(ModelConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=3))
    # A head size of its own (what head pruning leaves): 3 heads of 16 on a 40-wide residual stream.
    model = Transformer(resolve_model_config(ModelConfig(vocab_size=64, d_model=40, n_heads=3, head_dim=16), 64))
    assert model.layers[0].attention.wq.weight.shape == (48, 40) and model(torch.zeros(1, 5, dtype=torch.long)).shape \
        == (1, 5, 64)


def test_forward_shape_and_state_dict_holds_only_parameters():
    model = small_model()
    assert model(tokens(3, 7)).shape == (3, 7, 64)
    keys = set(model.state_dict())
    assert not any("rope" in k for k in keys)
    assert keys == {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert "layers.1.attention.wk.weight" in keys and "layers.0.feed_forward.w3.weight" in keys
    assert isinstance(model.layers, torch.nn.ModuleList) and len(model.layers) == 2


def test_rotary_embedding_rotates_pairs_and_depends_only_on_relative_position():
    cos, sin = rope_tables(head_dim=8, max_seq_len=64, theta=10000.0)
    # Channel pair (i, i + 4) turns by pos * 10000^(-2i/8): pair 1 at position 3 by 0.3 rad.
    x = torch.zeros(1, 1, 4, 8)
    x[..., 1] = 1.0
    out = apply_rope(x, cos[:4], sin[:4])[0, 0, 3]
    torch.testing.assert_close(out[[1, 5]], torch.tensor([math.cos(0.3), math.sin(0.3)]))
    assert out[[0, 2, 3, 4, 6, 7]].abs().max() == 0
    # q at m and k at n score the same as q at m + s and k at n + s.
    q, k = torch.randn(2, 1, 1, 1, 8, generator=torch.Generator().manual_seed(0)).unbind(0)

    def score(m: int, n: int) -> torch.Tensor:
        return (apply_rope(q, cos[m:m + 1], sin[m:m + 1]) * apply_rope(k, cos[n:n + 1], sin[n:n + 1])).sum()
    torch.testing.assert_close(score(9, 2), score(50, 43))
    assert not torch.allclose(score(9, 2), score(9, 3))


def reference_logits(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """The same network written out plainly: explicit scores, softmax and mask, rotation by complex numbers."""
    cfg, hd = model.config, model.head_dim
    T = x.shape[1]
    angles = torch.arange(T)[:, None] * cfg.rope_theta ** (-torch.arange(0, hd, 2) / hd)
    rot = torch.polar(torch.ones_like(angles), angles)  # e^{i * angle}

    def rope(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, hd], pairs (j, j + hd/2) as complex numbers
        z = torch.complex(t[..., : hd // 2], t[..., hd // 2:]) * rot[:, None, :]
        return torch.cat((z.real, z.imag), dim=-1)

    def rms(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    h = model.tok_embeddings.weight[x]
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        n = rms(h, layer.attention_norm.weight)
        q = rope((n @ a.wq.weight.T).unflatten(-1, (cfg.n_heads, hd)))
        k = rope((n @ a.wk.weight.T).unflatten(-1, (cfg.n_kv_heads, hd)))
        v = (n @ a.wv.weight.T).unflatten(-1, (cfg.n_kv_heads, hd))
        group = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
        h = h + y @ a.wo.weight.T
        n = rms(h, layer.ffn_norm.weight)
        h = h + (F.silu(n @ f.w1.weight.T) * (n @ f.w3.weight.T)) @ f.w2.weight.T
    return rms(h, model.norm.weight) @ model.output.weight.T


def test_forward_matches_a_plain_reference_implementation():
    for overrides in ({}, {"n_kv_heads": 4, "tie_embeddings": False}):
        model = small_model(**overrides)
        for p in model.parameters():  # norms away from one, so a misplaced norm weight would show
            if p.dim() == 1:
                torch.nn.init.uniform_(p, 0.5, 1.5)
        x = tokens(2, 16)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference_logits(model, x), rtol=0, atol=1e-5)


def test_changing_a_token_only_changes_later_logits():
    model = small_model()
    x = tokens(2, 12)
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 64
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().amax(dim=-1).min() > 1e-3  # every later position sees the change


def test_cached_prefill_and_decode_match_full_forward():
    model = small_model()
    x = tokens(2, 20)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        parts = [model(x[:, :6], cache)]
        assert cache.pos == 6
        parts += [model(x[:, t:t + 1], cache) for t in range(6, 20)]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_chunked_prefill_with_earlier_positions_matches_full_forward():
    model = small_model()
    x = tokens(2, 24)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2, max_len=24)
        bounds = [0, 5, 6, 13, 16, 24]  # chunks of 5, 1, 7, 3 and 8 tokens: pos > 0 with T > 1 needs the mask
        parts = [model(x[:, a:b], cache) for a, b in zip(bounds, bounds[1:], strict=False)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)
        cache.reset()  # a reset cache is as good as a new one: stale entries are never read
        torch.testing.assert_close(model(x[:, :10], cache), full[:, :10], rtol=0, atol=1e-5)


def test_cache_limits_and_defaults():
    model = small_model()
    cache = model.new_cache(1, max_len=8)
    assert cache.k[0].shape == (1, 2, 8, 8) and cache.k[0].dtype == torch.float32 and len(cache.v) == 2
    assert model.new_cache(1).max_len == 32 and model.new_cache(1, dtype=torch.bfloat16).v[1].dtype == torch.bfloat16
    with torch.no_grad():
        model(tokens(1, 6), cache)
        with pytest.raises(ValueError, match="KV cache length"):
            model(tokens(1, 3), cache)
        assert cache.pos == 6  # a refused call leaves the cache as it was
        with pytest.raises(ValueError, match="batch"):
            model(tokens(2, 1), cache)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens(1, 33))
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens(1, 33), model.new_cache(1, max_len=40))


def test_grouped_query_attention_equals_mha_with_repeated_kv_weights():
    gqa = small_model(n_kv_heads=2)  # 4 query heads share 2 kv heads: heads 0, 1 read kv 0; heads 2, 3 read kv 1
    mha = small_model(seed=5, n_kv_heads=4)
    state = gqa.state_dict()
    head_dim = 8
    for i in range(2):
        for name in ("wk", "wv"):
            key = f"layers.{i}.attention.{name}.weight"
            state[key] = state[key].view(2, head_dim, 32).repeat_interleave(2, dim=0).reshape(4 * head_dim, 32)
    mha.load_state_dict(state)
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(mha(x), gqa(x), rtol=0, atol=1e-5)
        cache = gqa.new_cache(2)
        assert cache.k[0].shape[1] == 2  # the cache stores only the kv heads
        torch.testing.assert_close(torch.cat([gqa(x[:, :9], cache), gqa(x[:, 9:], cache)], 1), mha(x), rtol=0,
                                   atol=1e-5)


def test_parameter_count_matches_hand_count():
    # d=32, 4 heads of 8, 2 kv heads, d_ff=64, vocab 64, 2 layers.
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32  # wq wk wv wo, w1 w2 w3, 2 norms
    assert per_layer == 9280
    tied = small_model(d_ff=64)
    assert tied.num_params() == 2 * 9280 + 64 * 32 + 32 == 20640  # layers, shared embedding / head, final norm
    assert tied.num_params(non_embedding=True) == 20640 - 2048
    untied = small_model(d_ff=64, tie_embeddings=False)
    assert untied.num_params() == 20640 + 2048 and untied.num_params(non_embedding=True) == 20640


def test_tied_embeddings_share_storage():
    model = small_model()
    assert model.output.weight is model.tok_embeddings.weight
    assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    model(tokens(2, 5)).sum().backward()  # both uses accumulate into the one gradient
    assert model.tok_embeddings.weight.grad is not None
    assert small_model(tie_embeddings=False).output.weight is not small_model(tie_embeddings=False).tok_embeddings.weight


def test_flops_per_token_matches_hand_count():
    # Matmul weights per layer: 1024 + 512 + 512 + 1024 + 3 * 2048 = 9216; lm head 64 * 32 = 2048.
    # Attention: 12 * n_layers * n_heads * head_dim * seq_len = 12 * 2 * 4 * 8 * 16 = 12288.
    tied = small_model(d_ff=64)
    assert tied.flops_per_token(16) == 6 * (2 * 9216 + 2048) + 12288 == 135168
    # Untied: the embedding is a lookup, the separate head is the same matmul, so the FLOPs are unchanged.
    assert small_model(d_ff=64, tie_embeddings=False).flops_per_token(16) == 135168
    assert tied.flops_per_token(32) - tied.flops_per_token(16) == 12288


def test_init_scales_and_determinism():
    model = small_model(n_layers=8, d_model=64, n_heads=4, n_kv_heads=4, init_std=0.02)
    std = 0.02
    assert model.layers[0].attention.wq.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(std, rel=0.05)
    residual = std / math.sqrt(16)
    assert model.layers[3].attention.wo.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.layers[3].feed_forward.w2.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.layers[3].feed_forward.w1.weight.std().item() == pytest.approx(std, rel=0.05)
    assert torch.equal(model.norm.weight, torch.ones(64)) and torch.equal(model.layers[2].ffn_norm.weight, torch.ones(64))
    # Same global seed, same weights; init_weights(seed) ignores the global RNG.
    assert torch.equal(small_model(seed=3).layers[1].attention.wv.weight, small_model(seed=3).layers[1].attention.wv.weight)
    a, b = small_model(seed=1), small_model(seed=2)
    a.init_weights(seed=7)
    b.init_weights(seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_meta_device_build_then_materialise_equals_normal_build():
    cfg = resolve_model_config(ModelConfig(**SMALL), 64)
    with torch.device("meta"):
        deferred = Transformer(cfg)
    deferred.to_empty(device="cpu")
    deferred.init_weights(seed=11)
    assert deferred.output.weight is deferred.tok_embeddings.weight  # to_empty would have untied them
    normal = Transformer(cfg)
    normal.init_weights(seed=11)
    x = tokens(2, 10)
    torch.testing.assert_close(deferred(x), normal(x), rtol=0, atol=0)


def test_bf16_autocast_forward_is_close_to_fp32():
    model = small_model(init_std=0.02, d_model=64)
    x = tokens(2, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).abs().max().item()
    assert err < 0.05 * ref.abs().max().item()
    assert torch.isfinite(low).all()


def test_bf16_weights_keep_float32_rotary_tables_and_decode_with_a_bf16_cache():
    model = small_model()
    x = tokens(1, 20)
    with torch.no_grad():
        ref = model(x)
        model.to(torch.bfloat16)
        assert model.rope_cos.dtype == torch.float32 and model.tok_embeddings.weight.dtype == torch.bfloat16
        cache = model.new_cache(1)
        assert cache.k[0].dtype == torch.bfloat16
        out = torch.cat([model(x[:, :12], cache)] + [model(x[:, t:t + 1], cache) for t in range(12, 20)], dim=1)
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_a_few_training_steps_fit_a_pattern():
    model = small_model(init_std=0.02).train()
    x = torch.arange(33).remainder(10).repeat(8, 1)  # next token = (token + 1) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.1


def test_config_is_resolved_copy():
    cfg = ModelConfig(**{**SMALL, "vocab_size": 64})
    model = Transformer(cfg)
    assert model.config == dataclasses.replace(cfg, d_ff=128) and cfg.d_ff == 0
