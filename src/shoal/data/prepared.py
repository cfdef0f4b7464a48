"""A prepared dataset on disk: manifest.json, tokenizer.json and token shards, checked before use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.data.governance.card import CARD_FILE
from shoal.data.shards import TokenWindows, check_shards, open_shards
from shoal.data.split import SPLITS
from shoal.errors import DataError
from shoal.io import sha256_file

FORMAT = "shoal.tokens/1"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
_REQUIRED = ("fingerprint", "documents", "tokens", "bytes", "vocab_size", "eot_id", "dtype", "shards",
             "tokenizer_sha256")


@dataclass
class PreparedData:
    folder: Path
    manifest: dict[str, Any]

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def windows(self, split: str, seq_len: int) -> TokenWindows:
        if split not in self.manifest["shards"]:
            raise DataError(f"prepared dataset {self.folder} has no '{split}' split (splits: {', '.join(SPLITS)})")
        shards = open_shards(self.folder, self.manifest["shards"][split], self.manifest["dtype"])
        return TokenWindows(shards, seq_len, split=split)

    def documents(self, split: str) -> Iterator[np.ndarray]:
        """The token ids of each document of `split`, in order: the shards cut at end-of-text tokens."""
        eot = int(self.manifest["eot_id"])
        for shard in self.manifest["shards"][split]:
            ids = np.fromfile(self.folder / shard["file"], dtype=self.manifest["dtype"])
            for part in np.split(ids, np.flatnonzero(ids == eot) + 1):
                part = part[part != eot]
                if len(part):
                    yield part


def _invalid(folder: Path, problem: str) -> DataError:
    return DataError(f"prepared dataset {folder} is incomplete or corrupt ({problem}); "
                     "delete it and prepare the dataset again")


def load_prepared(folder: str | Path) -> PreparedData:
    """Read and check a prepared folder: manifest format, tokenizer checksum, shard sizes against token counts."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"no prepared dataset at {folder} ({MANIFEST_FILE} is missing); prepare the dataset first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(folder, f"{MANIFEST_FILE} unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid(folder, f"{MANIFEST_FILE} is not format {FORMAT}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise _invalid(folder, f"{MANIFEST_FILE} lacks {', '.join(missing)}")
    try:
        for split in SPLITS:
            entries = manifest["shards"][split]
            check_shards(folder, entries, manifest["dtype"])
            if sum(int(e["tokens"]) for e in entries) != manifest["tokens"][split]:
                raise _invalid(folder, f"{split} shard sizes disagree with the token count")
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a hand-edited or foreign manifest
        raise _invalid(folder, f"{MANIFEST_FILE} has a malformed shard list ({type(e).__name__}: {e})") from None
    tokenizer = folder / TOKENIZER_FILE
    if not tokenizer.is_file() or sha256_file(tokenizer) != manifest["tokenizer_sha256"]:
        raise _invalid(folder, f"{TOKENIZER_FILE} missing or changed")
    card = folder / CARD_FILE  # the card travels into runs and bundles: it must be the one prepared
    if "card_sha256" in manifest and (not card.is_file() or sha256_file(card) != manifest["card_sha256"]):
        raise _invalid(folder, f"{CARD_FILE} missing or changed")
    return PreparedData(folder=folder, manifest=manifest)
