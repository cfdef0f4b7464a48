"""A checkpoint written under one layout loads under any other with the same weights and the same next step."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from shoal.bundle import export_bundle, load_bundle, load_run

from .runs import check, losses, shoal_train, torchrun

FIRST = ["train.steps=4", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def fsdp_run(shared_root, tmp_path_factory) -> Path:
    """Four steps under FSDP on two processes, checkpointed at step 4."""
    out = tmp_path_factory.mktemp("reshard")
    check(shoal_train(shared_root, "fsdp2", "--nproc", "2", extra=[*FIRST, f'train.out_dir="{out}"']))
    return out / "fsdp2"


def gathered(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_fsdp_checkpoint_loads_under_other_layouts_and_one_process(fsdp_run, tmp_path):
    checkpoint = fsdp_run / "checkpoints" / "step_00000004"
    one = load_run(fsdp_run)  # one plain process: DCP consolidates the shards
    assert one.info["step"] == 4
    reference = {k: v for k, v in one.model.state_dict().items() if k != "output.weight"}
    next_losses = {}
    for nproc, layout in [(4, ["parallel.dp_shard=4"]), (4, ["parallel.dp_shard=2", "parallel.tp=2"]),
                          (2, ["parallel.dp_shard=2"])]:
        out = tmp_path / f"{nproc}-{'-'.join(layout)}.safetensors"
        # train.steps=6 as in the single-process continuation below: the learning-rate schedule depends on it.
        check(torchrun(nproc, "load_and_gather.py", str(fsdp_run), str(checkpoint), str(out), "train.steps=6", *layout))
        weights, meta = gathered(out)
        assert weights.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(weights[name], tensor), (layout, name)
        assert meta["step"] == "6"
        next_losses[meta["layout"]] = float(meta["next_loss"])

    # Going on from the checkpoint in one process gives the same step-6 loss as going on in 2 or 4: the weights and
    # the optimizer's moments were resharded alike.
    single = fsdp_run.parent / "single"
    shutil.copytree(fsdp_run, single)
    check(shoal_train(fsdp_run.parents[1], "single", extra=["train.steps=6", f'train.out_dir="{fsdp_run.parent}"']))
    single_loss = losses(single)[6]
    for layout, loss in next_losses.items():
        assert loss == pytest.approx(single_loss, rel=1e-5), layout


def test_export_consolidates_a_sharded_checkpoint(fsdp_run, tmp_path):
    bundle = load_bundle(export_bundle(fsdp_run, tmp_path / "bundle"))
    run = load_run(fsdp_run)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], tensor), name
