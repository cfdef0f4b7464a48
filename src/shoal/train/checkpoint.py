"""Sharded, atomic, checksummed checkpoints with keep-last-K and fallback past corrupt ones.

Callers hand over a nested state dict and get it back filled in. Entries holding tensors (model, optimizer, RNG)
go through `torch.distributed.checkpoint` (DCP): every rank writes its own shards in parallel, and a checkpoint
loads under any other layout or number of processes, DCP resharding on the way. Entries without tensors (step,
config, data position) go to a readable `facts.json`. Rank 0 then checksums every file into `manifest.json` and
renames the folder into place, so a folder named step_N is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from shoal.errors import CheckpointError
from shoal.io import atomic_write_json, describe_files, ensure_writable_dir, find_file_problem, fsync_dir
from shoal.parallel.group import barrier, gather_to_main, is_main_process

FORMAT = "shoal.checkpoint/2"
FACTS_FILE = "facts.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def verify(path: Path) -> dict[str, Any]:
    """Check that every file in the manifest is present with its size and sha256; return the manifest."""
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"checkpoint {path} has no readable {MANIFEST_FILE} (incomplete or corrupt)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise CheckpointError(f"checkpoint {path} has a malformed {MANIFEST_FILE} (no list of files to check)")
    if manifest.get("format") == "shoal.checkpoint/1":
        raise CheckpointError(f"checkpoint {path} was written by an earlier shoal (a single state.pt file); this "
                              "version reads sharded checkpoints only: start a new run, or export it with that version")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    problem = find_file_problem(path, manifest["files"])
    if problem:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    return manifest


def read_facts(path: Path, verified: bool = False) -> dict[str, Any]:
    """The tensor-free entries of a checkpoint (step, config, ...), without loading any tensor; verifies the
    checkpoint first unless the caller just did."""
    if not verified:
        verify(path)
    return json.loads((path / FACTS_FILE).read_text())


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes one process whenever no process group exists; for shoal that is the normal case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _reason(error: Exception) -> str:
    """The innermost error line of an exception; DCP wraps each rank's error with its whole traceback."""
    lines = [line.strip() for line in str(error).splitlines()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return causes[-1] if causes else (lines[0] if lines and lines[0] else type(error).__name__)


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    return False


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entries for DCP, entries for facts.json)."""
    tensors = {k: v for k, v in state.items() if _holds_tensors(v)}
    return tensors, {k: v for k, v in state.items() if k not in tensors}


class CheckpointManager:
    def __init__(self, folder: str | Path, keep: int = 3, warn: Callable[[str], None] | None = None,
                 async_save: bool = False):
        self.folder = Path(folder)
        self.keep = keep
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.async_save = async_save
        self._pending: tuple[Future, int, dict[str, Any], Path, Path] | None = None
        # A background save runs collectives while training runs its own; a group of their own keeps the two
        # streams of collectives from interleaving (gloo also works next to NCCL for the CPU-side copies).
        self._group = dist.new_group(backend="gloo") if async_save and dist.is_initialized() else None

    def step_dirs(self) -> list[Path]:
        """Checkpoint folders, oldest first (temporary and set-aside folders are not listed)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write into a temp folder (every rank its shards), checksum, rename into place, keep the newest `keep`.

        With `async_save`, this returns once the tensors are copied aside; the files are written in the background
        and the checkpoint appears (renamed into place) at the next `save()` or `wait()`.
        """
        self.wait()
        tensors, facts = _split(state)
        final = self.folder / step_dir_name(step)
        tmp = self.folder / f".tmp-{final.name}"  # the same name on every rank: they all write into it
        if is_main_process():
            ensure_writable_dir(self.folder)
            for stale in self.folder.glob(".tmp-step_*"):  # left by a crash mid-save; never a valid checkpoint
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        barrier()
        try:
            if self.async_save:
                with _single_process_quiet():
                    future = dcp.async_save(tensors, checkpoint_id=tmp, process_group=self._group)
                self._pending = (future, step, facts, tmp, final)
                return final
            with _single_process_quiet():
                dcp.save(tensors, checkpoint_id=tmp)
        except BaseException:
            if is_main_process():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._finish(step, facts, tmp, final)
        return final

    def wait(self) -> None:
        """Finish a background save: wait for its files, then checksum and rename it into place."""
        if self._pending is None:
            return
        future, step, facts, tmp, final = self._pending
        self._pending = None
        try:
            future.result()
        except BaseException:
            if is_main_process():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._finish(step, facts, tmp, final)

    def _finish(self, step: int, facts: dict[str, Any], tmp: Path, final: Path) -> None:
        # Each rank checksums the shard files it wrote (DCP names them __<rank>_<n>.distcp), so hashing a large
        # checkpoint takes the time of one shard, not of all of them in a row on rank 0.
        rank = dist.get_rank() if dist.is_initialized() else 0
        mine = sorted(p.name for p in tmp.glob(f"__{rank}_*.distcp"))
        for name in mine:  # the shards reach the disk before the manifest that vouches for them
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        described = gather_to_main(describe_files(tmp, mine))
        if is_main_process():
            try:
                atomic_write_json(tmp / FACTS_FILE, facts)
                files = {name: info for part in described for name, info in part.items()}
                files.update(describe_files(tmp, [p.name for p in tmp.iterdir() if p.is_file() and p.name not in files]))
                manifest = {"format": FORMAT, "step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "files": dict(sorted(files.items()))}
                atomic_write_json(tmp / MANIFEST_FILE, manifest)
                fsync_dir(tmp)
                if final.exists():  # a checkpoint of this step from an earlier attempt: keep it aside
                    final.rename(self.folder / f"{final.name}.superseded-{int(time.time())}")
                tmp.rename(final)
                fsync_dir(self.folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old in self.step_dirs()[: -self.keep]:
                shutil.rmtree(old)
        barrier()  # nobody reads or writes checkpoints until this one is in place

    def latest_valid(self) -> Path | None:
        """Newest checkpoint that verifies; corrupt ones are reported and skipped, never modified."""
        dirs = self.step_dirs()
        for path in reversed(dirs):
            try:
                verify(path)
                return path
            except CheckpointError as e:
                self.warn(f"warning: {e}; falling back to an earlier checkpoint")
        if dirs:
            raise CheckpointError(f"no valid checkpoint in {self.folder} ({len(dirs)} corrupt); "
                                  "start a new run with --resume none and another run name")
        return None

    def load(self, path: str | Path, like: dict[str, Any], verified: bool = False) -> dict[str, Any]:
        """The state saved in `path`, shaped like `like` (the caller's current state, sharded as it wants).

        Tensors are loaded into `like`'s tensors in place (DCP reshards them to this layout); the other entries come
        from facts.json. Every entry of `like` must be in the checkpoint. `verified`: the caller has checked the
        checksums already (rank 0, for all ranks), so they are not read again.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        facts = read_facts(path, verified)
        tensors, wanted_facts = _split(like)
        missing = sorted(k for k in wanted_facts if k not in facts)
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it was not written by this trainer")
        try:
            with _single_process_quiet():
                dcp.load(tensors, checkpoint_id=path)
        except (Exception, CheckpointException) as e:  # files that verify but do not fit: another model, ...
            raise CheckpointError(f"checkpoint {path} does not fit this model: {_reason(e)}") from None
        return {**tensors, **{k: facts[k] for k in wanted_facts}}

    def set_aside_after(self, step: int) -> list[Path]:
        """Rename checkpoints newer than `step` to step_X.superseded-T before training on from `step`.

        A run resumed from an older checkpoint writes a new future; the old one is kept for inspection, and
        keep-last-K (which sorts by step) would otherwise delete the new checkpoints as soon as they are written.
        """
        moved = []
        if not is_main_process():
            barrier()
            return moved
        for path in self.step_dirs():
            if int(_STEP_DIR.match(path.name).group(1)) > step:
                target = path.with_name(f"{path.name}.superseded-{int(time.time())}")
                path.rename(target)
                moved.append(target)
        barrier()
        return moved
