"""The `shoal` command as a user runs it: one-line errors, non-zero exits, no file damaged."""

import json
import subprocess
from pathlib import Path

from ..conftest import sets, shoal, small_overrides


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_config_key(tmp_path):
    result = shoal("train", "--set", "train.lrr=0.1", "--set", f'train.out_dir="{tmp_path}"')
    assert_one_line_error(result, "unknown config key 'train.lrr'")
    assert list(tmp_path.iterdir()) == []


def test_impossible_value():
    assert_one_line_error(shoal("config", "--set", "model.n_heads=3"), "model.n_heads", "must divide")


def test_missing_source(shared_root, tmp_path):
    result = shoal("train", *sets(small_overrides(shared_root) + [f'data.sources=["{tmp_path / "nowhere"}"]',
                                                                  f'train.out_dir="{tmp_path / "runs"}"']))
    assert_one_line_error(result, "nowhere", "does not exist")
    assert not (tmp_path / "runs").exists()


def test_empty_corpus(shared_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    prepared = shared_root / "prepared"
    before = snapshot(prepared) if prepared.exists() else {}
    result = shoal("data", "prepare", *sets(small_overrides(shared_root) + [f'data.sources=["{empty}"]']))
    assert_one_line_error(result, "no documents")
    assert (snapshot(prepared) if prepared.exists() else {}) == before


def test_unwritable_output_folder(shared_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    result = shoal("train", *sets(small_overrides(shared_root) + [f'train.out_dir="{blocker / "runs"}"']))
    assert_one_line_error(result, "cannot write to output folder")
    assert blocker.read_text() == "a file where the output folder should be"


def test_corrupt_checkpoint_given_explicitly(trained_run, shared_root, tmp_path):
    newest = sorted((trained_run / "checkpoints").iterdir())[-1]
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for f in newest.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    state = copy / "__0_0.distcp"
    state.write_bytes(state.read_bytes()[:-10])
    before = snapshot(copy)
    result = shoal("train", "--resume", str(copy),
                   *sets(small_overrides(shared_root) + [f'train.out_dir="{tmp_path / "runs"}"']))
    assert_one_line_error(result, "corrupt", "__0_0.distcp")
    assert snapshot(copy) == before


def test_generate_is_the_same_with_and_without_cache(trained_run):
    args = ["generate", str(trained_run), "def load(", "--max-tokens", "30", "--seed", "3"]
    cached, uncached = shoal(*args), shoal(*args, "--no-cache")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout
    assert cached.stdout.startswith("def load(") and len(cached.stdout) > len("def load(\n")
    greedy = shoal(*args, "--temperature", "0")
    assert greedy.stdout == shoal(*args, "--temperature", "0", "--no-cache").stdout
    assert_one_line_error(shoal("generate", str(trained_run), ""), "cannot generate", "prompt is empty")
    assert_one_line_error(shoal("generate", str(trained_run), "x", "--top-p", "2"), "cannot generate", "top_p")


def test_export_bundle_generates_like_the_run(trained_run, tmp_path):
    bundle = tmp_path / "bundle"
    result = shoal("export", str(trained_run), "--out", str(bundle))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in bundle.iterdir()} == {"model.safetensors", "tokenizer.json", "config.json", "manifest.json",
                                                  "dataset_card.md"}
    config = json.loads((bundle / "config.json").read_text())
    fingerprint = config["provenance"]["dataset_fingerprint"]
    assert config["provenance"]["step"] == 12 and len(fingerprint) == 64
    # The model can be traced to its data: the card in the run and the bundle names the dataset's fingerprint.
    assert json.loads((trained_run / "run.json").read_text())["dataset"]["fingerprint"] == fingerprint
    assert fingerprint in (bundle / "dataset_card.md").read_text() == (trained_run / "dataset_card.md").read_text()
    args = ["def load(", "--max-tokens", "20", "--seed", "1"]
    assert shoal("generate", str(bundle), *args).stdout == shoal("generate", str(trained_run), *args).stdout

    assert_one_line_error(shoal("export", str(trained_run), "--out", str(bundle)), "not empty")
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    assert_one_line_error(shoal("generate", str(bundle), "x"), "corrupt", "model.safetensors")
