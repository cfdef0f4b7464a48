"""Serving speed: shoal's engine and HTTP server against Hugging Face `transformers` `generate()` on a model of the
same shape (a Llama-architecture `LlamaForCausalLM`: RMSNorm, rotary, SwiGLU, grouped-query attention), random
weights, same dtype, in the same run. Prints JSON.

- single stream: greedy decoding of --new-tokens tokens after a 32-token prompt, batch 1 (shoal's engine directly,
  eager and with its torch.compile decoder; HF `generate(do_sample=False)`), tokens/s;
- aggregate: C concurrent clients (1, 8, 32) each asking for --new-tokens tokens from `shoal serve` (its own
  process, continuous batching, --max-batch rows) over HTTP, against HF `generate()` on one left-padded batch of C
  prompts in this process; total new tokens / wall time.

    python bench/serve.py [--new-tokens 64] [--clients 1 8 32] [--max-batch 32] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from shoal.bundle import save_bundle
from shoal.config import load_config
from shoal.data.tokenizer import train_tokenizer
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine, Request


def hf_twin(model: Transformer, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    twin = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None, eos_token_id=None,
        pad_token_id=0))
    return twin.to(dtype).eval()


def shoal_single(engine: Engine, prompt: list[int], new: int) -> float:
    start = time.perf_counter()
    engine.add(Request(prompt, new))  # no stop token: exactly `new` tokens, like min_new_tokens on the HF side
    while engine.running:
        engine.step()
    return new / (time.perf_counter() - start)


@torch.inference_mode()
def hf_generate(twin, prompts: list[list[int]], new: int) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    out = twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == width + new
    return len(prompts) * new / elapsed


def serve_clients(url: str, prompts: list[str], new: int) -> float:
    async def ask(client: httpx.AsyncClient, prompt: str) -> int:
        reply = await client.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": new, "temperature": 0})
        reply.raise_for_status()
        return reply.json()["usage"]["completion_tokens"]

    async def everyone() -> list[int]:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(prompts))) as client:
            return await asyncio.gather(*(ask(client, p) for p in prompts))

    start = time.perf_counter()
    tokens = sum(asyncio.run(everyone()))
    return tokens / (time.perf_counter() - start)


def start_server(bundle: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    """`shoal serve BUNDLE` in its own process, as users run it; returns it and its URL once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "shoal.cli", "serve", str(bundle), "--port", str(port), *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
            return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("shoal serve did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16

    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "x = [1, 2, 3]\n"]
    tokenizer = train_tokenizer(iter(texts * 50), 8192)  # a real tokenizer for the HTTP side; ids are what count
    torch.manual_seed(0)
    cfg = load_config("tiny").model
    model = Transformer(resolve_model_config(cfg, 8192)).to(dtype).eval()
    twin = hf_twin(model, dtype)
    prompt = torch.randint(0, 8192, (32,), generator=torch.Generator().manual_seed(1)).tolist()

    # The cache is allocated once per server, not per request; compile's compilations happen in the warm-up.
    engines = {"shoal": Engine(model, max_batch=1, decoder="eager"),
               "shoal_compile": Engine(model, max_batch=1, decoder="compile")}
    for engine in engines.values():
        shoal_single(engine, prompt, args.new_tokens)
    single = {"shoal": [], "shoal_compile": [], "hf_generate": []}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            single[name].append(shoal_single(engine, prompt, args.new_tokens))
        single["hf_generate"].append(hf_generate(twin, [prompt], args.new_tokens))
    single_rate = {k: round(statistics.median(v), 1) for k, v in single.items()}

    # The server runs as users run it: `shoal serve` in its own process, on a bundle of the same weights.
    folder = Path(tempfile.mkdtemp(prefix="shoal-bench-serve-"))
    save_bundle(model.float(), tokenizer, folder / "bundle", {"source": "bench/serve.py, random weights"})
    server, url = start_server(folder / "bundle", ["--max-batch", str(args.max_batch), "--max-queue", "1024",
                                                   "--dtype", args.dtype, "--no-drift"])
    words = "def class return import for while print value".split()
    aggregate = {}
    for clients in args.clients:
        prompts_text = [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 9)) for i in range(clients)]
        prompts_ids = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts_text]
        serve_clients(url, prompts_text[:1], 4)  # warm-up
        shoal_rate = statistics.median(serve_clients(url, prompts_text, args.new_tokens) for _ in range(args.rounds))
        hf_rate = statistics.median(hf_generate(twin, prompts_ids, args.new_tokens) for _ in range(args.rounds))
        aggregate[str(clients)] = {"shoal_server": round(shoal_rate, 1), "hf_generate": round(hf_rate, 1),
                                   "ratio": round(shoal_rate / hf_rate, 2)}
    server.terminate()
    server.wait(30)
    shutil.rmtree(folder)
    print(json.dumps({
        "benchmark": "serve", "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "model": f"tiny preset shape ({model.num_params() / 1e6:.2f}M parameters), random weights",
        "dtype": args.dtype, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "single_stream_tokens_per_second": single_rate,
        "single_stream_ratio": round(single_rate["shoal"] / single_rate["hf_generate"], 2),
        "single_stream_ratio_compiled": round(single_rate["shoal_compile"] / single_rate["hf_generate"], 2),
        "aggregate_tokens_per_second": aggregate, "max_batch": args.max_batch,
    }, indent=2))


if __name__ == "__main__":
    main()
