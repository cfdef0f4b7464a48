import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shoal.config import load_config
from shoal.data.prepare import prepare_dataset
from shoal.errors import CheckpointError, ConfigError, TrainingError
from shoal.train.metrics import read_metrics
from shoal.train.run import run_training
from shoal.train.trainer import Trainer

from ..conftest import small_overrides


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["step"]: r["loss"] for r in records}


def test_training_learns_and_leaves_a_complete_run_folder(small_config):
    small_config.train.steps = 80
    small_config.train.eval_every = 40
    small_config.train.checkpoint_every = 20
    summary = run_training(small_config)
    run_dir = Path(summary["run_dir"])
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 81))
    assert losses[80] < losses[1] - 1.0  # a real drop, from ~ln(512) = 6.2 nats
    assert summary["val_loss"] < summary["unigram_entropy_nats"] - 0.3  # it uses context, not just token counts
    for name in ("config.json", "run.json", "metrics.jsonl", "loss.png", "summary.json", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["vocab_size"] % 64 == 0 and saved["model"]["n_kv_heads"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000040", "step_00000060",
                                                                           "step_00000080"]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [40, 80]
    assert all(0 < r["mfu"] < 1 and r["tokens_per_second"] > 0 for r in records if "mfu" in r)


def test_rerun_of_a_finished_run_does_no_training(small_config):
    small_config.train.steps = 4
    first = run_training(small_config)
    metrics = (Path(first["run_dir"]) / "metrics.jsonl").read_text()
    second = run_training(small_config)
    assert second["step"] == 4 and (Path(first["run_dir"]) / "metrics.jsonl").read_text() == metrics


def shoal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", *args]


def test_interrupt_and_resume_is_bit_identical(shared_root, tmp_path):
    """N steps straight == SIGTERM part-way (checkpoint on the signal) + resume, loss for loss."""
    steps = 120  # long enough that the signal lands mid-run
    sets = small_overrides(shared_root) + [f"train.steps={steps}", "train.checkpoint_every=1000",
                                           "train.eval_every=1000", 'train.dtype="auto"']  # bf16 where the CPU has it
    straight_cfg = load_config("tiny", sets + [f'train.out_dir="{tmp_path / "straight"}"'])
    straight = step_losses(Path(run_training(straight_cfg)["run_dir"]))

    args = ["train"] + [a for s in sets + [f'train.out_dir="{tmp_path / "resumed"}"'] for a in ("--set", s)]
    run_dir = tmp_path / "resumed" / "tiny"
    proc = subprocess.Popen(shoal_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and len(step_losses(run_dir)) >= 10:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted at step" in err
    stopped_at = max(step_losses(run_dir))
    assert stopped_at < steps

    resumed = subprocess.run(shoal_cmd(*args), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {stopped_at})" in resumed.stderr
    assert step_losses(run_dir) == straight  # exact float equality, every step


def build_trainer(cfg):
    data = prepare_dataset(cfg.data, progress=False)
    return Trainer(cfg, data.windows("train", cfg.train.seq_len), data.windows("val", cfg.train.seq_len),
                   data.manifest["vocab_size"], data.fingerprint)


def test_non_finite_loss_skips_steps_then_stops(small_config):
    small_config.train.max_bad_steps = 3
    trainer = build_trainer(small_config)
    with torch.no_grad():
        trainer.model.norm.weight[0] = math.nan  # corrupted weights: every loss is NaN
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    records = []
    with pytest.raises(TrainingError, match="non-finite for 3 steps in a row"):
        trainer.fit(records.append, save=lambda: None)
    assert [r["skipped"] for r in records] == [True, True]  # the third raised before it was logged
    torch.testing.assert_close(trainer.model.state_dict(), before, rtol=0, atol=0, equal_nan=True)
    for state in trainer.optimizer.state.values():  # the optimizer never stepped
        assert float(state["step"]) == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()


def test_resume_refuses_another_model_shape(small_config):
    small_config.train.steps = 4
    run_training(small_config)
    small_config.model.d_model = 128
    with pytest.raises(CheckpointError, match="model.d_model: checkpoint 64, config 128"):
        run_training(small_config)


def test_fresh_start_refuses_to_overwrite_checkpoints(small_config):
    small_config.train.steps = 4
    summary = run_training(small_config)
    run_dir = Path(summary["run_dir"])
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run_training(small_config, resume="none")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_layouts_needing_more_processes_are_refused(small_config):
    small_config.parallel.dp_shard = 2
    with pytest.raises(ConfigError, match="needs 2 processes"):
        build_trainer(small_config)


def test_vocab_below_the_tokenizer_is_a_config_error(small_config):
    small_config.model.vocab_size = 100
    with pytest.raises(ConfigError, match="below the tokenizer's 512 tokens"):
        build_trainer(small_config)


def test_resume_past_a_corrupt_checkpoint_sets_newer_ones_aside(small_config):
    small_config.train.steps = 8
    small_config.train.checkpoint_every = 2
    run_dir = Path(run_training(small_config)["run_dir"])
    checkpoints = run_dir / "checkpoints"
    newest = checkpoints / "step_00000008" / "__0_0.distcp"
    corrupt = newest.read_bytes()[:-1]
    newest.write_bytes(corrupt)
    small_config.train.steps = 12
    summary = run_training(small_config)
    assert summary["step"] == 12 and summary["checkpoint"].endswith("step_00000012")
    assert sorted(p.name for p in checkpoints.iterdir() if "superseded" not in p.name) == [
        "step_00000008", "step_00000010", "step_00000012"]
    aside = [p for p in checkpoints.iterdir() if p.name.startswith("step_00000008.superseded-")]
    assert len(aside) == 1 and (aside[0] / "__0_0.distcp").read_bytes() == corrupt  # kept as it was, for inspection
    assert sorted(step_losses(run_dir)) == list(range(1, 13))


def test_resume_from_a_checkpoint_not_written_by_the_trainer_is_refused(small_config, tmp_path):
    from shoal.train.checkpoint import CheckpointManager

    foreign = CheckpointManager(tmp_path / "foreign").save(3, {"model": {"w": torch.zeros(2)}, "note": "other tool"})
    with pytest.raises(CheckpointError, match="holds no training state"):
        run_training(small_config, resume=str(foreign))
    assert not Path(small_config.run_dir).exists()
