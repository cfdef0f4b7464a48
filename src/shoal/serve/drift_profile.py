"""The reference a server's traffic is compared with: what the model was trained on, as prompts.

A reference prompt is a random window of the data: it starts at a token drawn uniformly from all documents and runs
to the longest prompt the server takes, or to the end of its document.
- Token frequencies come from the whole training split; the prompt lengths and the token pieces that the null
  distributions resample come from 4,096 reference prompts of it.
- The model's own per-token surprisal comes from 256 reference prompts of the validation split, which it has not
  seen: each is scored on its own, from its first token, exactly as a prompt is scored at prefill.

Pieces keep the document they came from, so that the null distributions resample documents first (a small reference
set then gives wide, honest thresholds rather than tight, wrong ones).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from shoal.bundle import LoadedModel
from shoal.config import config_from_dict
from shoal.data.prepared import load_prepared
from shoal.data.sources import iter_documents, resolve_sources
from shoal.errors import DataError, ShoalError
from shoal.models.transformer import Transformer

MAX_PIECES = 4096  # reference prompts drawn from the training split
MAX_SCORED_PIECES = 256  # from the validation split, scored by the model at start-up


@dataclass
class Pieces:
    """Prompt-sized pieces of reference documents, zero-padded to [pieces, max_prompt]."""
    values: np.ndarray  # token ids (int32), or for scored pieces the running sum of surprisal (float64)
    lengths: np.ndarray  # tokens in each piece
    documents: np.ndarray  # which of the n_documents the pieces came from holds each piece
    n_documents: int


@dataclass
class DriftProfile:
    source: str
    vocab_size: int
    max_prompt: int
    frequencies: np.ndarray  # [vocab] share of each token in the training split
    tokens: int  # in the training split
    pieces: Pieces  # reference prompts from the training documents: token ids (their lengths: the length profile)
    scored: Pieces  # of validation documents: cumulative surprisal, entry i = nats of tokens 1..i+1

    @property
    def mean_surprisal(self) -> float:
        ends = self.scored.values[np.arange(len(self.scored.lengths)), np.maximum(self.scored.lengths - 2, 0)]
        predicted = np.maximum(self.scored.lengths - 1, 0)
        return float(ends[predicted > 0].sum() / max(predicted.sum(), 1))

    def describe(self) -> dict:
        return {"source": self.source, "max_prompt_tokens": self.max_prompt,
                "training_tokens": self.tokens,
                "documents": self.pieces.n_documents, "median_length": float(np.median(self.pieces.lengths)),
                "pieces": int(len(self.pieces.lengths)), "scored_pieces": int(len(self.scored.lengths)),
                "mean_surprisal": self.mean_surprisal}


def build_profile(model: Transformer, training: Iterable[np.ndarray], validation: Iterable[np.ndarray], source: str,
                  max_prompt: int, seed: int = 0, on_piece: Callable[[], None] | None = None) -> DriftProfile:
    """A profile from token-id documents: `training` gives token frequencies, lengths and pieces, `validation` the
    surprisal (scored with `model`, in its own dtype and device, as the server will score prompts)."""
    vocab = model.config.vocab_size
    rng = np.random.default_rng(seed)
    counts = np.zeros(vocab, dtype=np.float64)
    train_docs = [ids for ids in training if len(ids)]
    val_docs = [ids for ids in validation if len(ids)]
    if not train_docs or not val_docs:
        raise ShoalError(f"the drift reference {source} has no {'training' if not train_docs else 'validation'} "
                         "documents")
    counts += np.bincount(np.concatenate(train_docs), minlength=vocab)[:vocab]
    pieces = random_windows(train_docs, max_prompt, MAX_PIECES, rng)
    scored = random_windows(val_docs, max_prompt, MAX_SCORED_PIECES, rng)
    scored.values = _surprisal(model, scored, on_piece)
    return DriftProfile(source, vocab, max_prompt, counts / counts.sum(), int(counts.sum()), pieces, scored)


def random_windows(documents: list[np.ndarray], size: int, count: int, rng: np.random.Generator) -> Pieces:
    """`count` reference prompts: each starts at a token drawn uniformly from all the documents and runs `size` tokens
    or to the end of its document."""
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    starts = rng.integers(0, lengths.sum(), count)
    owner = np.searchsorted(np.cumsum(lengths), starts, side="right")
    offsets = starts - (np.cumsum(lengths) - lengths)[owner]
    values = np.zeros((count, size), dtype=np.int32)
    taken = np.zeros(count, dtype=np.int64)
    for row, (d, start) in enumerate(zip(owner, offsets)):
        piece = documents[d][start:start + size]
        values[row, :len(piece)] = piece
        taken[row] = len(piece)
    # The null resamples the documents the pieces came from, numbered 0 .. k-1.
    owners, numbered = np.unique(owner, return_inverse=True)
    return Pieces(values, taken, numbered.astype(np.int64), len(owners))


@torch.inference_mode()
def _surprisal(model: Transformer, pieces: Pieces, on_piece: Callable[[], None] | None) -> np.ndarray:
    """Running sums of each piece's per-token surprisal in nats, each piece scored from its own first token."""
    device = model.tok_embeddings.weight.device
    sums = np.zeros(pieces.values.shape, dtype=np.float64)
    for row, (ids, length) in enumerate(zip(pieces.values, pieces.lengths)):
        if length >= 2:
            tokens = torch.as_tensor(ids[:length], dtype=torch.long, device=device)[None]
            logits = model(tokens)[0, :-1].float()
            nats = torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="none")
            sums[row, :length - 1] = np.cumsum(nats.double().cpu().numpy())
        if on_piece is not None:
            on_piece()
    return sums


def run_reference(loaded: LoadedModel) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """(description, training documents, validation documents) of the data a run was trained on, read from its
    prepared folder; DataError when that folder is gone (the server then needs --drift-reference)."""
    if "config" not in loaded.info:
        raise DataError(f"{loaded.info.get('source', 'the model')} is a bundle: give the reference data with "
                        "--drift-reference (a folder, a file or \"stdlib\")")
    cfg = config_from_dict(loaded.info["config"])
    fingerprint = loaded.info["dataset_fingerprint"]
    folder = Path(cfg.data.prepared_dir) / fingerprint[:16]
    try:
        prepared = load_prepared(folder)
    except DataError as e:
        raise DataError(f"the run's prepared data is not readable here ({e}); give the reference data with "
                        "--drift-reference") from None
    return (f"dataset {fingerprint[:16]}", list(prepared.documents("train")), list(prepared.documents("val")))


def sources_reference(sources: list[str], tokenizer: Tokenizer) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """Documents named on the command line, used both for the token profile and for the surprisal."""
    files = resolve_sources(sources, key="--drift-reference")
    documents = [np.array(tokenizer.encode(doc.text, add_special_tokens=False).ids, dtype=np.int64)
                 for doc in iter_documents(files)]
    documents = [d for d in documents if len(d)]
    return ", ".join(sources), documents, documents


def server_profile(loaded: LoadedModel, model: Transformer, sources: list[str], max_prompt: int,
                   progress: bool = True) -> DriftProfile:
    """The profile `shoal serve` monitors against: from `sources` when given, else from the run's own data."""
    from rich.console import Console
    from rich.progress import Progress

    description, training, validation = (sources_reference(sources, loaded.tokenizer) if sources
                                         else run_reference(loaded))
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("drift reference: scoring", total=MAX_SCORED_PIECES)
        return build_profile(model, training, validation, description, max_prompt,
                             on_piece=lambda: bar.advance(task))
