"""Token shards: raw little-endian integer files, read back with numpy.memmap, cut into training windows."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from shoal.errors import DataError

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> str:
    """The smallest dtype that holds every token id: uint16 halves disk and page cache for vocabs up to 65536."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype not in _DTYPES:
        raise DataError(f"unknown token dtype '{dtype}' (expected uint16 or uint32); prepare the dataset again")
    return _DTYPES[dtype]


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


class ShardWriter:
    """Stream token arrays into `{split}_{i:05d}.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, folder: str | Path, split: str, dtype: str, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.folder = Path(folder)
        self.split = split
        self.dtype = numpy_dtype(dtype)
        self.shard_tokens = shard_tokens
        self._entries: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._count = 0  # tokens in the open shard

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids outside the range of {self.dtype.name}")
        data = tokens.astype(self.dtype, copy=False).ravel()
        while data.size:
            if self._file is None:
                self._file = open(self.folder / shard_name(self.split, len(self._entries)), "wb")
            take = min(self.shard_tokens - self._count, data.size)
            chunk = data[:take].tobytes()
            self._file.write(chunk)
            self._digest.update(chunk)
            self._count += take
            data = data[take:]
            if self._count == self.shard_tokens:
                self._finish_shard()

    def _finish_shard(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())  # the folder is renamed into place later: its contents must be on disk
        self._file.close()
        self._entries.append({"file": Path(self._file.name).name, "tokens": self._count,
                              "sha256": self._digest.hexdigest()})
        self._file, self._digest, self._count = None, hashlib.sha256(), 0

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; returns [{"file", "tokens", "sha256"}] per shard, in order."""
        if self._file is not None:
            self._finish_shard()
        return list(self._entries)


def check_shards(folder: str | Path, shard_entries: list[dict[str, Any]], dtype: str) -> None:
    """Raise DataError unless every shard exists with exactly tokens * itemsize bytes (cheap: no hashing)."""
    itemsize = numpy_dtype(dtype).itemsize
    for entry in shard_entries:
        path = Path(folder) / entry["file"]
        expected = int(entry["tokens"]) * itemsize
        try:
            size = path.stat().st_size
        except OSError:
            raise DataError(f"token shard {path} is missing; delete {folder} and prepare the dataset again") from None
        if size != expected:
            raise DataError(f"token shard {path} has {size} bytes, expected {expected} (truncated or changed); "
                            f"delete {folder} and prepare the dataset again")


def open_shards(folder: str | Path, shard_entries: list[dict[str, Any]], dtype: str) -> list[np.memmap]:
    """Map each shard read-only after checking that its size matches the manifest."""
    check_shards(folder, shard_entries, dtype)
    np_dtype = numpy_dtype(dtype)
    shards = []
    for entry in shard_entries:
        if int(entry["tokens"]) == 0:  # mmap cannot map an empty file
            shards.append(np.zeros(0, dtype=np_dtype))
        else:
            shards.append(np.memmap(Path(folder) / entry["file"], dtype=np_dtype, mode="r"))
    return shards


class TokenWindows:
    """Non-overlapping windows of seq_len + 1 tokens (input plus shifted target), never crossing a shard.

    Window i of a shard covers tokens [i * seq_len, i * seq_len + seq_len + 1): neighbours share one token, so
    every token is a prediction target exactly once.
    """

    def __init__(self, shards: Sequence[np.ndarray], seq_len: int, split: str = "data") -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.shards = list(shards)
        self.seq_len = seq_len
        counts = np.array([max(0, (len(s) - 1) // seq_len) for s in self.shards], dtype=np.int64)
        # starts[k] is the global index of shard k's first window; starts[-1] is the total.
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self._starts[-1] == 0:
            total = sum(len(s) for s in self.shards)
            raise DataError(f"the {split} split has fewer than seq_len+1 = {seq_len + 1} tokens in a shard "
                            f"({total} tokens in total); lower train.seq_len or add more data")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        index %= n
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        start = (index - int(self._starts[shard])) * self.seq_len
        return np.asarray(self.shards[shard][start:start + self.seq_len + 1], dtype=np.int64)

    def gather(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Stack windows into a LongTensor [len(indices), seq_len + 1]."""
        out = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            out[row] = self[int(index)]
        return torch.from_numpy(out)
