"""Small synthetic corpora for the data pipeline tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from shoal.config import DataConfig

WORDS = ["def", "return", "class", "self", "import", "lambda", "yield", "value", "data", "token", "shoal",
         "naïve", "café", "Straße", "日本語", "💡", "λx", "None", "True", "0x1F", "    ", "\t", "# note"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 6))]
        docs.append(f"doc {i}\n" + "\n".join(lines) + "\n")
    return docs


def write_corpus(folder: Path, docs: list[str]) -> Path:
    """Half the documents as text files, the rest as one JSONL file; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for i, doc in enumerate(docs[:half]):
        (folder / f"doc_{i:03d}.txt").write_text(doc, encoding="utf-8")
    with open(folder / "rest.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[half:]:
            f.write(json.dumps({"text": doc}) + "\n")
    return folder


@pytest.fixture(name="make_docs")
def make_docs_fixture():
    """The generator itself, for tests that build their own corpora."""
    return make_docs


@pytest.fixture(name="write_corpus")
def write_corpus_fixture():
    return write_corpus


@pytest.fixture(name="snapshot")
def snapshot_fixture():
    return snapshot


@pytest.fixture
def corpus_cfg(tmp_path: Path) -> DataConfig:
    """60 documents, vocab 320, 25% validation: enough for both splits, prepared in well under a second."""
    folder = write_corpus(tmp_path / "corpus", make_docs(60))
    return DataConfig(sources=[str(folder)], vocab_size=320, val_fraction=0.25,
                      prepared_dir=str(tmp_path / "prepared"), shard_tokens=1000)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` (hidden ones too) with its size and mtime: proof that nothing was touched."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}
