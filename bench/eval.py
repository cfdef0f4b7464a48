"""Evaluation speed: shoal's harness (`score_documents`: loss, top-1/top-5, calibration, Brier) against a plain
PyTorch loop computing only the same loss, on the same model and documents, in the same run. Prints JSON.

The model is the `tiny` preset (random weights unless --model names a run or bundle) with the default corpus's
tokenizer; the documents are the first --documents files of the standard library. Both sides score each document
in the same windows, so their total losses must agree; rounds alternate which side goes first.

    python bench/eval.py [--model RUN_OR_BUNDLE] [--documents 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from shoal.bundle import load_model
from shoal.config import load_config
from shoal.data.prepare import prepare_dataset
from shoal.data.sources import iter_documents, resolve_sources
from shoal.data.tokenizer import eot_id, load_tokenizer
from shoal.eval.scoring import score_documents
from shoal.models.transformer import Transformer, resolve_model_config


@torch.no_grad()
def plain_loss(model: Transformer, tokenizer, texts: list[str]) -> tuple[float, int]:
    """The loop most code writes: encode, run windows of the context length, sum the cross-entropy."""
    model.eval()
    eot, window = eot_id(tokenizer), model.config.max_seq_len
    nats, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([eot, *tokenizer.encode(text, add_special_tokens=False).ids, eot])
        for start in range(0, len(ids) - 1, window):
            x, y = ids[start:start + window], ids[start + 1:start + window + 1]
            logits = model(x[None, :len(y)])[0]
            nats += F.cross_entropy(logits.float(), y, reduction="sum").item()
            count += len(y)
    return nats, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder or bundle (default: the tiny preset, random weights)")
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    if args.model:
        loaded = load_model(args.model)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        cfg = load_config("tiny")
        prepared = prepare_dataset(cfg.data, progress=False)  # cached after the first run: the tokenizer
        tokenizer = load_tokenizer(prepared.tokenizer_path)
        torch.manual_seed(0)
        model = Transformer(resolve_model_config(cfg.model, tokenizer.get_vocab_size()))
    docs = []
    for doc in iter_documents(resolve_sources(["stdlib"])):
        docs.append((doc.origin, doc.text))
        if len(docs) == args.documents:
            break
    texts = [text for _, text in docs]

    timings: dict[str, list[float]] = {"shoal": [], "plain_pytorch": []}
    results = {}
    for i in range(args.rounds):
        for side in (["shoal", "plain_pytorch"] if i % 2 == 0 else ["plain_pytorch", "shoal"]):
            start = time.perf_counter()
            if side == "shoal":
                scores = score_documents(model, tokenizer, docs)
                results[side] = (sum(scores.nats), sum(scores.tokens))
            else:
                results[side] = plain_loss(model, tokenizer, texts)
            timings[side].append(time.perf_counter() - start)
    tokens = results["shoal"][1]
    rate = {side: round(tokens / statistics.median(t)) for side, t in timings.items()}
    print(json.dumps({
        "benchmark": "eval", "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "model": args.model or "tiny preset, random weights", "documents": len(docs), "tokens": tokens,
        "rounds": args.rounds, "tokens_per_second": rate,
        "shoal_vs_plain": round(rate["shoal"] / rate["plain_pytorch"], 3),
        "loss": {side: round(n / c, 6) for side, (n, c) in results.items()},
        "same_loss": abs(results["shoal"][0] - results["plain_pytorch"][0]) <= 1e-4 * abs(results["plain_pytorch"][0]),
    }, indent=2))


if __name__ == "__main__":
    main()
