"""A byte-counting progress bar for the phases of data preparation, silent when disabled."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)


class PhaseProgress:
    """One bar per phase (hashing, tokenizer training, tokenizing), each counting input bytes."""

    def __init__(self, enabled: bool) -> None:
        # stderr keeps stdout clean for anything a caller wants to pipe.
        self._progress = Progress(
            TextColumn("{task.description:<22}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeElapsedColumn(), console=Console(stderr=True),
        ) if enabled else None
        self._task: TaskID | None = None

    def __enter__(self) -> PhaseProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, description: str, total_bytes: int) -> None:
        self.done()
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total_bytes)

    def rename(self, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)

    def advance(self, nbytes: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, nbytes)

    def done(self) -> None:
        """Mark the current phase complete; its byte total was an estimate (documents are decoded text)."""
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, completed=task.total)
            self._task = None
