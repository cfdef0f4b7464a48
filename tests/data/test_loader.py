from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.data.loader import DataLoader, validation_batches
from shoal.data.shards import TokenWindows
from shoal.errors import DataError

SEQ = 4


def _windows(n: int) -> TokenWindows:
    """n windows; window k is [4k, 4k+1, ..., 4k+4], so a row's first token tells which window it is."""
    return TokenWindows([np.arange(n * SEQ + 1, dtype=np.uint16)], seq_len=SEQ)


def _ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] // SEQ).tolist()


def test_batches_follow_the_documented_formula() -> None:
    loader = DataLoader(_windows(10), global_batch=4, seed=3)
    for step in range(6):
        expected = []
        for s in range(step * 4, step * 4 + 4):
            expected.append(int(np.random.default_rng([3, s // 10]).permutation(10)[s % 10]))
        assert _ids(loader.batch(step)) == expected
    assert loader.batch(0).shape == (4, SEQ + 1) and loader.batch(0).dtype == torch.int64


def test_pure_function_of_seed_and_step() -> None:
    windows = _windows(50)
    a, b = DataLoader(windows, 8, seed=1), DataLoader(windows, 8, seed=1)
    steps = [5, 0, 17, 5, 3]  # any order, repeated: no hidden state
    assert all(torch.equal(a.batch(s), b.batch(s)) for s in steps)
    fresh = [DataLoader(windows, 8, seed=1).batch(s) for s in steps]
    assert all(torch.equal(x, a.batch(s)) for x, s in zip(fresh, steps, strict=True))
    assert not torch.equal(DataLoader(windows, 8, seed=2).batch(0), a.batch(0))


def test_each_epoch_visits_every_window_once() -> None:
    loader = DataLoader(_windows(10), global_batch=4, seed=0)
    seen = [i for step in range(5) for i in _ids(loader.batch(step))]  # 20 samples = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # each epoch has its own order
    # Step 2 straddles the boundary: samples 8, 9 from epoch 0, then 10, 11 from epoch 1.
    assert _ids(loader.batch(2)) == seen[8:12]


def test_batch_larger_than_split_wraps_several_epochs() -> None:
    loader = DataLoader(_windows(3), global_batch=8, seed=5)
    ids = _ids(loader.batch(1))  # samples 8..15: epochs 2 to 5
    perms = [np.random.default_rng([5, e]).permutation(3) for e in range(6)]
    assert ids == [int(perms[s // 3][s % 3]) for s in range(8, 16)]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_partition_the_global_batch(world_size: int) -> None:
    windows = _windows(37)
    single = DataLoader(windows, 8, seed=11)
    for step in (0, 4, 9):
        parts = [DataLoader(windows, 8, seed=11, rank=r, world_size=world_size).batch(step) for r in range(world_size)]
        assert all(p.shape == (8 // world_size, SEQ + 1) for p in parts)
        assert torch.equal(torch.cat(parts), single.batch(step))


def test_invalid_layouts() -> None:
    with pytest.raises(DataError, match="does not split evenly over 3 ranks"):
        DataLoader(_windows(10), 8, seed=0, world_size=3)
    with pytest.raises(DataError, match="invalid data parallel layout"):
        DataLoader(_windows(10), 8, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="seed must be >= 0"):
        DataLoader(_windows(10), 8, seed=-1)


def test_state_round_trip_and_mismatch() -> None:
    loader = DataLoader(_windows(10), 4, seed=9)
    state = loader.state_dict(step=12)
    assert state == {"seed": 9, "global_batch": 4, "num_windows": 10, "seq_len": SEQ, "step": 12}
    DataLoader(_windows(10), 4, seed=9, rank=1, world_size=2).check_state(state)  # other layout, same stream
    for other, changed in [(DataLoader(_windows(10), 8, seed=9), "global_batch changed from 4"),
                           (DataLoader(_windows(11), 4, seed=9), "num_windows changed from 10"),
                           (DataLoader(_windows(10), 4, seed=1), "seed changed from 9")]:
        with pytest.raises(DataError, match=f"would not continue exactly: {changed}"):
            other.check_state(state)
    with pytest.raises(DataError, match="lacks 'seq_len'"):
        loader.check_state({k: v for k, v in state.items() if k != "seq_len"})


def test_validation_batches_are_fixed_and_spread() -> None:
    windows = _windows(100)
    batches = validation_batches(windows, batch_size=4, n_batches=5)
    assert len(batches) == 5 and all(b.shape == (4, SEQ + 1) for b in batches)
    ids = [i for b in batches for i in _ids(b)]
    assert ids == [k * 5 for k in range(20)]  # 20 of 100 windows, evenly spaced
    assert all(torch.equal(x, y) for x, y in zip(batches, validation_batches(windows, 4, 5), strict=True))
    assert len(validation_batches(_windows(10), 4, 5)) == 2  # small split: only full batches
    short = validation_batches(_windows(3), 4, 5)
    assert len(short) == 1 and _ids(short[0]) == [0, 1, 2]
    assert validation_batches(windows, 4, 0) == []
