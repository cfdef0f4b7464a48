"""Reading a corpus for an audit: every document that can be read, and a count of everything that cannot.

Training data preparation stops at a file it cannot use, so that nothing is silently lost; an audit is the
opposite tool, meant to be run on messy data to find out what is in it, so it never stops: unreadable, binary,
undecodable and empty files, malformed records, lines too long to be text, and sources that yield nothing are
skipped and counted by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from shoal.data.sources import BINARY_PROBE_BYTES, Document, SourceFile, iter_documents, iter_jsonl, resolve_sources
from shoal.errors import DataError

SKIP_REASONS = ("missing_or_empty_source", "unreadable", "binary", "invalid_utf8", "empty", "malformed", "huge_line",
                "huge_file")
MAX_FILE_BYTES = 64 * 2**20  # a text file is read whole: larger ones are logs or dumps, not documents


@dataclass
class ReadLog:
    documents: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> files or records
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few of the skipped paths

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(where)


def resolve_tolerantly(specs: list[str], glob: str, log: ReadLog) -> list[SourceFile]:
    files: dict = {}
    for spec in specs:
        try:
            for sf in resolve_sources([spec], glob):
                files.setdefault(sf.path, sf)
        except DataError as e:
            if "glob" in str(e):  # a bad pattern is the user's mistake for every source alike: say so
                raise
            log.skip("missing_or_empty_source", spec)
    return [files[p] for p in sorted(files)]


def _text_document(sf: SourceFile, log: ReadLog) -> Iterator[Document]:
    if sf.path.stat().st_size > MAX_FILE_BYTES:
        return log.skip("huge_file", str(sf.path))
    data = sf.path.read_bytes()
    if b"\0" in data[:BINARY_PROBE_BYTES]:
        return log.skip("binary", str(sf.path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return log.skip("invalid_utf8", str(sf.path))
    if not text.strip():
        return log.skip("empty", str(sf.path))
    yield Document(text=text, origin=str(sf.path))


def _jsonl_documents(sf: SourceFile, log: ReadLog) -> Iterator[Document]:
    """Every usable line; the others are counted one by one and passed over."""
    return iter_jsonl(sf.path, lambda number, reason: log.skip(reason, f"{sf.path}:{number}"))


def read_documents(files: list[SourceFile], log: ReadLog, max_line_chars: int = 1_000_000) -> Iterator[Document]:
    """Documents of `files` in order; what cannot be used is counted in `log` instead."""
    readers = {"text": _text_document, "jsonl": _jsonl_documents}
    for sf in files:
        documents = readers[sf.kind](sf, log) if sf.kind in readers else iter_documents([sf])
        try:
            for doc in documents:
                if len(doc.text) > max_line_chars and max(map(len, doc.text.splitlines())) > max_line_chars:
                    log.skip("huge_line", doc.origin)
                    continue
                log.documents += 1
                log.bytes += len(doc.text.encode("utf-8", "replace"))
                yield doc
        except OSError:
            log.skip("unreadable", str(sf.path))
        except DataError as e:  # a Parquet file that is not one, or has no text column
            log.skip("unreadable" if "cannot read" in str(e) else "malformed", str(sf.path))
