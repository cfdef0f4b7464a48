"""Train/validation assignment by a hash of each document's text.

The hash depends on the text alone, so a document keeps its split whatever the file order or the other documents,
and exact duplicates always land on the same side (no leakage of a copy into validation).
"""

from __future__ import annotations

import hashlib

TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)


def split_of(text: str, val_fraction: float) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return VAL if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else TRAIN
