"""Atomic, checksummed checkpoints with keep-last-K and fallback past corrupt ones.

Callers hand over a nested state dict (model, optimizer, loader, RNG, config) and get it
back filled in. Only this file knows how the dict is stored, so the storage can move to
`torch.distributed.checkpoint` (every rank writing its shard) without changing callers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shoal.errors import CheckpointError
from shoal.io import atomic_write_json, describe_files, ensure_writable_dir, find_file_problem, fsync_dir

FORMAT = "shoal.checkpoint/1"
STATE_FILE = "state.pt"
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
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    problem = find_file_problem(path, manifest["files"])
    if problem:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    return manifest


class CheckpointManager:
    def __init__(self, folder: str | Path, keep: int = 3, warn: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.keep = keep
        self.warn = warn or (lambda message: print(message, file=sys.stderr))

    def step_dirs(self) -> list[Path]:
        """Checkpoint folders, oldest first (temporary and set-aside folders are not listed)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write into a temp folder, fsync, rename into place, then drop all but the newest `keep`."""
        ensure_writable_dir(self.folder)
        for stale in self.folder.glob(".tmp-step_*"):  # left by a crash mid-save; never a valid checkpoint
            shutil.rmtree(stale, ignore_errors=True)
        final = self.folder / step_dir_name(step)
        tmp = self.folder / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir()
        try:
            state_path = tmp / STATE_FILE
            with open(state_path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            manifest = {"format": FORMAT, "step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "files": describe_files(tmp, [STATE_FILE])}
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
        return final

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

    def load(self, path: str | Path, like: dict[str, Any]) -> dict[str, Any]:
        """The state saved in `path`, with the same top-level entries as `like` (the caller's current state).

        `like` is what a sharded backend loads into in place; here it checks that nothing the caller needs is missing.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        verify(path)
        try:
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # a file that verifies but does not unpickle was written by something else
            raise CheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
        missing = sorted(set(like) - set(state)) if isinstance(state, dict) else sorted(like)
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it was not written by this trainer")
        return state

    def set_aside_after(self, step: int) -> list[Path]:
        """Rename checkpoints newer than `step` to step_X.superseded-T before training on from `step`.

        A run resumed from an older checkpoint writes a new future; the old one is kept for inspection, and
        keep-last-K (which sorts by step) would otherwise delete the new checkpoints as soon as they are written.
        """
        moved = []
        for path in self.step_dirs():
            if int(_STEP_DIR.match(path.name).group(1)) > step:
                target = path.with_name(f"{path.name}.superseded-{int(time.time())}")
                path.rename(target)
                moved.append(target)
        return moved
