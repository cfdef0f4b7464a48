"""Per-document work on all cores, in corpus order: the audit and prepare's filters both stream documents through
a pool of worker processes and fold the results in the main process, so what they decide does not depend on the
number of workers."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from shoal.data.sources import Document

R = TypeVar("R")
BATCH = 256  # documents in flight: bounds memory whatever the corpus size


def default_workers() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def analyzed(docs: Iterable[Document], fn: Callable[[str], R], workers: int) -> Iterator[tuple[Document, R]]:
    """(document, fn(document text)) for every document, in order. `fn` must be picklable (a module-level
    function, or a functools.partial of one)."""
    if workers <= 1:
        for doc in docs:
            yield doc, fn(doc.text)
        return
    # spawn, not fork: the caller may hold threads (tokenizers, torch) that a forked child would inherit broken.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) == BATCH:
                yield from zip(batch, pool.imap(fn, [d.text for d in batch], chunksize=8))
                batch = []
        yield from zip(batch, pool.imap(fn, [d.text for d in batch], chunksize=8))
