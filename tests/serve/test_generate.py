"""Sampling filters and their distributions, and generation with and without the KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shoal.config import ModelConfig
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.generate import generate, sample_next

VOCAB = 64


@pytest.fixture(scope="module")
def model() -> Transformer:
    """A random model with peaked logits (init_std 0.3): greedy choices are far from ties, so cache / no-cache
    agreement is a real check rather than a coin flip between near-equal logits."""
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
                                           init_std=0.3), VOCAB)
    return Transformer(cfg).eval()


def random_logits(batch: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed))


def draw(logits: torch.Tensor, n: int, seed: int = 0, **kw) -> torch.Tensor:
    """Empirical frequencies of n samples from one row of logits, drawn in one batched call."""
    gen = torch.Generator().manual_seed(seed)
    samples = sample_next(logits.expand(n, -1), kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0),
                          gen)
    return torch.bincount(samples, minlength=logits.shape[-1]).float() / n


def test_temperature_zero_top_k_one_and_tiny_top_p_are_greedy():
    logits = random_logits()
    greedy = logits.argmax(dim=-1)
    assert torch.equal(sample_next(logits, 0.0, 0, 1.0, None), greedy)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_next(logits, 1.5, 1, 1.0, gen), greedy)
        assert torch.equal(sample_next(logits, 1.5, 0, 1e-6, gen), greedy)
        assert torch.equal(sample_next(logits, 1.5, 0, 0.0, gen), greedy)  # top_p 0 still keeps the top token
    assert sample_next(logits.bfloat16(), 0.7, 5, 0.9, None).dtype == torch.long


def test_same_seed_same_samples():
    logits = random_logits(batch=64)
    a = sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(3))
    b = sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(3))
    c = sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampled_frequencies_match_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 100_000  # frequency std <= 0.0016; tolerance ~6 sigma
    torch.testing.assert_close(draw(logits, n)[None], F.softmax(logits, -1), rtol=0, atol=0.01)
    torch.testing.assert_close(draw(logits, n, temperature=2.0)[None], F.softmax(logits / 2, -1), rtol=0, atol=0.01)


def test_top_k_and_top_p_renormalise_over_the_kept_tokens():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = F.softmax(logits, -1)[0]  # 0.563, 0.207, 0.126, 0.076, 0.028, 0.004
    top3 = draw(logits, 100_000, top_k=3)
    torch.testing.assert_close(top3[:3], probs[:3] / probs[:3].sum(), rtol=0, atol=0.01)
    assert top3[3:].sum() == 0
    # top_p 0.8: 0.563 + 0.207 = 0.770 < 0.8, so the third token is needed; the fourth is not.
    nucleus = draw(logits, 100_000, top_p=0.8)
    torch.testing.assert_close(nucleus[:3], probs[:3] / probs[:3].sum(), rtol=0, atol=0.01)
    assert nucleus[3:].sum() == 0
    # Both at once: top_k first (4 tokens, renormalised: 0.578, 0.213, 0.129, ...), then top_p 0.7 keeps 2.
    both = draw(logits, 100_000, top_k=4, top_p=0.7)
    torch.testing.assert_close(both[:2], probs[:2] / probs[:2].sum(), rtol=0, atol=0.01)
    assert both[2:].sum() == 0


def test_bad_sampling_settings_are_refused():
    for args in [(-1.0, 0, 1.0), (1.0, -2, 1.0), (1.0, 0, 1.5)]:
        with pytest.raises(ValueError):
            sample_next(random_logits(), *args, None)


@pytest.mark.parametrize("prompt_len", [1, 2, 7, 20])
def test_cache_and_no_cache_generate_the_same_tokens(model, prompt_len):
    prompt = torch.randint(0, VOCAB, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    runs = {}
    for use_cache in (True, False):
        runs["greedy", use_cache] = list(generate(model, prompt, 20, temperature=0, use_cache=use_cache))
        runs["sampled", use_cache] = list(generate(model, prompt, 20, temperature=0.8, top_k=20, top_p=0.95, seed=5,
                                                   use_cache=use_cache))
    assert runs["greedy", True] == runs["greedy", False]
    assert runs["sampled", True] == runs["sampled", False]
    assert len(runs["greedy", True]) == 20 and len(set(runs["sampled", True])) > 5  # not a degenerate constant stream
    assert runs["sampled", True] != runs["greedy", True]


def test_generation_respects_the_window(model):
    # max_seq_len 48: a 40-token prompt leaves room to predict 9 tokens (the last from a full window of 48).
    for use_cache in (True, False):
        assert len(list(generate(model, [3] * 40, 100, temperature=0, use_cache=use_cache))) == 9
        assert len(list(generate(model, [3] * 48, 100, temperature=0, use_cache=use_cache))) == 1
    assert list(generate(model, [3, 4], 0)) == []


def test_seed_reproducibility_and_stop_token(model):
    a = list(generate(model, [1, 2, 3], 25, seed=11))
    assert a == list(generate(model, [1, 2, 3], 25, seed=11))
    assert a != list(generate(model, [1, 2, 3], 25, seed=12))
    stop = a[10]
    first = a.index(stop)
    assert list(generate(model, [1, 2, 3], 25, seed=11, stop_token=stop)) == a[:first]


def test_generate_streams_and_restores_training_mode(model):
    model.train()
    stream = generate(model, [5, 6], 3, temperature=0)
    first = next(stream)
    assert not model.training  # sampling runs in eval mode
    assert torch.is_grad_enabled()  # inference mode does not leak out of the generator between tokens
    assert [first, *stream] == list(generate(model, [5, 6], 3, temperature=0))
    assert model.training
    model.eval()


def test_generate_reproduces_a_learned_pattern():
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=32, init_std=0.02), VOCAB)
    model = Transformer(cfg)
    x = torch.arange(33).remainder(10).repeat(8, 1)  # next token = (token + 1) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = [(7 + i) % 10 for i in range(12)]
    assert list(generate(model, [3, 4, 5, 6], 12, temperature=0)) == expected
    assert list(generate(model, [3, 4, 5, 6], 12, temperature=0, use_cache=False)) == expected


def test_bad_prompts_are_refused_at_the_call(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [1] * 49, 5)
    with pytest.raises(ValueError, match="token ids"):
        generate(model, [1, VOCAB], 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], -1)
    with pytest.raises(ValueError):
        generate(model, [1], 5, top_p=2.0)


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -50.0, 49.0]])
    for temperature in (1e-30, 9.5e-221):
        assert sample_next(logits, temperature, 0, 1.0).tolist() == [1, 0]
        assert sample_next(logits, temperature, 2, 0.5).tolist() == [1, 0]
