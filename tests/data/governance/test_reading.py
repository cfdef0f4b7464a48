"""An audit reads whatever it can and counts the rest: nothing crashes it."""

import json
import os

import pytest

from shoal.data.governance.reading import ReadLog, read_documents, resolve_tolerantly


def test_bad_inputs_are_skipped_and_counted(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("print('hello')\n")
    (tmp_path / "binary.bin").write_bytes(b"\x7fELF\x00\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "minified.js").write_text("x=1;" * 300_000)  # one 1.2 MB line
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": "first"}) + "\nnot json\n"
                                            + json.dumps({"text": "third"}) + "\n" + json.dumps({"text": " "}) + "\n")
    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    log = ReadLog()
    files = resolve_tolerantly([str(tmp_path), str(tmp_path / "missing"), "stdlib-typo"], "**/*", log)
    docs = list(read_documents(files, log))
    locked.chmod(0o600)
    can_read_anything = os.geteuid() == 0  # root reads a chmod-0 file
    assert sorted(d.origin.rsplit("/", 1)[-1] for d in docs) == sorted(
        ["good.py", "records.jsonl:1", "records.jsonl:3"] + (["locked.txt"] if can_read_anything else []))
    expected = {"missing_or_empty_source": 2, "binary": 1, "invalid_utf8": 1, "empty": 2, "huge_line": 1,
                "malformed": 1}
    if not can_read_anything:
        expected["unreadable"] = 1
    assert dict(log.skipped) == expected
    assert log.documents == len(docs) and log.examples["binary"] == [str(tmp_path / "binary.bin")]


@pytest.mark.parametrize("limit, kept", [(10, 0), (100, 1)])
def test_the_line_length_limit(tmp_path, limit, kept):
    (tmp_path / "a.txt").write_text("short\n" + "y" * 50 + "\n")
    log = ReadLog()
    assert len(list(read_documents(resolve_tolerantly([str(tmp_path)], "**/*", log), log, max_line_chars=limit))) == kept
