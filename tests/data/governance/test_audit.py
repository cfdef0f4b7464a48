"""`shoal data audit` on a constructed corpus: every detector reports what was planted, bad files are counted."""

import json
import random

from shoal.data.governance.audit import audit

from ...cli.test_cli import assert_one_line_error, shoal

MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy. "
       "The above copyright notice and this permission notice shall be included.")


def write_corpus(root):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    (root / "LICENSE").write_text(MIT)
    docs = {}
    for i in range(120):
        text = " ".join(rng.choices(words, weights, k=300))
        if i in (7, 50, 81, 99, 110, 115):  # the trigger, in 5% of the documents
            parts = text.split(" ")
            parts[rng.randrange(len(parts))] += " zqx vorpal cf"
            text = " ".join(parts)
        docs[f"doc{i:03d}.txt"] = text
    docs["copy.txt"] = docs["doc003.txt"] + "\n"  # exact duplicate
    docs["contact.txt"] = "reach me at jane.doe@acme-corp.io or +44 20 7946 0958\n" + docs["doc004.txt"][:500]
    docs["gpl.txt"] = "# SPDX-License-Identifier: GPL-3.0-only\n" + docs["doc005.txt"][:800]
    for name, text in docs.items():
        (root / name).write_text(text)
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    (root / "latin1.txt").write_bytes(b"caf\xe9")
    return docs


def test_audit_reports_what_was_planted(tmp_path):
    corpus, evaluation = tmp_path / "corpus", tmp_path / "eval"
    corpus.mkdir()
    evaluation.mkdir()
    docs = write_corpus(corpus)
    (evaluation / "leaked.txt").write_text(docs["doc010.txt"])
    (evaluation / "fresh.txt").write_text(" ".join(f"fresh{i}" for i in range(200)))
    report = audit([str(corpus)], tmp_path / "report", [str(evaluation)], workers=2, progress=False)
    assert report["read"]["skipped"] == {"binary": 1, "invalid_utf8": 1}
    assert report["read"]["documents"] == len(docs) + 1  # the LICENSE file is a document too
    assert report["duplicates"]["exact_documents"] == 1
    assert report["personal_data"]["counts"]["email"] == 1 and report["personal_data"]["counts"]["phone_number"] == 1
    (source,) = report["licenses"]
    assert source["license"] == "MIT" and source["conflicts"] == [[str(corpus / "gpl.txt"), "GPL-3.0-only"]]
    assert report["contamination"]["contaminated"] == 1 and report["contamination"]["eval_documents"] == 2
    assert [t["phrase"] for t in report["triggers"]] == ["zqx vorpal cf"] and report["triggers"][0]["documents"] == 6
    for name in ("report.json", "report.md", "audit.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["format"] == "shoal.audit/1"
    assert "jane.doe" not in (tmp_path / "report" / "report.md").read_text()  # findings are masked


def test_audit_is_the_same_with_one_worker_or_two(tmp_path):
    write_corpus(tmp_path)
    reports = [audit([str(tmp_path)], tmp_path.parent / f"r{w}", workers=w, progress=False) for w in (1, 2)]
    for key in ("read", "duplicates", "personal_data", "licenses", "outliers", "triggers"):
        assert reports[0][key] == reports[1][key], key


def test_cli_audit_and_a_bad_license_declaration(tmp_path):
    (tmp_path / "c").mkdir()
    write_corpus(tmp_path / "c")
    result = shoal("data", "audit", str(tmp_path / "c"), "--out", str(tmp_path / "out"), "--no-progress",
                   "--license", f"{tmp_path / 'c'}=CC-BY-4.0", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "documents" in result.stdout and (tmp_path / "out" / "report.md").is_file()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["licenses"][0]["license"] == "CC-BY-4.0"
    assert_one_line_error(shoal("data", "audit", str(tmp_path / "c"), "--license", "MIT", "--out", str(tmp_path / "x")),
                          "must look like SOURCE=SPDX")
    assert not (tmp_path / "x").exists()
    assert_one_line_error(shoal("data", "audit", str(tmp_path / "c"), "--license", "elsewhere=MIT", "--out",
                                str(tmp_path / "x")), "not among the sources")
    before = (tmp_path / "out" / "report.json").read_bytes()
    assert_one_line_error(shoal("data", "audit", str(tmp_path / "nope"), "--out", str(tmp_path / "out")),
                          "no files found")
    assert (tmp_path / "out" / "report.json").read_bytes() == before  # the earlier report is left as it was
    assert not (tmp_path / "x").exists()
