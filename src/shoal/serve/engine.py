"""A batched generation engine over a preallocated KV cache: sequences of different lengths decode together, and a
finished sequence's slot takes the next request at once (continuous batching), without waiting for the others.

The cache has `max_batch` rows of `max_len` positions, allocated once. A request is prefilled into a free row on its
own (its prompt in one forward pass), then every `step()` samples one token for each running sequence from its last
logits and runs all rows through one decode pass, each row at its own position. Each sequence keeps its own sampling
settings and random generator, so its tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shoal.models.transformer import Transformer
from shoal.serve.decoders import make_decoder, pick_decoder
from shoal.serve.generate import check_request, sample_next


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token: int | None = None  # ends the sequence; not part of its output


@dataclass
class Sequence:
    request: Request
    slot: int
    tokens: list[int] = field(default_factory=list)  # generated so far
    finish_reason: str | None = None  # "stop" (stop token), "length" (max_tokens or the context is full)
    generator: torch.Generator | None = None
    prompt_nats: float | None = None  # the model's loss on the prompt (its tokens after the first), when scored

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Engine:
    def __init__(self, model: Transformer, max_batch: int = 8, max_len: int | None = None,
                 score_prompts: bool = False, decoder: str = "auto") -> None:
        """`decoder`: eager, compile, graphs (CUDA) or auto (see serve/decoders.py)."""
        self.model = model.eval()
        self.score_prompts = score_prompts  # for drift monitoring: the prefill's logits give the prompt's loss
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.cache = model.new_cache(max_batch, self.max_len)
        self.device = model.tok_embeddings.weight.device
        # Per-row state lives on the host: one copy to the device per step rather than one per row.
        self.positions = [0] * max_batch  # next position per row
        self.last_tokens = [0] * max_batch
        self.logits = torch.zeros(max_batch, model.config.vocab_size, device=self.device)
        self.slots: list[Sequence | None] = [None] * max_batch
        self.decoder_kind = pick_decoder(decoder, model)
        self.decoder = make_decoder(self.decoder_kind, model, self.cache)

    @property
    def free_slots(self) -> int:
        return self.slots.count(None)

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def check(self, request: Request) -> None:
        """Raise ValueError for a request this engine can never run."""
        check_request(self.model, request.prompt, self.max_len, request.temperature, request.top_k, request.top_p)
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {request.max_tokens}")
        if request.seed is not None and not -(2**63) <= request.seed < 2**64:
            raise ValueError(f"seed must be a 64-bit integer, got {request.seed}")

    @torch.inference_mode()
    def add(self, request: Request) -> Sequence:
        """Prefill `request` into a free row; raises RuntimeError when every row is busy."""
        self.check(request)
        if self.free_slots == 0:
            raise RuntimeError("no free slot: wait for a sequence to finish")
        slot = self.slots.index(None)
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        sequence = Sequence(request, slot, generator=generator)
        prompt = torch.tensor([request.prompt], dtype=torch.long, device=self.device)
        logits = self.model(prompt, self.cache.slot(slot))[0]
        self.logits[slot] = logits[-1].float()
        if self.score_prompts:
            sequence.prompt_nats = prompt_loss(logits, prompt[0])
        self.positions[slot] = len(request.prompt)
        self.slots[slot] = sequence
        return sequence

    def remove(self, sequence: Sequence) -> None:
        """Take a running sequence out (cancelled); its row is free for the next request."""
        if self.slots[sequence.slot] is sequence:
            self._free(sequence.slot)
            sequence.finish_reason = sequence.finish_reason or "cancelled"

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, int | None]]:
        """One token for every running sequence: (sequence, token) pairs, token None when a stop token ended it.
        Finished sequences leave their rows; the rows still running advance by one decode pass."""
        events: list[tuple[Sequence, int | None]] = []
        running = self.running
        tokens = self._sample(running)
        for sequence, token in zip(running, tokens):
            r = sequence.request
            if token == r.stop_token:
                sequence.finish_reason = "stop"
                events.append((sequence, None))
            else:
                sequence.tokens.append(token)
                events.append((sequence, token))
                # Every token is predicted from at most max_len positions: the last one is never fed back.
                # The cache holds the prompt and every token but this one.
                if len(sequence.tokens) >= r.max_tokens or len(r.prompt) + len(sequence.tokens) > self.max_len:
                    sequence.finish_reason = "length"
            if sequence.done:
                self._free(sequence.slot)
            else:
                self.last_tokens[sequence.slot] = token
        if self.running:
            self._decode()
        return events

    def _sample(self, running: list[Sequence]) -> list[int]:
        """Greedy rows in one argmax; sampled rows one by one, each with its own settings and generator."""
        tokens: dict[int, int] = {}
        greedy = [s.slot for s in running if s.request.temperature == 0]
        if greedy:
            picked = self.logits[greedy].argmax(dim=-1).tolist()
            tokens.update(zip(greedy, picked))
        for s in running:
            if s.slot not in tokens:
                r = s.request
                tokens[s.slot] = int(sample_next(self.logits[s.slot:s.slot + 1], r.temperature, r.top_k, r.top_p,
                                                 s.generator).item())
        return [tokens[s.slot] for s in running]

    def run(self, requests: list[Request]) -> list[Sequence]:
        """Run `requests` to completion (in their order), admitting the next as soon as a row frees up."""
        for request in requests:
            self.check(request)
        waiting = list(requests)
        finished: list[Sequence] = []
        while waiting or self.running:
            while waiting and self.free_slots:
                self.add(waiting.pop(0))
            finished += [s for s, _ in self.step() if s.done]
        order = {id(r): i for i, r in enumerate(requests)}
        return sorted(finished, key=lambda s: order[id(s.request)])

    def _free(self, slot: int) -> None:
        self.slots[slot] = None
        self.positions[slot] = self.last_tokens[slot] = 0  # an idle row decodes token 0 at position 0, unread

    def _decode(self) -> None:
        # Only the rows up to the last one in use, and only the positions some row has reached. New requests take the
        # lowest free row, so the rows in use stay packed at the front. An idle row's logits are never read: a
        # prefill sets them before its row runs again.
        rows = max(i for i, s in enumerate(self.slots) if s is not None) + 1
        length = max(self.positions[:rows]) + 1
        tokens = torch.tensor(self.last_tokens[:rows], dtype=torch.long).to(self.device, non_blocking=True)
        positions = torch.tensor(self.positions[:rows], dtype=torch.long).to(self.device, non_blocking=True)
        self.logits[:rows] = self.decoder(tokens, positions, length)
        for i in range(rows):
            if self.slots[i] is not None:
                self.positions[i] += 1


def prompt_loss(logits: torch.Tensor, prompt: torch.Tensor, chunk: int = 256) -> float:
    """Total nats of prompt[1:] under logits [T, vocab], in chunks: a float32 copy of a long prompt's logits over a
    large vocabulary would otherwise cost as much memory again as the prefill."""
    total = torch.zeros((), device=logits.device)
    for start in range(0, len(prompt) - 1, chunk):
        end = min(start + chunk, len(prompt) - 1)
        total += torch.nn.functional.cross_entropy(logits[start:end].float(), prompt[start + 1:end + 1], reduction="sum")
    return float(total)


def generate_batch(model: Transformer, requests: list[Request], max_batch: int = 8,
                   decoder: str = "auto") -> list[Sequence]:
    """Run `requests` to completion through one engine, admitting the next as soon as a row frees up."""
    return Engine(model, max_batch, decoder=decoder).run(requests)
