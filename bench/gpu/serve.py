"""Serving speed on one GPU: GPT-2 base size (the gpt2-124m preset), bf16, random weights, against Hugging Face
`transformers` `generate()` on GPT-2 itself (`GPT2LMHeadModel`, 124M) in the same run. Prints JSON.

First it checks on the device that the CUDA-graph decoder replays exactly what the same buckets give eagerly, and
that its logits match the plain eager decode step. Then:
- single stream, batch 1: greedy decoding of --new-tokens tokens after a 32-token prompt, through shoal's engine with
  each decoder (eager, compile, graphs), and HF `generate()`;
- batched: C sequences (16, 64) through the engine with continuous batching (graphs), against HF `generate()` on one
  batch of C prompts;
- over HTTP: C concurrent clients of `shoal serve --decode graphs` (its own process).

    python bench/gpu/serve.py                      # one H100: about 4 minutes
    python bench/gpu/serve.py --preset tiny --new-tokens 16 --batches 4 --clients 4 --hf-model none  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from shoal.bundle import save_bundle
from shoal.config import load_config
from shoal.data.tokenizer import train_tokenizer
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.decoders import GraphDecoder
from shoal.serve.engine import Engine, Request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serve as cpu_bench  # noqa: E402, I001 -- bench/serve.py: its HF and HTTP helpers


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(engine: Engine, requests: list[Request]) -> list[list[int]]:
    return [s.tokens for s in engine.run(requests)]


def engine_rate(engine: Engine, requests: list[Request]) -> float:
    """Tokens/s of requests[1:] after requests[0] as a warm-up (and, for compile, the compilations)."""
    run(engine, requests[:1])
    sync()
    start = time.perf_counter()
    tokens = sum(len(t) for t in run(engine, requests[1:]))
    sync()
    return tokens / (time.perf_counter() - start)


def check_graphs(model: Transformer, prompts: list[list[int]], new: int) -> dict:
    """Graph replay against the same buckets run eagerly (token for token), and against plain eager (logits)."""
    requests = [Request(p, new) for p in prompts]
    captured = Engine(model, max_batch=8, decoder="eager")
    captured.decoder = GraphDecoder(model, captured.cache, capture=torch.cuda.is_available())
    bucketed = Engine(model, max_batch=8, decoder="eager")
    bucketed.decoder = GraphDecoder(model, bucketed.cache, capture=False)
    same_tokens = run(captured, requests) == run(bucketed, requests)
    eager, graphs = Engine(model, max_batch=8, decoder="eager"), Engine(model, max_batch=8, decoder="eager")
    graphs.decoder = GraphDecoder(model, graphs.cache, capture=torch.cuda.is_available())
    for engine in (eager, graphs):
        for p in prompts[:4]:
            engine.add(Request(p, new))
        engine.step()
    error = ((graphs.logits[:4] - eager.logits[:4]).norm() / eager.logits[:4].norm()).item()
    return {"graph_tokens_equal_bucketed_eager": same_tokens, "logits_relative_error_vs_eager": error,
            "ok": same_tokens and error < 2e-2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--hf-model", choices=["gpt2", "none"], default="gpt2")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16

    torch.manual_seed(0)
    cfg = resolve_model_config(load_config(args.preset).model, 50257)
    model = Transformer(cfg).to(device=device, dtype=dtype).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 50257, (32,), generator=generator).tolist() for _ in range(max(args.batches))]
    result = {"benchmark": "serve-gpu", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "model": f"{args.preset} ({model.num_params() / 1e6:.1f}M parameters), random weights", "dtype": "bf16",
              "new_tokens": args.new_tokens, "check": check_graphs(model, prompts[:8], 16)}

    decoders = ["eager", "compile"] + (["graphs"] if device.type == "cuda" else [])
    single = {}
    for decoder in decoders:
        engine = Engine(model, max_batch=1, decoder=decoder)
        single[f"shoal_{decoder}"] = round(engine_rate(engine, [Request(prompts[0], args.new_tokens)
                                                                for _ in range(2)]), 1)
        del engine
    batched = {}
    best = "graphs" if device.type == "cuda" else "eager"
    for size in args.batches:
        engine = Engine(model, max_batch=size, decoder=best)
        requests = [Request(p, args.new_tokens) for p in [prompts[0], *prompts[:size]]]
        batched[str(size)] = {"shoal_engine": round(engine_rate(engine, requests), 1)}
        del engine
    if args.hf_model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config()).to(device=device, dtype=dtype).eval()
        hf_rate = lambda batch: cpu_bench.hf_generate(hf, batch, args.new_tokens)  # noqa: E731
        hf_rate([prompts[0]])  # warm-up
        single["hf_generate_gpt2"] = round(statistics.median(hf_rate([prompts[0]]) for _ in range(3)), 1)
        for size in args.batches:
            batched[str(size)]["hf_generate_gpt2"] = round(hf_rate(prompts[:size]), 1)
            batched[str(size)]["ratio"] = round(batched[str(size)]["shoal_engine"] / batched[str(size)]
                                                ["hf_generate_gpt2"], 2)
        ratio = single[f"shoal_{best}"] / single["hf_generate_gpt2"]
        result["single_stream_ratio_vs_hf"] = {"decoder": best, "ratio": round(ratio, 1)}
    result["single_stream_tokens_per_second"] = single
    result["batched_tokens_per_second"] = batched
    result["http_clients_tokens_per_second"] = http_rates(model, args.clients, args.new_tokens, best)
    print(json.dumps(result, indent=2))


def http_rates(model: Transformer, clients: list[int], new: int, decoder: str) -> dict:
    """`shoal serve` in its own process on a bundle of the same weights; C concurrent clients."""
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "x = [1, 2, 3]\n"]
    tokenizer = train_tokenizer(iter(texts * 50), 512)
    folder = Path(tempfile.mkdtemp(prefix="shoal-bench-gpu-serve-"))
    save_bundle(model, tokenizer, folder / "bundle", {"source": "bench/gpu/serve.py, random weights"})
    server, url = cpu_bench.start_server(folder / "bundle", ["--max-batch", str(max(clients)), "--max-queue", "1024",
                                                             "--dtype", "bf16", "--decode", decoder, "--no-drift"])
    try:
        words = "def class return import for while print value".split()
        rates = {}
        for count in clients:
            texts = [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 9)) for i in range(count)]
            cpu_bench.serve_clients(url, texts[:1], 4)  # warm-up
            rates[str(count)] = round(cpu_bench.serve_clients(url, texts, new), 1)
        return rates
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
