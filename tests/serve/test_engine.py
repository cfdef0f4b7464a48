"""The batched engine: sequences of different lengths, admitted while others run, give exactly the tokens of
step-by-step recomputation without a cache; seeds make sampling reproducible whatever else is in the batch."""

from __future__ import annotations

import pytest
import torch

from shoal.config import ModelConfig
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.decoders import GraphDecoder, pick_decoder
from shoal.serve.engine import Engine, Request, generate_batch
from shoal.serve.generate import generate

VOCAB = 64


@pytest.fixture(scope="module")
def model() -> Transformer:
    """Peaked logits (init_std 0.3): greedy choices are far from ties, so agreement is a real check."""
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48,
                                           init_std=0.3), VOCAB)
    return Transformer(cfg).eval()


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (n,), generator=gen)
    return [torch.randint(0, VOCAB, (int(length),), generator=gen).tolist() for length in lengths]


def test_continuous_batching_equals_recomputation_without_cache(model):
    # 11 requests through 4 rows: most are admitted while others are half-way through their own tokens.
    requests = [Request(p, max_tokens=5 + 3 * (i % 4), stop_token=7 if i % 3 == 0 else None)
                for i, p in enumerate(prompts(11))]
    results = generate_batch(model, requests, max_batch=4)
    assert [s.request for s in results] == requests
    for sequence in results:
        r = sequence.request
        expected = list(generate(model, r.prompt, r.max_tokens, temperature=0, use_cache=False, stop_token=r.stop_token))
        assert sequence.tokens == expected
        assert sequence.finish_reason == ("stop" if len(expected) < r.max_tokens else "length")


def test_a_full_context_ends_the_sequence(model):
    prompt = (prompts(1, seed=3)[0] * 40)[:40]  # 40 tokens of a 48-token context: 9 new ones fit
    (sequence,) = generate_batch(model, [Request(prompt, max_tokens=100)], max_batch=2)
    assert len(sequence.tokens) == 48 - len(prompt) + 1 and sequence.finish_reason == "length"
    assert sequence.tokens == list(generate(model, prompt, 100, temperature=0, use_cache=False))


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    request = Request(prompts(1, seed=5)[0], max_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=42)
    alone = generate_batch(model, [request], max_batch=1)[0].tokens
    crowd = [Request(p, max_tokens=9, temperature=0.8, seed=i) for i, p in enumerate(prompts(6, seed=6))]
    together = generate_batch(model, [*crowd[:3], request, *crowd[3:]], max_batch=4)
    assert together[3].tokens == alone
    assert alone == list(generate(model, request.prompt, 12, temperature=1.0, top_k=20, top_p=0.9, seed=42))


def test_bad_requests_and_a_full_engine(model):
    engine = Engine(model, max_batch=1)
    for request, words in ((Request([], 5), "empty"), (Request([1] * 49, 5), "more than the context"),
                           (Request([VOCAB], 5), "token ids"), (Request([1], 0), "max_tokens"),
                           (Request([1], 5, top_p=2.0), "top_p"), (Request([1], 5, seed=2**64), "64-bit")):
        with pytest.raises(ValueError, match=words):
            engine.add(request)
    engine.add(Request([1, 2], 5))
    with pytest.raises(RuntimeError, match="no free slot"):
        engine.add(Request([1, 2], 5))


def run_through(engine: Engine, requests: list[Request]) -> list[list[int]]:
    return [s.tokens for s in engine.run(requests)]


def test_bucketed_static_decoding_gives_the_same_tokens(model):
    # The CUDA-graph decoder's buckets and static buffers, run eagerly: rows pad to 1/2/4 and positions to 8/16/32/48,
    # so steps cross every bucket as sequences come and go.
    requests = [Request(p, max_tokens=4 + 5 * (i % 4)) for i, p in enumerate(prompts(11, seed=8))]
    eager = run_through(Engine(model, max_batch=4, decoder="eager"), requests)
    engine = Engine(model, max_batch=4, decoder="eager")
    engine.decoder = GraphDecoder(model, engine.cache, capture=False, min_length=8)
    assert engine.decoder.row_buckets == [1, 2, 4] and engine.decoder.length_buckets == [8, 16, 32, 48]
    assert engine.decoder.bucket(3, 17) == (4, 32)
    assert run_through(engine, requests) == eager
    assert eager == [list(generate(model, r.prompt, r.max_tokens, temperature=0, use_cache=False)) for r in requests]


def test_compiled_decoding_gives_the_same_tokens(model):
    requests = [Request(p, max_tokens=6) for p in prompts(5, seed=9)]
    engine = Engine(model, max_batch=2, decoder="compile")
    assert engine.decoder_kind == "compile"
    assert run_through(engine, requests) == run_through(Engine(model, max_batch=2, decoder="eager"), requests)


def test_decoder_choices(model):
    assert pick_decoder("auto", model) == "eager"  # on a CPU
    with pytest.raises(ValueError, match="needs a CUDA device"):
        pick_decoder("graphs", model)
    with pytest.raises(ValueError, match="must be one of"):
        pick_decoder("fast", model)
