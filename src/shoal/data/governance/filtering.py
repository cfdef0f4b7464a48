"""The fixes `shoal data prepare` applies before tokenizing: one document per duplicate cluster, personal data and
secrets replaced by typed markers, and the overlap between training and evaluation text removed.

Extra reading passes (one, three with decontamination) decide which documents stay, before the tokenizer sees
any text:

1. every document: near-duplicate detection (the first of each cluster, in corpus order, is kept), the split it
   belongs to, personal-data counts and stated licenses, and the 13-grams of the kept training and evaluation
   documents (the validation split, plus `data.eval_sources`);
2. the kept validation documents: one made for the most part of training text (at least `contamination_threshold`
   of its 13-grams occur in the training documents) leaves the validation split, so that the validation loss
   measures generalisation, not recall; the others and the evaluation sources make the evaluation index;
3. the kept training documents: one made for the most part of evaluation text leaves training.

Validation goes first so that a pair of overlapping documents costs one of them, not both.

Memory holds decisions, never the text: a MinHash signature per kept document, the origins of dropped documents,
the personal-data findings to redact, and 8 bytes per distinct n-gram of the training and evaluation text (the
same order of size as the text itself, as in the audit).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.config import DataConfig
from shoal.data.governance.contamination import NgramIndex
from shoal.data.governance.dedup import NEAR_DUPLICATE_THRESHOLD, Deduplicator, content_hash, signature
from shoal.data.governance.licenses import SourceLicenses, license_files, parse_declared_licenses, source_key
from shoal.data.governance.pii import MARKERS, Finding, find_personal_data, redact
from shoal.data.governance.workers import analyzed, default_workers
from shoal.data.inputs import input_name
from shoal.data.progress import PhaseProgress
from shoal.data.sources import STDLIB_SPEC, Document, SourceFile, iter_documents
from shoal.data.split import TRAIN, VAL, split_of

EXAMPLES = 10  # documents named per filter in the manifest and the card
PARALLEL_BYTES = 4 << 20
@dataclass
class FilterResult:
    """What the filters found and removed, for the manifest and the dataset card."""
    settings: dict[str, Any]
    dropped: dict[str, str] = field(default_factory=dict)  # origin -> reason
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first origins
    removed_bytes: Counter = field(default_factory=Counter)  # reason -> UTF-8 bytes
    removed_by_split: Counter = field(default_factory=Counter)  # split -> documents
    personal_data: Counter = field(default_factory=Counter)  # kind -> findings in kept documents
    documents_with_personal_data: int = 0
    eval_documents: int = 0
    eval_contaminated: int = 0  # external evaluation documents sharing >= threshold with the training split
    licenses: list[dict[str, Any]] = field(default_factory=list)

    def drop(self, doc: Document, reason: str, name: str, split: str) -> None:
        self.dropped[doc.origin] = reason
        self.removed_by_split[split] += 1
        self.removed_bytes[reason] += len(doc.text.encode("utf-8"))
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(name)

    def summary(self) -> dict[str, Any]:
        removed = Counter(self.dropped.values())
        return {"settings": self.settings,
                "removed": {reason: {"documents": removed[reason], "bytes": self.removed_bytes[reason],
                                     "examples": self.examples.get(reason, [])} for reason in REASONS},
                "personal_data": {"documents": self.documents_with_personal_data,
                                  "redacted" if self.settings["redact_pii"] else "found":
                                  {kind: self.personal_data.get(kind, 0) for kind in MARKERS}},
                "eval_sources": {"documents": self.eval_documents, "contaminated": self.eval_contaminated},
                "licenses": self.licenses}


DUPLICATE, EVAL_TEXT, TRAIN_TEXT = "duplicates", "training documents made of evaluation text", \
    "validation documents made of training text"
REASONS = (DUPLICATE, EVAL_TEXT, TRAIN_TEXT)


class DocumentFilter:
    """Decides which documents prepare keeps (`plan`), then gives the text to tokenize for each (`text`)."""

    def __init__(self, cfg: DataConfig, files: list[SourceFile], eval_files: list[SourceFile]) -> None:
        self.cfg, self.files, self.eval_files = cfg, files, eval_files
        self.result = FilterResult(settings={
            "dedup": cfg.dedup, "redact_pii": cfg.redact_pii, "decontaminate": cfg.decontaminate,
            "eval_sources": list(cfg.eval_sources) if cfg.decontaminate else [], "ngram": cfg.contamination_ngram,
            "contamination_threshold": cfg.contamination_threshold,
            "near_duplicate_threshold": NEAR_DUPLICATE_THRESHOLD})
        self.declared = parse_declared_licenses(cfg.licenses, cfg.sources)
        self._source_of = {str(sf.path): sf for sf in files}
        self._findings: dict[str, list[Finding]] = {}  # origin -> personal data to redact

    def _file(self, doc: Document) -> SourceFile:
        """The file a document came from (a JSONL or Parquet document's origin adds ":line" or ":row")."""
        return self._source_of.get(doc.origin) or self._source_of[doc.origin.rsplit(":", 1)[0]]

    def _name(self, doc: Document) -> str:
        """The document's origin relative to its source ("stdlib/json/decoder.py"), for the manifest and card."""
        sf = self._file(doc)
        return input_name(sf) + doc.origin[len(str(sf.path)):]

    def plan(self, bar: PhaseProgress, total_bytes: int) -> FilterResult:
        cfg, result = self.cfg, self.result
        dedup = Deduplicator() if cfg.dedup else None
        train_index, eval_index = NgramIndex(cfg.contamination_ngram), NgramIndex(cfg.contamination_ngram)
        licenses = {spec: SourceLicenses(spec, self.declared.get(source_key(spec))) for spec in dict.fromkeys(cfg.sources)}
        for spec, entry in licenses.items():
            if spec != STDLIB_SPEC and Path(spec).is_dir():
                entry.files = license_files(Path(spec))

        bar.phase("filters: duplicates, personal data", total_bytes)
        # Worker processes pay for their start-up (about a second) only on a corpus of some size.
        workers = default_workers() if total_bytes > PARALLEL_BYTES else 1
        work = functools.partial(_sign_and_find, dedup=cfg.dedup)
        for doc, (digest, minhash, findings) in analyzed(iter_documents(self.files), work, workers):
            bar.advance(len(doc.text.encode("utf-8")))
            if dedup is not None and dedup.add_signed(doc.origin, digest, minhash) is not None:
                result.drop(doc, DUPLICATE, self._name(doc), split_of(doc.text, cfg.val_fraction))
                continue
            if findings:
                result.documents_with_personal_data += 1
                result.personal_data.update(f.kind for f in findings)
                if cfg.redact_pii:  # kept until tokenizing: no second search, and only documents with findings
                    self._findings[doc.origin] = findings
            licenses[self._file(doc).source].add_document(doc.origin, doc.text)
            if cfg.decontaminate and split_of(doc.text, cfg.val_fraction) == TRAIN:
                train_index.add(doc.text)
        result.licenses = [{"source": e.source, "license": e.license, "declared": e.declared, "files": e.files,
                            "documents_stating": dict(e.documents), "conflicts": len(e.conflicts),
                            "problems": e.problems} for e in licenses.values()]
        if not cfg.decontaminate:
            bar.done()
            return result

        bar.phase("filters: validation overlap", total_bytes)
        for doc in self._kept(VAL, bar):
            if train_index.overlap(doc.text) >= cfg.contamination_threshold:
                result.drop(doc, TRAIN_TEXT, self._name(doc), VAL)
            else:
                eval_index.add(doc.text)
        if self.eval_files:
            bar.phase("filters: evaluation sources", sum(sf.path.stat().st_size for sf in self.eval_files))
            for doc in iter_documents(self.eval_files):
                bar.advance(len(doc.text.encode("utf-8")))
                result.eval_documents += 1
                eval_index.add(doc.text)
                result.eval_contaminated += train_index.overlap(doc.text) >= cfg.contamination_threshold
        bar.phase("filters: training overlap", total_bytes)
        for doc in self._kept(TRAIN, bar):
            if eval_index.overlap(doc.text) >= cfg.contamination_threshold:
                result.drop(doc, EVAL_TEXT, self._name(doc), TRAIN)
        bar.done()
        return result

    def _kept(self, split: str, bar: PhaseProgress):
        """The documents of `split` that no filter has dropped so far, read again."""
        for doc in iter_documents(self.files):
            bar.advance(len(doc.text.encode("utf-8")))
            if doc.origin not in self.result.dropped and split_of(doc.text, self.cfg.val_fraction) == split:
                yield doc

    def keeps(self, doc: Document) -> bool:
        return doc.origin not in self.result.dropped

    def text(self, doc: Document) -> str:
        findings = self._findings.get(doc.origin)
        return redact(doc.text, findings) if findings else doc.text


def _sign_and_find(text: str, dedup: bool) -> tuple[str | None, Any, list[Finding]]:
    """Worker: content hash and MinHash signature (when deduplicating) and personal-data findings of one document."""
    if not dedup:
        return None, None, find_personal_data(text)
    return content_hash(text), signature(text), find_personal_data(text)
