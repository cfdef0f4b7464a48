from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.data.sources import Document, SourceFile, iter_documents, resolve_sources, stdlib_dir
from shoal.errors import DataError


def _tree(root: Path) -> Path:
    for rel, text in {"a.txt": "alpha", "sub/b.md": "beta", "sub/deep/c.py": "gamma", "sub/d.jsonl": "",
                      ".hidden/e.txt": "x", ".f.txt": "x", "__pycache__/g.txt": "x", "sub/__pycache__/h.txt": "x"}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_folder_glob_skips_hidden_and_pycache_and_sorts(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    files = resolve_sources([str(root)])
    assert [f.path.relative_to(root).as_posix() for f in files] == ["a.txt", "sub/b.md", "sub/d.jsonl", "sub/deep/c.py"]
    assert [f.kind for f in files] == ["text", "text", "jsonl", "text"]
    assert {f.source for f in files} == {str(root)}
    assert [f.path.name for f in resolve_sources([str(root)], "**/*.py")] == ["c.py"]
    assert [f.path.name for f in resolve_sources([str(root)], "*")] == ["a.txt"]
    assert [f.path.name for f in resolve_sources([str(root)], "sub/*")] == ["b.md", "d.jsonl"]


def test_file_specs_kinds_and_dedup(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    (root / "t.parquet").write_bytes(b"")
    (root / "u.JSONL").write_text("")
    (root / "v.json").write_text("{}")
    files = resolve_sources([str(root / "a.txt"), str(root), str(root / "a.txt")])
    assert len(files) == len({f.path for f in files}) == 7
    by_name = {f.path.name: f for f in files}
    assert by_name["a.txt"].source == str(root / "a.txt")  # the first spec naming a file keeps it
    assert [by_name[n].kind for n in ("t.parquet", "u.JSONL", "v.json")] == ["parquet", "jsonl", "text"]
    assert files == sorted(files, key=lambda f: f.path)


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data source '.*nope' does not exist"):
        resolve_sources([str(tmp_path / "nope")])
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    (tmp_path / "empty" / ".git" / "x.txt").write_text("hidden")
    with pytest.raises(DataError, match="no files matching"):
        resolve_sources([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="not a relative glob"):
        resolve_sources([str(_tree(tmp_path / "tree"))], "/abs/*")
    with pytest.raises(DataError, match="no data sources"):
        resolve_sources([])


def test_stdlib_excludes_site_packages_and_tests() -> None:
    root = stdlib_dir()
    files = resolve_sources(["stdlib"])
    rel = {f.path.relative_to(root).as_posix() for f in files}
    assert "json/__init__.py" in rel and "os.py" in rel
    assert len(files) > 300 and all(f.kind == "text" and f.source == "stdlib" for f in files)
    for path in rel:
        parts = set(path.split("/"))
        assert not parts & {"site-packages", "test", "tests", "idle_test", "__pycache__"}, path


def test_text_documents_skip_binary_and_blank(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("héllo\n", encoding="utf-8")
    (tmp_path / "b.bin").write_bytes(b"abc\0def")
    (tmp_path / "c.txt").write_text("  \n\t")
    (tmp_path / "d.txt").write_bytes(b"bad \xff byte")
    docs = list(iter_documents(resolve_sources([str(tmp_path)])))
    assert docs == [Document("héllo\n", str(tmp_path / "a.txt")), Document("bad \ufffd byte", str(tmp_path / "d.txt"))]


def test_jsonl_documents_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = [json.dumps({"text": "one", "id": 1}), "", json.dumps({"text": "  "}), json.dumps({"text": "two\nlines"}),
             '{"text": "lone \\ud800 surrogate"}']
    path.write_text("\n".join(lines) + "\n")
    docs = list(iter_documents([SourceFile(path, "jsonl", str(path))]))
    assert [d.text for d in docs] == ["one", "two\nlines", "lone ? surrogate"]
    assert [d.origin for d in docs] == [f"{path}:1", f"{path}:4", f"{path}:5"]
    for bad in ["not json", json.dumps({"txt": "x"}), json.dumps({"text": 3}), json.dumps(["text"])]:
        path.write_text(json.dumps({"text": "ok"}) + "\n" + bad + "\n")
        with pytest.raises(DataError, match=f"{path.name}:2 is not a JSON object with a string 'text' field"):
            list(iter_documents([SourceFile(path, "jsonl", str(path))]))


def test_parquet_documents_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    texts = [f"row {i}" if i % 7 else None for i in range(2500)]  # more rows than one read batch; some nulls
    pq.write_table(pa.table({"id": list(range(2500)), "text": texts}), path, row_group_size=600)
    docs = list(iter_documents([SourceFile(path, "parquet", str(path))]))
    assert [d.text for d in docs] == [t for t in texts if t is not None]
    assert docs[0].origin == f"{path}:1" and docs[-1].origin == f"{path}:2498"  # row 2499 is null
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError, match="has no 'text' column"):
        list(iter_documents([SourceFile(path, "parquet", str(path))]))
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match="not string"):
        list(iter_documents([SourceFile(path, "parquet", str(path))]))
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(iter_documents([SourceFile(path, "parquet", str(path))]))
