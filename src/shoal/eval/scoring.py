"""Run a model over evaluation documents and keep what the report needs: per document, the loss, token and byte
counts and top-1 / top-5 hits (for paired comparisons and bootstrap intervals); per predicted token, the
confidence and whether it was right (for calibration); and the Brier score.

Each document is scored on its own: the end-of-text token first (the context every document starts from in
training, where documents are joined by it), then the document's tokens and a closing end-of-text, so every byte
of the text is predicted and bits per byte cover it all. Documents longer than the model's context are cut into
consecutive windows of max_seq_len predictions, each starting from a fresh context, as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from shoal.data.tokenizer import eot_id
from shoal.errors import ShoalError
from shoal.eval.metrics import bits_per_byte
from shoal.models.transformer import Transformer


@dataclass
class Scores:
    names: list[str] = field(default_factory=list)
    nats: list[float] = field(default_factory=list)  # per document: summed next-token loss
    tokens: list[int] = field(default_factory=list)  # per document: predicted tokens
    bytes: list[int] = field(default_factory=list)  # per document: UTF-8 bytes of its text
    top1: list[int] = field(default_factory=list)  # per document: predictions whose most likely token was right
    top5: list[int] = field(default_factory=list)
    confidence: list[np.ndarray] = field(default_factory=list)  # per token: probability of the most likely token
    correct: list[np.ndarray] = field(default_factory=list)  # per token: was it the right one
    correct5: list[np.ndarray] = field(default_factory=list)  # per token: was the right one among the top five
    brier: list[float] = field(default_factory=list)  # per document: sum over tokens of sum_k (p_k - [k = target])^2

    def array(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, name), dtype=np.float64)

    def bits_per_byte(self) -> float:
        """Over all the documents together."""
        return bits_per_byte(sum(self.nats), sum(self.bytes))


@torch.no_grad()
def score_documents(model: Transformer, tokenizer: Tokenizer, documents: Iterable[tuple[str, str]],
                    batch_windows: int = 8, on_bytes: Callable[[int], None] | None = None) -> Scores:
    """Score (name, text) documents; the model runs in eval mode on its own device and dtype. `on_bytes` hears the
    size of each document scored (for a progress bar)."""
    model.eval()
    device = model.tok_embeddings.weight.device
    eot, window = eot_id(tokenizer), model.config.max_seq_len
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ShoalError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model only "
                         f"{model.config.vocab_size}: they were not trained together")
    scores = Scores()
    for name, text in documents:
        ids = [eot, *tokenizer.encode(text, add_special_tokens=False).ids, eot]
        stats = _score_sequence(model, torch.tensor(ids, device=device), window, batch_windows)
        scores.names.append(name)
        scores.bytes.append(len(text.encode("utf-8")))
        if on_bytes is not None:
            on_bytes(scores.bytes[-1])
        for key, value in stats.items():
            getattr(scores, key).append(value)
    if not scores.names:
        raise ShoalError("the evaluation set has no documents; point --data at text")
    return scores


def _score_sequence(model: Transformer, ids: torch.Tensor, window: int, batch_windows: int) -> dict:
    inputs, targets = ids[:-1], ids[1:]
    starts = range(0, len(targets), window)
    nats, top1, top5, brier = 0.0, 0, 0, 0.0
    confidence, correct, correct5 = [], [], []
    # Full windows run in batches; the last, shorter window of a document runs alone.
    full = [s for s in starts if s + window <= len(targets)]
    groups = [full[i:i + batch_windows] for i in range(0, len(full), batch_windows)]
    groups += [[s] for s in starts if s + window > len(targets)]
    for group in groups:
        x = torch.stack([inputs[s:s + window] for s in group])
        y = torch.stack([targets[s:s + window] for s in group])
        logits = model(x).float().flatten(0, 1)
        y = y.flatten()
        # Everything from the logits and two log-sum-exps, without materialising the probabilities:
        # log p_k = z_k - lse(z), and sum_k p_k^2 = exp(lse(2z) - 2 lse(z)).
        lse = logits.logsumexp(dim=-1)
        target_log_prob = logits.gather(1, y[:, None]).squeeze(1) - lse
        nats -= float(target_log_prob.sum())
        best = logits.topk(5, dim=-1)
        hit1 = best.indices[:, 0] == y
        hit5 = (best.indices == y[:, None]).any(dim=-1)
        top1 += int(hit1.sum())
        top5 += int(hit5.sum())
        sum_sq = torch.exp((2 * logits).logsumexp(dim=-1) - 2 * lse)
        brier += float((sum_sq - 2 * target_log_prob.exp() + 1).sum())
        confidence.append((best.values[:, 0] - lse).exp().cpu().numpy())
        correct.append(hit1.cpu().numpy())
        correct5.append(hit5.cpu().numpy())
    return {"nats": nats, "tokens": len(targets), "top1": top1, "top5": top5, "brier": brier,
            "confidence": np.concatenate(confidence), "correct": np.concatenate(correct),
            "correct5": np.concatenate(correct5)}
