"""Running `shoal train` as users do, under torchrun, and reading back what the runs logged."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from shoal.train.metrics import read_metrics

from ..conftest import small_overrides

WORKERS = Path(__file__).parent / "workers"


def sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def env() -> dict[str, str]:
    # One thread per process: these tests start up to four processes on two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def train_command(root: Path, name: str, *args: str, extra: list[str] = ()) -> list[str]:
    """`shoal train` on the small test corpus and model, in fp32, as run `name`."""
    return [sys.executable, "-m", "shoal.cli", "train", *sets(small_overrides(root)), *sets(list(extra)),
            "--run-name", name, *args]


def shoal_train(root: Path, name: str, *args: str, extra: list[str] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(root, name, *args, extra=extra), capture_output=True, text=True,
                          timeout=timeout, env=env())


def shoal_train_async(root: Path, name: str, *args: str, extra: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen(train_command(root, name, *args, extra=extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def torchrun(nproc: int, script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """A worker script of tests/parallel/workers under torchrun with `nproc` gloo processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(WORKERS / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env())


def losses(run_dir: Path) -> dict[int, float]:
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in records}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
