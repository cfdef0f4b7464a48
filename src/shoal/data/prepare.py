"""Turn data sources into a prepared dataset: tokenizer + token shards + manifest, cached by fingerprint."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from shoal.config import DataConfig
from shoal.data.governance.card import CARD_FILE, render_card
from shoal.data.governance.filtering import DocumentFilter
from shoal.data.inputs import InputFile, check_unchanged, fingerprint, hash_inputs, inputs_summary
from shoal.data.prepared import FORMAT, MANIFEST_FILE, TOKENIZER_FILE, PreparedData, load_prepared
from shoal.data.progress import PhaseProgress
from shoal.data.shards import ShardWriter, token_dtype
from shoal.data.sources import SourceFile, iter_documents, resolve_sources
from shoal.data.split import SPLITS, TRAIN, VAL, split_of
from shoal.data.tokenizer import eot_id, train_tokenizer
from shoal.errors import DataError
from shoal.io import atomic_write_json, ensure_writable_dir, fsync_dir, sha256_file

__all__ = ["PIPELINE_VERSION", "PreparedData", "load_prepared", "prepare_dataset"]

PIPELINE_VERSION = 2  # bump whenever the same inputs and settings would give different output
ENCODE_BATCH_BYTES = 2 << 20  # text per encode_batch call: enough work for every core, bounded memory
ENCODE_BATCH_DOCS = 4096


def _settings(cfg: DataConfig) -> dict[str, Any]:
    # shard_tokens is here too: windows never cross a shard, so the shard layout changes the training stream.
    return {"vocab_size": cfg.vocab_size, "val_fraction": cfg.val_fraction, "glob": cfg.glob,
            "shard_tokens": cfg.shard_tokens, "pipeline_version": PIPELINE_VERSION, "dedup": cfg.dedup,
            "redact_pii": cfg.redact_pii, "decontaminate": cfg.decontaminate,
            "contamination_ngram": cfg.contamination_ngram, "contamination_threshold": cfg.contamination_threshold,
            "licenses": sorted(cfg.licenses)}


def _cached(folder: Path, fp: str) -> PreparedData | None:
    if not folder.exists():
        return None
    try:
        prepared = load_prepared(folder)
    except DataError:
        return None  # incomplete or corrupt: rebuilt and replaced
    return prepared if prepared.fingerprint == fp else None


def prepare_dataset(cfg: DataConfig, progress: bool = True) -> PreparedData:
    """Prepare `cfg`'s sources into `prepared_dir/<fingerprint[:16]>`, or return that folder if already complete."""
    files = resolve_sources(cfg.sources, cfg.glob)
    eval_files = resolve_sources(cfg.eval_sources, cfg.glob, key="data.eval_sources") if cfg.eval_sources else []
    eval_files = eval_files if cfg.decontaminate else []  # checked even when unused: a typo is still an error
    filters = DocumentFilter(cfg, files, eval_files)  # checks the license declarations before any work
    root = ensure_writable_dir(cfg.prepared_dir)
    settings = _settings(cfg)
    with PhaseProgress(progress) as bar:
        inputs = hash_inputs(files, bar)
        eval_inputs = hash_inputs(eval_files, bar) if eval_files else []
        # Evaluation files are inputs too (what they contain decides what training drops), marked apart.
        fp = fingerprint(inputs + eval_inputs, {**settings, "eval_inputs": len(eval_inputs)})
        final = root / fp[:16]
        cached = _cached(final, fp)
        if cached is not None:
            return cached
        # Build beside the final folder and rename it into place: a crash leaves only a hidden temp folder.
        # mkdir rather than mkdtemp, whose 0700 mode would make a shared prepared_dir unreadable to others.
        tmp = root / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            manifest = _build(tmp, inputs, fp, settings, cfg, filters, bar)
            check_unchanged(inputs + eval_inputs)
            return _publish(tmp, final, fp, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish


def _publish(tmp: Path, final: Path, fp: str, manifest: dict[str, Any]) -> PreparedData:
    fsync_dir(tmp)
    try:
        os.replace(tmp, final)
    except OSError:
        # `final` exists: another process just published the same dataset, or a damaged copy is in the way.
        existing = _cached(final, fp)
        if existing is not None:
            return existing
        stale = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.stale-"))
        os.replace(final, stale / "old")
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    fsync_dir(final.parent)
    return PreparedData(folder=final, manifest=manifest)


def _kept_documents(files: list[SourceFile], cfg: DataConfig, filters: DocumentFilter,
                    bar: PhaseProgress) -> Iterator[tuple[str, str]]:
    """(split, text to tokenize) of every document the filters keep; the split is decided by the original text."""
    for doc in iter_documents(files):
        bar.advance(len(doc.text.encode("utf-8")))
        if filters.keeps(doc):
            yield split_of(doc.text, cfg.val_fraction), filters.text(doc)


def _train(files: list[SourceFile], cfg: DataConfig, filters: DocumentFilter, total_bytes: int,
           bar: PhaseProgress) -> Tokenizer:
    """Train on the training split only, streaming; fail early if either split would be empty."""
    documents = dict.fromkeys(SPLITS, 0)

    def train_texts() -> Iterator[str]:
        for split, text in _kept_documents(files, cfg, filters, bar):
            documents[split] += 1
            if split == TRAIN:  # validation text never shapes the vocabulary
                yield text
        bar.rename("tokenizer merges")  # all text read; the merges are computed after the last document

    bar.phase("tokenizer training", total_bytes + 1)  # one byte short of done, so the clock runs through the merges
    tok = train_tokenizer(train_texts(), cfg.vocab_size)
    bar.done()
    if documents[TRAIN] + documents[VAL] == 0:
        raise DataError("data sources yielded no documents (all files empty, binary or blank); "
                        "add text to data.sources")
    removed = filters.result.removed_by_split
    for split, name in ((VAL, "validation"), (TRAIN, "training")):
        if documents[split] == 0 and removed[split]:
            raise DataError(f"the {name} split is empty: the filters removed all {removed[split]} of its documents "
                            "(duplicates, or overlap between training and evaluation text); add documents, change "
                            "data.val_fraction, or set data.dedup / data.decontaminate to false")
    if documents[VAL] == 0:
        raise DataError(f"validation split is empty ({documents[TRAIN]} documents, none drawn for validation): "
                        "add more documents or raise data.val_fraction")
    if documents[TRAIN] == 0:
        raise DataError(f"training split is empty (all {documents[VAL]} documents went to validation): "
                        "add more documents or lower data.val_fraction")
    return tok


class _SplitEncoder:
    """Collects one split's documents into batches, encodes them in parallel and streams the ids to shards."""

    def __init__(self, tok: Tokenizer, eot: int, writer: ShardWriter, vocab_size: int) -> None:
        self.tok, self.eot, self.writer = tok, eot, writer
        self.texts: list[str] = []
        self.pending_bytes = 0
        self.documents = self.tokens = self.bytes = 0
        self.counts = np.zeros(vocab_size, dtype=np.int64)

    def add(self, text: str, nbytes: int) -> None:
        self.texts.append(text)
        self.pending_bytes += nbytes
        self.documents += 1
        self.bytes += nbytes
        if self.pending_bytes >= ENCODE_BATCH_BYTES or len(self.texts) >= ENCODE_BATCH_DOCS:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        ids: list[int] = []
        for encoding in self.tok.encode_batch(self.texts, add_special_tokens=False):
            ids.extend(encoding.ids)
            ids.append(self.eot)  # every document ends with EOT, so the model learns where documents stop
        array = np.asarray(ids, dtype=np.int64)
        self.writer.write(array)
        self.counts += np.bincount(array, minlength=len(self.counts))
        self.tokens += len(array)
        self.texts, self.pending_bytes = [], 0


def _entropy_nats(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _build(tmp: Path, inputs: list[InputFile], fp: str, settings: dict[str, Any], cfg: DataConfig,
           filters: DocumentFilter, bar: PhaseProgress) -> dict[str, Any]:
    files = [item.source for item in inputs]
    total_bytes = sum(item.size for item in inputs)
    filtered = filters.plan(bar, total_bytes)
    tok = _train(files, cfg, filters, total_bytes, bar)
    tok.save(str(tmp / TOKENIZER_FILE))
    vocab_size, eot = tok.get_vocab_size(), eot_id(tok)
    dtype = token_dtype(vocab_size)

    encoders = {split: _SplitEncoder(tok, eot, ShardWriter(tmp, split, dtype, cfg.shard_tokens), vocab_size)
                for split in SPLITS}
    bar.phase("tokenizing", total_bytes)
    for split, text in _kept_documents(files, cfg, filters, bar):
        encoders[split].add(text, len(text.encode("utf-8")))
    for encoder in encoders.values():
        encoder.flush()
    shards = {split: encoder.writer.close() for split, encoder in encoders.items()}
    bar.done()

    licenses = {entry["source"]: entry["license"] for entry in filtered.licenses}
    sources = []
    for spec in dict.fromkeys(cfg.sources):  # a spec listed twice is one source
        mine = [item for item in inputs if item.source.source == spec]
        sources.append({"spec": spec, "files": len(mine), "bytes": sum(item.size for item in mine),
                        "license": licenses.get(spec)})
    manifest = {
        "format": FORMAT,
        "fingerprint": fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": sources,
        "inputs_sha256": inputs_summary(inputs),
        "documents": {split: e.documents for split, e in encoders.items()},
        "tokens": {split: e.tokens for split, e in encoders.items()},  # EOT tokens included
        "bytes": {split: e.bytes for split, e in encoders.items()},  # UTF-8 bytes of the documents, for bits/byte
        "vocab_size": vocab_size,
        "eot_id": eot,
        "dtype": dtype,
        "shards": shards,
        "tokenizer_sha256": sha256_file(tmp / TOKENIZER_FILE),
        "unigram_entropy_nats": _entropy_nats(encoders[TRAIN].counts),
        "settings": settings,
        "filters": filtered.summary(),
    }
    (tmp / CARD_FILE).write_text(render_card(manifest), encoding="utf-8")
    manifest["card_sha256"] = sha256_file(tmp / CARD_FILE)
    atomic_write_json(tmp / MANIFEST_FILE, manifest)  # written last: its presence marks the folder complete
    return manifest
