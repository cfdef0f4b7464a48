from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.data.shards import ShardWriter, TokenWindows, open_shards, token_dtype
from shoal.errors import DataError
from shoal.io import sha256_file


def test_dtype_choice() -> None:
    assert token_dtype(8192) == token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"


def test_writer_rolls_over_and_checksums(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "train", "uint16", shard_tokens=10)
    tokens = np.arange(25, dtype=np.int64) * 1000  # up to 24000: needs two bytes
    for chunk in (tokens[:7], tokens[7:17], tokens[17:], tokens[:0]):
        writer.write(chunk)
    entries = writer.close()
    assert [(e["file"], e["tokens"]) for e in entries] == [
        ("train_00000.bin", 10), ("train_00001.bin", 10), ("train_00002.bin", 5)]
    for entry in entries:
        assert entry["sha256"] == sha256_file(tmp_path / entry["file"])
    # Raw little-endian uint16: readable by anything, not just numpy.
    assert (tmp_path / "train_00000.bin").read_bytes()[:4] == (0).to_bytes(2, "little") + (1000).to_bytes(2, "little")
    shards = open_shards(tmp_path, entries, "uint16")
    assert np.array_equal(np.concatenate(shards), tokens)
    with pytest.raises(ValueError):
        shards[0][0] = 1  # mapped read-only


def test_uint32_and_range_check(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "val", "uint32", shard_tokens=100)
    writer.write(np.array([0, 70000, 2**32 - 1]))
    entries = writer.close()
    assert (tmp_path / "val_00000.bin").stat().st_size == 12
    assert open_shards(tmp_path, entries, "uint32")[0].tolist() == [0, 70000, 2**32 - 1]
    with pytest.raises(ValueError, match="outside the range"):
        ShardWriter(tmp_path, "x", "uint16", 10).write(np.array([70000]))


def test_open_shards_detects_missing_and_truncated(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "train", "uint16", shard_tokens=10)
    writer.write(np.arange(20))
    entries = writer.close()
    path = tmp_path / "train_00001.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="train_00001.bin has 19 bytes, expected 20"):
        open_shards(tmp_path, entries, "uint16")
    path.unlink()
    with pytest.raises(DataError, match="train_00001.bin is missing"):
        open_shards(tmp_path, entries, "uint16")


def test_windows_exact_contents() -> None:
    shards = [np.arange(10, dtype=np.uint16), np.arange(100, 107, dtype=np.uint16), np.arange(3, dtype=np.uint16)]
    windows = TokenWindows(shards, seq_len=3)
    # Shard 0 (10 tokens): (10 - 1) // 3 = 3 windows; shard 1 (7): 2; shard 2 (3): none, too short.
    assert len(windows) == 5
    expected = [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [100, 101, 102, 103], [103, 104, 105, 106]]
    assert [windows[i].tolist() for i in range(5)] == expected
    assert windows[-1].tolist() == expected[-1] and windows[0].dtype == np.int64
    batch = windows.gather([4, 0, 4])
    assert batch.dtype == torch.int64 and batch.tolist() == [expected[4], expected[0], expected[4]]
    assert windows.gather(np.array([], dtype=np.int64)).shape == (0, 4)
    with pytest.raises(IndexError):
        windows[5]


def test_windows_exact_fit_and_too_short() -> None:
    assert len(TokenWindows([np.arange(9)], seq_len=4)) == 2  # 9 = 2 * 4 + 1: the last token is used as a target
    assert len(TokenWindows([np.arange(8)], seq_len=4)) == 1
    with pytest.raises(DataError, match=r"val split has fewer than seq_len\+1 = 9 tokens .*8 tokens in total"):
        TokenWindows([np.arange(5), np.arange(3)], seq_len=8, split="val")
