"""Walk a folder for files matching a pathlib-style glob, pruning folders that are never data.

pathlib's own glob would descend into .git, .venv and __pycache__ before we could filter them out; on a project
folder that is most of the work, so the walk prunes them and the pattern is matched per path segment instead.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """pathlib semantics: "**" spans zero or more folders; "*", "?" and "[...]" stay within one name."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def split_pattern(pattern: str) -> tuple[str, ...]:
    """Validate and split a relative glob; ValueError for empty or absolute patterns."""
    if not pattern or pattern.startswith("/"):
        raise ValueError(f"glob pattern must be relative and non-empty, got {pattern!r}")
    return tuple(p for p in pattern.split("/") if p not in ("", "."))


def walk_files(root: Path, pattern: str, skip: Callable[[str], bool]) -> list[Path]:
    """Regular files (or links to them) under `root` whose relative path matches `pattern`.

    Folders and files whose name satisfies `skip` are left out, and skipped folders are never entered.
    Linked folders are not followed, so a link cycle cannot loop the walk.
    """
    segments = split_pattern(pattern)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not skip(d)]
        rel = Path(folder).relative_to(root).parts
        for name in files:
            path = Path(folder, name)
            if not skip(name) and _matches((*rel, name), segments) and path.is_file():
                found.append(path)
    return found
