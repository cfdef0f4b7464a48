from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shoal.config import DataConfig
from shoal.data.prepare import PreparedData, load_prepared, prepare_dataset
from shoal.data.shards import open_shards
from shoal.data.split import split_of
from shoal.data.tokenizer import load_tokenizer
from shoal.errors import DataError, OutputError
from shoal.io import sha256_file


def _split_docs(prepared: PreparedData, split: str) -> list[str]:
    """Decode a split's shards back into documents, cutting at each end-of-text token."""
    tok = load_tokenizer(prepared.tokenizer_path)
    m = prepared.manifest
    tokens = np.concatenate(open_shards(prepared.folder, m["shards"][split], m["dtype"]))
    assert tokens[-1] == m["eot_id"]
    cuts = np.flatnonzero(tokens == m["eot_id"])
    return [tok.decode(tokens[a + 1 if i else 0:b].tolist()) for i, (a, b) in enumerate(zip([0, *cuts], cuts))]


def test_prepare_end_to_end(corpus_cfg: DataConfig, make_docs) -> None:
    prepared = prepare_dataset(corpus_cfg, progress=True)  # the rich bar goes to stderr
    m = prepared.manifest
    docs = make_docs(60)
    assert prepared.folder == Path(corpus_cfg.prepared_dir) / prepared.fingerprint[:16]
    assert (m["format"], m["dtype"], m["settings"]["vocab_size"]) == ("shoal.tokens/1", "uint16", 320)
    assert m["sources"] == [{"spec": corpus_cfg.sources[0], "files": 31, "license": None,
                             "bytes": sum(p.stat().st_size for p in Path(corpus_cfg.sources[0]).iterdir())}]
    assert m["inputs_sha256"]["count"] == 31 and len(m["inputs_sha256"]["files"]) == 31
    # Documents, in file order, come back exactly from the shards, each in the split its text hashes to.
    by_split = {s: [d for d in docs if split_of(d, 0.25) == s] for s in ("train", "val")}
    for split in ("train", "val"):
        assert _split_docs(prepared, split) == by_split[split]
        assert m["documents"][split] == len(by_split[split]) > 0
        assert m["bytes"][split] == sum(len(d.encode("utf-8")) for d in by_split[split])
        entries = m["shards"][split]
        assert m["tokens"][split] == sum(e["tokens"] for e in entries)
        for e in entries:
            assert (prepared.folder / e["file"]).stat().st_size == 2 * e["tokens"]
            assert sha256_file(prepared.folder / e["file"]) == e["sha256"]
    assert m["documents"]["train"] + m["documents"]["val"] == 60
    assert len(m["shards"]["train"]) == -(-m["tokens"]["train"] // 1000)  # shard_tokens=1000 rolls over
    tok = load_tokenizer(prepared.tokenizer_path)
    assert m["vocab_size"] == tok.get_vocab_size() and m["eot_id"] == tok.token_to_id("<|endoftext|>")
    assert m["tokenizer_sha256"] == sha256_file(prepared.tokenizer_path)
    train = np.concatenate(open_shards(prepared.folder, m["shards"]["train"], m["dtype"]))
    p = np.bincount(train) / len(train)
    p = p[p > 0]
    assert m["unigram_entropy_nats"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)
    assert 0 < m["unigram_entropy_nats"] < np.log(m["vocab_size"])
    # Loading again gives the same thing, and windows come straight off the shards.
    loaded = load_prepared(prepared.folder)
    assert loaded.manifest == m and loaded.fingerprint == prepared.fingerprint
    windows = loaded.windows("train", seq_len=16)
    assert windows[0].tolist() == train[:17].tolist()
    with pytest.raises(DataError, match="no 'test' split"):
        loaded.windows("test", 16)


def test_rerun_is_cached_and_does_no_work(corpus_cfg: DataConfig, snapshot) -> None:
    first = prepare_dataset(corpus_cfg, progress=False)
    root = Path(corpus_cfg.prepared_dir)
    before = snapshot(root)
    start = time.perf_counter()
    second = prepare_dataset(corpus_cfg, progress=False)
    elapsed = time.perf_counter() - start
    assert second.folder == first.folder and second.manifest == first.manifest
    assert snapshot(root) == before  # no file rewritten, added or left behind
    assert elapsed < 1.0
    # A setting that changes the output gets its own folder; the first stays as it was.
    third = prepare_dataset(replace(corpus_cfg, vocab_size=300), progress=False)
    assert third.folder != first.folder and third.manifest["vocab_size"] <= 300
    assert {k: v for k, v in snapshot(root).items() if k.startswith(first.folder.name)} == before


def test_split_is_stable_when_documents_are_added(corpus_cfg: DataConfig, make_docs) -> None:
    before = prepare_dataset(corpus_cfg, progress=False)
    folder = Path(corpus_cfg.sources[0])
    extra = make_docs(20, seed=1)
    for i, doc in enumerate(extra):
        (folder / f"aaa_extra_{i}.txt").write_text(doc, encoding="utf-8")  # sorts first: shifts every position
    after = prepare_dataset(corpus_cfg, progress=False)
    assert after.fingerprint != before.fingerprint
    for split in ("train", "val"):
        old, new = _split_docs(before, split), _split_docs(after, split)
        assert set(old) <= set(new)
        assert set(new) - set(old) == {d for d in extra if split_of(d, 0.25) == split}
    assert after.manifest["documents"]["val"] + after.manifest["documents"]["train"] == 80


def test_empty_corpus_leaves_prepared_dir_untouched(corpus_cfg: DataConfig, tmp_path: Path, snapshot) -> None:
    prepare_dataset(corpus_cfg, progress=False)  # an existing dataset that must survive
    root = Path(corpus_cfg.prepared_dir)
    before = snapshot(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text(" \n\n\t ")
    (empty / "blob.txt").write_bytes(b"\x89PNG\0\0\0")
    (empty / "none.jsonl").write_text('\n{"text": ""}\n')
    with pytest.raises(DataError, match="data sources yielded no documents"):
        prepare_dataset(replace(corpus_cfg, sources=[str(empty)]), progress=False)
    assert snapshot(root) == before


def test_one_sided_split_is_an_error(corpus_cfg: DataConfig, tmp_path: Path, make_docs, snapshot) -> None:
    docs = make_docs(60)
    train_doc = next(d for d in docs if split_of(d, 0.25) == "train")
    val_doc = next(d for d in docs if split_of(d, 0.25) == "val")
    for name, doc, message in [("t", train_doc, "validation split is empty"),
                               ("v", val_doc, "training split is empty")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "doc.txt").write_text(doc, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            prepare_dataset(replace(corpus_cfg, sources=[str(tmp_path / name)]), progress=False)
    assert snapshot(Path(corpus_cfg.prepared_dir)) == {}


def test_unwritable_output_and_missing_source(corpus_cfg: DataConfig, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    with pytest.raises(OutputError, match="cannot write to output folder"):
        prepare_dataset(replace(corpus_cfg, prepared_dir=str(blocker / "prepared")), progress=False)
    assert blocker.read_text() == "keep me"
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(replace(corpus_cfg, sources=[str(tmp_path / "nope")]), progress=False)
    assert not Path(corpus_cfg.prepared_dir).exists()  # nothing created before the sources were checked


def test_damaged_dataset_is_detected_and_rebuilt(corpus_cfg: DataConfig) -> None:
    prepared = prepare_dataset(corpus_cfg, progress=False)
    shard = prepared.folder / prepared.manifest["shards"]["train"][0]["file"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-2])
    with pytest.raises(DataError, match="truncated or changed"):
        load_prepared(prepared.folder)
    rebuilt = prepare_dataset(corpus_cfg, progress=False)
    assert rebuilt.folder == prepared.folder and shard.read_bytes() == good
    assert [p.name for p in Path(corpus_cfg.prepared_dir).iterdir()] == [prepared.folder.name]  # no leftovers
    manifest = prepared.folder / "manifest.json"
    broken = {**prepared.manifest, "shards": {"train": [{"file": "train_00000.bin"}], "val": []}}
    manifest.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="malformed shard list"):
        load_prepared(prepared.folder)
    manifest.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not format shoal.tokens/1"):
        load_prepared(prepared.folder)
    manifest.unlink()
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_prepared(prepared.folder)


def test_prepare_real_stdlib(tmp_path: Path) -> None:
    """The default source end to end: about 15 s on 2 cores, most of it tokenizing 12 MB of code."""
    cfg = DataConfig(sources=["stdlib"], vocab_size=2048, prepared_dir=str(tmp_path / "prepared"))
    prepared = prepare_dataset(cfg, progress=False)
    m = prepared.manifest
    assert m["sources"][0]["files"] > 300 and m["documents"]["val"] > 0 and m["documents"]["train"] > 300
    assert m["vocab_size"] == 2048 and m["tokens"]["train"] > 1_000_000
    assert m["bytes"]["train"] / m["tokens"]["train"] > 2.5  # BPE compresses code well beyond one byte per token
    assert len(prepared.windows("val", 256)) > 10
