"""Content hashes of the input files and the dataset fingerprint that names a prepared folder."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.data.progress import PhaseProgress
from shoal.data.sources import STDLIB_SPEC, SourceFile, stdlib_dir
from shoal.errors import DataError

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    source: SourceFile
    name: str  # spec-relative, so moving the project or the interpreter prefix keeps the fingerprint
    size: int
    mtime_ns: int
    sha256: str


def input_name(sf: SourceFile) -> str:
    if sf.source == STDLIB_SPEC:
        return f"{STDLIB_SPEC}/{sf.path.relative_to(stdlib_dir()).as_posix()}"
    spec = os.path.normpath(sf.source)
    root = Path(os.path.abspath(sf.source))
    return spec if sf.path == root else f"{spec}/{sf.path.relative_to(root).as_posix()}"


def hash_inputs(files: list[SourceFile], bar: PhaseProgress) -> list[InputFile]:
    bar.phase("hashing", sum(_stat(sf.path).st_size for sf in files))
    inputs = []
    for sf in files:
        before = _stat(sf.path)
        digest = hashlib.sha256()
        with open(sf.path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                bar.advance(len(chunk))
        inputs.append(InputFile(sf, input_name(sf), before.st_size, before.st_mtime_ns, digest.hexdigest()))
    bar.done()
    return inputs


def check_unchanged(inputs: list[InputFile]) -> None:
    """The fingerprint must describe what was read: fail if any input changed after it was hashed."""
    for item in inputs:
        now = _stat(item.source.path)
        if (now.st_size, now.st_mtime_ns) != (item.size, item.mtime_ns):
            raise DataError(f"data file {item.source.path} changed while the dataset was being prepared; "
                            "run the preparation again once it is stable")


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}; check it exists and is readable") from None


def fingerprint(inputs: list[InputFile], settings: dict[str, Any]) -> str:
    """sha256 over the settings that change the output and every (name, content hash) in processing order."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for item in inputs:
        digest.update(f"\n{item.name}\0{item.sha256}".encode())
    return digest.hexdigest()


def inputs_summary(inputs: list[InputFile], list_limit: int = 64) -> dict[str, Any]:
    """Count and combined hash; the per-file list only when it keeps the manifest small."""
    combined = hashlib.sha256("".join(f"{i.name}\0{i.sha256}\n" for i in inputs).encode("utf-8")).hexdigest()
    summary: dict[str, Any] = {"count": len(inputs), "combined": combined}
    if len(inputs) <= list_limit:
        summary["files"] = {i.name: i.sha256 for i in inputs}
    return summary
