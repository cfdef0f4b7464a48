"""Shared fixtures: a small real corpus (a few packages of this Python's standard library) and a small config."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from shoal.config import Config, load_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def small_overrides(root: Path) -> list[str]:
    sources = [str(STDLIB / "json"), str(STDLIB / "email"), str(STDLIB / "textwrap.py")]
    return [
        f"data.sources={sources!r}".replace("'", '"'),
        "data.vocab_size=512", f'data.prepared_dir="{root / "prepared"}"', "data.val_fraction=0.1",
        "model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.max_seq_len=64",
        "train.seq_len=64", "train.batch_tokens=1024", "train.micro_batch_size=8", "train.steps=8",
        "train.warmup_steps=2", "train.eval_every=4", "train.eval_batches=2", "train.checkpoint_every=4",
        "train.dtype=\"fp32\"", f'train.out_dir="{root / "runs"}"', "logging.progress=false", "logging.log_every=2",
        "logging.mlflow=false",
    ]


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """Prepared data shared by the tests of a session (preparing is cached by fingerprint)."""
    return tmp_path_factory.mktemp("shoal")


@pytest.fixture
def small_config(shared_root, tmp_path) -> Config:
    cfg = load_config("tiny", small_overrides(shared_root))
    cfg.train.out_dir = str(tmp_path / "runs")
    return cfg


def shoal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `shoal` command as a user runs it, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


@pytest.fixture(scope="session")
def trained_run(shared_root, tmp_path_factory) -> Path:
    """A small model trained for 12 steps by the CLI, shared read-only by the tests of a session."""
    out = tmp_path_factory.mktemp("cli-run")
    result = shoal("train", *sets(small_overrides(shared_root) + ["train.steps=12", f'train.out_dir="{out}"']))
    assert result.returncode == 0, result.stderr
    assert "done: step 12" in result.stderr
    return out / "tiny"
