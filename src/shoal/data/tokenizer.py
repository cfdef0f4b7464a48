"""Byte-level BPE tokenizer: every string round-trips exactly, with one end-of-text token between documents."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from shoal.errors import DataError

EOT = "<|endoftext|>"


def _plain_special_tokens(tok: Tokenizer) -> Tokenizer:
    # A document that happens to contain the text "<|endoftext|>" must not grow a document boundary (and must
    # decode back to itself), so special tokens are only ever inserted by id. tokenizer.json does not store
    # this flag, which is why load_tokenizer sets it again.
    tok.encode_special_tokens = True
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train byte-level BPE on `texts` (streamed); the vocab may end up smaller on a small corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever out of vocabulary
        special_tokens=[EOT],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _plain_special_tokens(tok)


def eot_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOT)
    if token_id is None:
        raise DataError(f"tokenizer has no {EOT} token; prepare the dataset again to train a shoal tokenizer")
    return token_id


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {path} does not exist; prepare the dataset again")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a plain Exception for any parse error
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"tokenizer file {path} is corrupt ({reason}); prepare the dataset again") from None
    eot_id(tok)
    return _plain_special_tokens(tok)
