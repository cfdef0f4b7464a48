"""How the engine runs one decode step for the rows in use: eagerly, through torch.compile, or replayed from CUDA graphs.

Every decoder takes the rows' tokens and positions ([rows], on the model's device) and the number of positions some
row has reached, and returns logits [rows, vocab] in float32. Rows are packed at the front of the cache (new requests
take the lowest free row), so the rows in use are always rows 0 .. rows-1, some of them idle (token 0, position 0).

- eager: the exact rows and positions, through views of the cache (no copies).
- compile: the same through `torch.compile` (dynamic shapes: a few compilations, then none).
- graphs: one CUDA graph per bucket of rows (powers of two) and positions (powers of two from 64), captured at
  start-up into one shared memory pool. A step copies its tokens and positions into the static input buffers, pads
  the bucket's extra rows with token 0 at position 0 (those rows are free: whatever they write there, a prefill
  overwrites), and replays. Graphs remove the per-kernel launch cost that dominates decoding small batches on a GPU.
  Off CUDA the same buckets and buffers run eagerly, which is how the tests check this path on a CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shoal.models.transformer import KVCache, Transformer

DECODERS = ("auto", "eager", "compile", "graphs")


def pick_decoder(choice: str, model: Transformer) -> str:
    """`auto`: CUDA graphs on a GPU for dense models (mixture-of-experts routing sizes its work on the host, which a
    graph cannot replay), eager otherwise."""
    if choice not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {choice!r}")
    on_cuda = model.tok_embeddings.weight.device.type == "cuda"
    if choice == "graphs" and not on_cuda:
        raise ValueError("--decode graphs needs a CUDA device; use eager or compile here")
    if choice == "graphs" and model.moe_layers():
        raise ValueError("CUDA graphs cannot replay mixture-of-experts routing; use --decode eager or compile")
    if choice != "auto":
        return choice
    return "graphs" if on_cuda and not model.moe_layers() else "eager"


class EagerDecoder:
    def __init__(self, model: Transformer, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self.decode = model.decode

    def __call__(self, tokens: Tensor, positions: Tensor, length: int) -> Tensor:
        return self.decode(tokens, self.cache.view(slice(0, len(tokens)), length), positions).float()


class CompiledDecoder(EagerDecoder):
    def __init__(self, model: Transformer, cache: KVCache) -> None:
        super().__init__(model, cache)
        self.decode = torch.compile(model.decode, dynamic=True)


def buckets(limit: int, start: int = 1) -> list[int]:
    """Powers of two from `start` below `limit`, then `limit` itself."""
    sizes, size = [], start
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


class GraphDecoder:
    def __init__(self, model: Transformer, cache: KVCache, capture: bool | None = None, min_length: int = 64) -> None:
        self.model, self.cache = model, cache
        device = model.tok_embeddings.weight.device
        self.row_buckets = buckets(cache.batch_size)
        self.length_buckets = buckets(cache.max_len, start=min(min_length, cache.max_len))
        self.tokens = torch.zeros(cache.batch_size, dtype=torch.long, device=device)
        self.positions = torch.zeros(cache.batch_size, dtype=torch.long, device=device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture:
            self._capture_all()

    def bucket(self, rows: int, length: int) -> tuple[int, int]:
        return (next(r for r in self.row_buckets if r >= rows), next(n for n in self.length_buckets if n >= length))

    def __call__(self, tokens: Tensor, positions: Tensor, length: int) -> Tensor:
        rows = len(tokens)
        r, n = self.bucket(rows, length)
        self.tokens[:rows].copy_(tokens)
        self.positions[:rows].copy_(positions)
        self.tokens[rows:r].zero_()
        self.positions[rows:r].zero_()
        if not self.capture:
            return self._run(r, n)[:rows]
        graph, logits = self.graphs[(r, n)]
        graph.replay()
        return logits[:rows]

    def _run(self, rows: int, length: int) -> Tensor:
        return self.model.decode(self.tokens[:rows], self.cache.view(slice(0, rows), length),
                                 self.positions[:rows]).float()

    @torch.inference_mode()
    def _capture_all(self) -> None:
        # Largest first, all in one pool: graphs replay one at a time, so they can share their intermediate memory.
        pool = None
        for rows in reversed(self.row_buckets):
            for length in reversed(self.length_buckets):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up (kernel selection, workspaces) off the capture
                    for _ in range(2):
                        self._run(rows, length)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self._run(rows, length)
                pool = graph.pool()
                self.graphs[(rows, length)] = (graph, logits)
        torch.cuda.synchronize()


def make_decoder(kind: str, model: Transformer, cache: KVCache) -> EagerDecoder | CompiledDecoder | GraphDecoder:
    return {"eager": EagerDecoder, "compile": CompiledDecoder, "graphs": GraphDecoder}[kind](model, cache)
