import pytest
import torch

from shoal.errors import CheckpointError
from shoal.train.checkpoint import CheckpointManager, verify


def state(step):
    return {"model": {"w": torch.full((4, 4), float(step))}, "step": step, "rng": torch.get_rng_state()}


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_save_load_and_keep_last(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep=2, warn=lambda m: None)
    for step in (1, 2, 3):
        manager.save(step, state(step))
    assert [p.name for p in manager.step_dirs()] == ["step_00000002", "step_00000003"]
    latest = manager.latest_valid()
    loaded = manager.load(latest, like=state(0))
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.full((4, 4), 3.0))
    assert verify(latest)["step"] == 3
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_checkpoint_falls_back_and_is_left_alone(tmp_path, damage):
    warnings = []
    manager = CheckpointManager(tmp_path, keep=3, warn=warnings.append)
    manager.save(1, state(1))
    newest = manager.save(2, state(2))
    target = newest / ("manifest.json" if damage == "manifest" else "__0_0.distcp")
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.unlink()
    before = snapshot(tmp_path)
    assert manager.latest_valid().name == "step_00000001"
    assert len(warnings) == 1 and "step_00000002" in warnings[0] and "\n" not in warnings[0]
    with pytest.raises(CheckpointError):
        manager.load(newest, like=state(0))
    assert snapshot(tmp_path) == before  # nothing was repaired, deleted or overwritten


def test_saving_over_a_corrupt_step_keeps_it_aside(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, warn=lambda m: None)
    broken = manager.save(5, state(5))
    (broken / "__0_0.distcp").write_bytes(b"garbage")
    manager.save(5, state(5))
    assert manager.load(tmp_path / "step_00000005", like=state(0))["step"] == 5
    aside = list(tmp_path.glob("step_00000005.superseded-*"))
    assert len(aside) == 1 and (aside[0] / "__0_0.distcp").read_bytes() == b"garbage"


def test_only_corrupt_checkpoints_is_an_error(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, warn=lambda m: None)
    (manager.save(1, state(1)) / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        manager.latest_valid()
    assert CheckpointManager(tmp_path / "empty").latest_valid() is None


def test_load_refuses_a_state_without_what_the_caller_needs(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, warn=lambda m: None)
    path = manager.save(1, {"model": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="lacks step"):
        manager.load(path, like=state(0))


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"format": "shoal.checkpoint/2"}', '{"files": {}}'])
def test_malformed_manifest_is_a_checkpoint_error(tmp_path, manifest):
    manager = CheckpointManager(tmp_path, keep=3, warn=lambda m: None)
    path = manager.save(1, state(1))
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match="malformed"):
        verify(path)


def test_set_aside_after_keeps_newer_checkpoints_out_of_rotation(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, warn=lambda m: None)
    for step in (2, 4, 6):
        manager.save(step, state(step))
    moved = manager.set_aside_after(2)
    assert sorted(p.name.split(".")[0] for p in moved) == ["step_00000004", "step_00000006"]
    assert [p.name for p in manager.step_dirs()] == ["step_00000002"]
    manager.save(3, state(3))  # the new future is kept, not rotated away by the old, higher steps
    assert [p.name for p in manager.step_dirs()] == ["step_00000002", "step_00000003"]
    assert all(p.is_dir() and (p / "__0_0.distcp").is_file() for p in moved)
