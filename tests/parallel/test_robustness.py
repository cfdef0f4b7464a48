"""Distributed failures: a non-finite loss on one rank, a hung collective, a killed worker, nodes meeting."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from shoal.config import load_config
from shoal.train.checkpoint import verify

from ..conftest import small_overrides
from .runs import check, losses, shoal_train, shoal_train_async, torchrun


def test_a_nan_on_one_rank_makes_every_rank_skip(shared_root, tmp_path):
    cfg = load_config("tiny", small_overrides(shared_root) + ["parallel.dp_replicate=2", "parallel.dp_shard=1"])
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    result = torchrun(2, "nonfinite.py", str(tmp_path / "config.json"))
    check(result)
    # Both ranks print to the same pipe, so their lines may run together.
    reports = sorted((json.loads(m) for m in re.findall(r"\{[^{}]*\}", result.stdout)), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:  # rank 0's own loss was finite: it skips because rank 1's was not
        assert r["skipped"] and r["loss"] == "nan" and r["unchanged"] and r["step"] == 2 and r["bad_steps"] == 1, r


def test_a_hung_collective_times_out_naming_the_rank():
    start = time.monotonic()
    result = torchrun(2, "hang.py", "3")
    assert time.monotonic() - start < 60
    lines = [line for line in result.stdout.splitlines() if "timed out" in line]
    assert len(lines) == 1 and "rank 0 of 2: a collective timed out after 3 s" in lines[0], result.stdout + result.stderr


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def local_rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    return int(values[b"LOCAL_RANK"]) if b"LOCAL_RANK" in values else None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(shared_root, tmp_path):
    extra = ["train.steps=60", "train.checkpoint_every=5", "train.eval_every=1000", f'train.out_dir="{tmp_path}"']
    check(shoal_train(shared_root, "uninterrupted", "--nproc", "2", extra=extra))
    process = shoal_train_async(shared_root, "killed", "--nproc", "2", "--max-restarts", "1", extra=extra)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_00000010"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = [pid for pid in descendants(process.pid) if local_rank_of(pid) == 1]
    assert len(victims) == 1, "worker of local rank 1 not found"
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-5000:]
    assert "elastic restart 1: resuming" in stderr
    resumed = [int(step) for step in re.findall(r"resumed from \S+ \(step (\d+)\)", stderr)]
    assert len(resumed) == 1 and resumed[0] >= 10  # no more lost than the steps since the last checkpoint
    expected, got = losses(tmp_path / "uninterrupted"), losses(tmp_path / "killed")
    assert sorted(got) == list(range(1, 61))
    assert got[60] == pytest.approx(expected[60], rel=1e-6)


def test_sigterm_to_the_launcher_checkpoints_every_rank_at_the_same_step(shared_root, tmp_path):
    """What SLURM does before a time limit: all ranks stop after one step, write one checkpoint, and resume."""
    extra = ["train.steps=400", "train.checkpoint_every=4", "train.eval_every=1000", f'train.out_dir="{tmp_path}"']
    process = shoal_train_async(shared_root, "stopped", "--nproc", "2", extra=extra)
    first = tmp_path / "stopped" / "checkpoints" / "step_00000004"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # As slurmstepd does: every process of the step gets SIGTERM, torchrun (the launcher exec'd into it) and each
    # worker, which then gets it a second time when torchrun forwards it.
    for pid in [process.pid, *descendants(process.pid)]:
        os.kill(pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    checkpoints = sorted((tmp_path / "stopped" / "checkpoints").glob("step_*"))
    stopped_at = int(checkpoints[-1].name.removeprefix("step_"))
    assert verify(checkpoints[-1])["step"] == stopped_at < 400
    assert not list((tmp_path / "stopped" / "checkpoints").glob(".tmp-*"))
    logged = losses(tmp_path / "stopped")
    assert max(logged) == stopped_at  # no rank went on past the step it saved

    resumed = shoal_train(shared_root, "stopped", "--nproc", "2", extra=[*extra, f"train.steps={stopped_at + 2}"])
    check(resumed)
    assert f"(step {stopped_at})" in resumed.stderr
    assert sorted(losses(tmp_path / "stopped")) == list(range(1, stopped_at + 3))
