"""Find the input files of a dataset and stream their documents, with bounded memory."""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shoal.data.walk import walk_files
from shoal.errors import DataError

STDLIB_SPEC = "stdlib"
# Test packages of the standard library stay out of training data: they are the held-out set for
# contamination checks later, and much of them is generated or deliberately odd code.
STDLIB_EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
BINARY_PROBE_BYTES = 8192
PARQUET_BATCH_ROWS = 1024


def stdlib_dir() -> Path:
    """The running interpreter's standard library; inside a venv this is the base interpreter's."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class SourceFile:
    path: Path
    kind: str  # "text" | "jsonl" | "parquet"
    source: str  # the spec it came from


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # "path", "path:line" (1-based) or "path:row" (0-based)


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":  # a plain .json file is one document, not one per line
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    return "text"


def _stdlib_skip(name: str) -> bool:
    # Judged per name below the stdlib root: the root itself may well sit under a folder named "test".
    return name in STDLIB_EXCLUDED_PARTS or name.startswith(".")


def _folder_skip(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _stdlib_files() -> list[Path]:
    return walk_files(stdlib_dir(), "**/*.py", _stdlib_skip)


def _folder_files(folder: Path, glob: str) -> list[Path]:
    try:
        return walk_files(folder, glob, _folder_skip)
    except ValueError:
        raise DataError(f"data.glob '{glob}' is not a relative glob pattern; use something like '**/*.txt'") from None


def resolve_sources(specs: list[str], glob: str = "**/*", key: str = "data.sources") -> list[SourceFile]:
    """Expand specs ("stdlib", a folder, a file) into a sorted, deduplicated list of input files."""
    if not specs:
        raise DataError(f"no data sources given; set {key} to folders, files or \"stdlib\"")
    found: dict[Path, SourceFile] = {}
    for spec in specs:
        if spec == STDLIB_SPEC:
            paths = _stdlib_files()
            if not paths:
                raise DataError(f"no Python files found in the standard library at {stdlib_dir()}; use a folder source")
        else:
            # abspath, not resolve(): keep the user's links so names stay stable, but fold "." and "..".
            root = Path(os.path.abspath(spec))
            if not root.exists():
                raise DataError(f"data source '{spec}' does not exist; fix the path in {key}")
            if root.is_dir():
                paths = _folder_files(root, glob)
                if not paths:
                    raise DataError(f"data source '{spec}' has no files matching '{glob}'; add files or change data.glob")
            elif root.is_file():
                paths = [root]
            else:
                raise DataError(f"data source '{spec}' is neither a regular file nor a folder; point {key} at one")
        for path in paths:
            # The first spec that names a file keeps it, so the result does not depend on duplicates.
            found.setdefault(path, SourceFile(path=path, kind=kind_of(path), source=spec))
    return [found[p] for p in sorted(found)]


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(BINARY_PROBE_BYTES)


def _clean(text: str) -> str:
    """JSON escapes can produce lone surrogates, which cannot be UTF-8 encoded or tokenized: replace them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _iter_text(path: Path) -> Iterator[Document]:
    if _looks_binary(path):
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield Document(text=text, origin=str(path))


def iter_jsonl(path: Path, on_bad_line: Callable[[int, str], None] | None = None) -> Iterator[Document]:
    """One document per line with a string "text" field. A line without one raises DataError, unless
    `on_bad_line(line_number, reason)` is given (reason "malformed" or "empty"), which is told and reading goes on."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                if on_bad_line is None:
                    raise DataError(f"{path}:{number} is not a JSON object with a string 'text' field; "
                                    "fix that line (JSONL sources hold one such object per line)")
                on_bad_line(number, "malformed")
            elif text.strip():
                yield Document(text=_clean(text), origin=f"{path}:{number}")
            elif on_bad_line is not None:
                on_bad_line(number, "empty")


def _iter_parquet(path: Path) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable Parquet file ({e}); fix or remove it") from None
    schema = parquet.schema_arrow
    if "text" not in schema.names:
        raise DataError(f"{path} has no 'text' column (columns: {', '.join(schema.names)}); "
                        "rename the column holding the documents to 'text'")
    text_type = schema.field("text").type
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # newer pyarrow only
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or is_string_view(text_type)):
        raise DataError(f"{path} column 'text' has type {text_type}, not string; store the documents as strings")
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text is not None and text.strip():  # nulls count as empty documents
                yield Document(text=text, origin=f"{path}:{row}")
            row += 1


_READERS = {"text": _iter_text, "jsonl": iter_jsonl, "parquet": _iter_parquet}


def iter_documents(files: list[SourceFile]) -> Iterator[Document]:
    """Stream documents file by file: text files whole, JSONL per line, Parquet per row batch."""
    for sf in files:
        try:
            yield from _READERS[sf.kind](sf.path)
        except OSError as e:
            raise DataError(f"cannot read data file {sf.path}: {e.strerror or e}; check it exists and is readable") from None
