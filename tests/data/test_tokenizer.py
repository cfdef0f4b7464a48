from __future__ import annotations

import random
from pathlib import Path

import pytest

from shoal.data.tokenizer import EOT, eot_id, load_tokenizer, train_tokenizer
from shoal.errors import DataError


def _random_unicode(rng: random.Random, n: int) -> str:
    # Any scalar value: ASCII, controls, Latin, CJK, astral emoji; surrogates cannot exist in UTF-8 text.
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


@pytest.fixture(scope="module")
def tok():
    words = ["def", "return", "self", "class", "naïve", "日本語", "💡", "    ", "\n"]
    rng = random.Random(0)
    return train_tokenizer((" ".join(rng.choices(words, k=50)) for _ in range(200)), vocab_size=400)


def test_round_trip_arbitrary_unicode(tok) -> None:
    rng = random.Random(7)
    samples = ["", " ", "  leading and trailing  ", "tabs\tand\r\nCRLF\n", "\x00\x01\x7f", "e\u0301 combining",
               "日本語のテキスト", "emoji 👩‍👩‍👧 🇫🇷", "\ufeffBOM", f"literal {EOT} inside a document", "\u2028\u2029"]
    samples += [_random_unicode(rng, rng.randint(1, 200)) for _ in range(200)]
    for text in samples:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert eot_id(tok) not in ids  # only the data pipeline inserts document boundaries


def test_training_result(tok) -> None:
    assert 257 <= tok.get_vocab_size() <= 400  # 256 bytes + EOT + merges learned from the corpus
    assert tok.id_to_token(eot_id(tok)) == EOT
    # Merges were learned: common words take fewer tokens than bytes.
    assert len(tok.encode("return self").ids) < len("return self")


def test_save_and_load(tok, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = load_tokenizer(path)
    text = f"class Straße: {EOT} 💡"
    assert loaded.encode(text).ids == tok.encode(text).ids
    assert loaded.decode(loaded.encode(text).ids) == text
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    path.write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match="is corrupt"):
        load_tokenizer(path)
