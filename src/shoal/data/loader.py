"""Batches as a pure function of (seed, step, global batch): resuming, or changing the number of ranks, replays
exactly the same token stream."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shoal.data.shards import TokenWindows
from shoal.errors import DataError

_CACHED_PERMUTATIONS = 4  # a batch spans at most a few epochs unless the split is tiny


class DataLoader:
    """Sample s = step * global_batch + i reads window perm(s // N)[s % N]; rank r takes a contiguous slice."""

    def __init__(self, windows: TokenWindows, global_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"invalid data parallel layout: global_batch={global_batch}, rank={rank}, "
                            f"world_size={world_size}; use a positive batch and 0 <= rank < world_size")
        if global_batch % world_size:
            raise DataError(f"global batch {global_batch} does not split evenly over {world_size} ranks; "
                            "choose a global batch that is a multiple of the number of data parallel ranks")
        if seed < 0:
            raise DataError(f"data seed must be >= 0, got {seed}; set train.seed to a non-negative integer")
        self.windows = windows
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.local_batch = global_batch // world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
            if len(self._perms) >= _CACHED_PERMUTATIONS:
                self._perms.pop(min(self._perms))  # steps move forward, so the oldest epoch is the least useful
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int) -> np.ndarray:
        """Window indices of this rank's share of batch `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = len(self.windows)
        first = step * self.global_batch + self.rank * self.local_batch
        samples = np.arange(first, first + self.local_batch, dtype=np.int64)
        epochs, positions = samples // n, samples % n
        out = np.empty_like(samples)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._perm(int(epoch))[positions[mask]]
        return out

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor [global_batch // world_size, seq_len + 1] for this rank."""
        return self.windows.gather(self.indices(step))

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"seed": self.seed, "global_batch": self.global_batch, "num_windows": len(self.windows),
                "seq_len": self.windows.seq_len, "step": step}

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise DataError unless `state` continues exactly this loader's stream."""
        current = self.state_dict(0)
        for key in ("seed", "global_batch", "num_windows", "seq_len"):
            if key not in state:
                raise DataError(f"saved data loader state lacks '{key}'; the data stream would not continue "
                                "exactly, so start a fresh run")
            if state[key] != current[key]:
                raise DataError(f"the data stream would not continue exactly: {key} changed from {state[key]} "
                                f"(saved) to {current[key]} (now); restore the old setting or data, or start a fresh run")


def validation_batches(windows: TokenWindows, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """A fixed set of windows spread evenly over the split, identical on every call.

    Uses min(n_batches, len // batch_size) full batches; a split smaller than one batch gives a single short one.
    """
    if batch_size < 1 or n_batches < 0:
        raise ValueError(f"batch_size must be positive and n_batches >= 0, got {batch_size}, {n_batches}")
    n = len(windows)
    count = min(n_batches, n // batch_size) * batch_size
    if count == 0 and n_batches > 0:
        count = n
    indices = (np.arange(count, dtype=np.int64) * n) // count if count else np.zeros(0, dtype=np.int64)
    return [windows.gather(indices[i:i + batch_size]) for i in range(0, count, batch_size)]
