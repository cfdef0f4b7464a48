"""Every layout trains exactly like one process: same data, same losses (fp32, fixed seed)."""

import json
from pathlib import Path

import pytest

from shoal.config import load_config
from shoal.train.checkpoint import verify
from shoal.train.metrics import read_metrics
from shoal.train.run import run_training

from ..conftest import small_overrides
from .runs import check, free_port, losses, shoal_train, shoal_train_async

STEPS = ["train.steps=5", "train.checkpoint_every=5"]


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r}


@pytest.fixture(scope="module")
def single_process_run(shared_root, tmp_path_factory) -> Path:
    cfg = load_config("tiny", small_overrides(shared_root) + STEPS)
    cfg.train.out_dir = str(tmp_path_factory.mktemp("single") / "runs")
    return Path(run_training(cfg)["run_dir"])


@pytest.fixture(scope="module")
def single_process_losses(single_process_run) -> dict[int, float]:
    return losses(single_process_run)


LAYOUTS = {
    # name: (processes, [parallel] settings)
    "ddp": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
    "fsdp": (2, []),  # dp_shard = -1: every process shards
    "tp": (2, ["parallel.tp=2"]),
    "fsdp-tp": (4, ["parallel.dp_shard=2", "parallel.tp=2"]),
    "hsdp-selective-ac": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=2", 'parallel.activation_checkpoint="selective"']),
    "fsdp-block-ac-async-checkpoint": (2, ['parallel.activation_checkpoint="block"', "train.async_checkpoint=true"]),
    "fsdp-compiled-blocks": (2, ["train.compile=true"]),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_matches_the_single_process_losses(name, shared_root, tmp_path, single_process_losses,
                                                  single_process_run):
    nproc, settings = LAYOUTS[name]
    result = shoal_train(shared_root, name, "--nproc", str(nproc), extra=[*STEPS, *settings,
                                                                          f'train.out_dir="{tmp_path}"'])
    check(result)
    got = losses(tmp_path / name)
    assert sorted(got) == sorted(single_process_losses) == [1, 2, 3, 4, 5]
    for step, expected in single_process_losses.items():
        assert got[step] == pytest.approx(expected, rel=1e-5), step
    expected_val = val_losses(single_process_run)
    assert sorted(val_losses(tmp_path / name)) == sorted(expected_val) == [4, 5]  # validation split over the ranks
    for step, val in val_losses(tmp_path / name).items():
        assert val == pytest.approx(expected_val[step], rel=1e-5), step
    assert f"on {nproc} processes" in result.stderr
    peaks = json.loads((tmp_path / name / "summary.json").read_text())["peak_memory_bytes_per_rank"]
    assert len(peaks) == nproc and all(isinstance(p, int) and p > 2**20 for p in peaks)
    assert verify(tmp_path / name / "checkpoints" / "step_00000005")["step"] == 5  # complete, checksummed


def test_two_nodes_meet_through_c10d_rendezvous(shared_root, tmp_path, single_process_losses):
    """Two "nodes" of one process each on loopback, started separately like on two machines."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [shoal_train_async(shared_root, "two-nodes", "--nnodes", "2", "--node-rank", str(rank), "--rdzv", endpoint,
                               "--rdzv-id", "loopback-test", extra=[*STEPS, f'train.out_dir="{tmp_path}"'])
             for rank in (0, 1)]
    for node in nodes:
        stdout, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-5000:]
    got = losses(tmp_path / "two-nodes")
    for step, expected in single_process_losses.items():
        assert got[step] == pytest.approx(expected, rel=1e-5), step
