"""Expert parallel trains exactly like one process, and its checkpoints reshard to other expert layouts."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from shoal.bundle import export_bundle, load_bundle, load_run
from shoal.config import load_config
from shoal.train.checkpoint import verify
from shoal.train.metrics import read_metrics
from shoal.train.run import run_training

from ..conftest import small_overrides
from .runs import check, losses, shoal_train

# Four experts, top-2, in both layers. Micro-batches of 4 sequences under every layout: the balancing loss is a
# function of each micro-batch's routing, so the single-process reference must group sequences the same way.
MOE = ["model.moe.n_experts=4", "model.moe.top_k=2", "model.moe.d_ff=96", "model.moe.aux_loss_coef=0.01",
       "model.moe.z_loss_coef=0.001", "train.micro_batch_size=4", "train.steps=5", "train.checkpoint_every=5"]

LAYOUTS = {
    "ep2": (2, ["parallel.ep=2"]),
    "ep2-fsdp2": (4, ["parallel.ep=2", "parallel.dp_shard=2"]),
    "ep2-hsdp2-block-ac": (4, ["parallel.ep=2", "parallel.dp_replicate=2", 'parallel.activation_checkpoint="block"']),
}


def moe_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "moe_load" in r}


@pytest.fixture(scope="module")
def single_moe_run(shared_root, tmp_path_factory) -> Path:
    cfg = load_config("tiny", small_overrides(shared_root) + MOE)
    cfg.train.out_dir = str(tmp_path_factory.mktemp("single-moe") / "runs")
    return Path(run_training(cfg)["run_dir"])


@pytest.mark.parametrize("name", LAYOUTS)
def test_expert_parallel_matches_the_single_process_losses(name, shared_root, tmp_path, single_moe_run):
    nproc, settings = LAYOUTS[name]
    check(shoal_train(shared_root, name, "--nproc", str(nproc), extra=[*MOE, *settings, f'train.out_dir="{tmp_path}"']))
    expected, got = losses(single_moe_run), losses(tmp_path / name)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5]
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step
    # Adam hardly notices a gradient scaled by a constant, the gradient norm does: the experts' gradients are means.
    norms = {name: {r["step"]: r["grad_norm"] for r in read_metrics(run / "metrics.jsonl") if "grad_norm" in r}
             for name, run in (("single", single_moe_run), ("parallel", tmp_path / name))}
    for step, norm in norms["single"].items():
        assert norms["parallel"][step] == pytest.approx(norm, rel=1e-5), step
    # The routing figures are reduced over the ranks: the same loads and balancing losses as one process.
    single, parallel = moe_records(single_moe_run), moe_records(tmp_path / name)
    for step in expected:
        flat = [share for layer in single[step]["moe_load"] for share in layer]
        assert [share for layer in parallel[step]["moe_load"] for share in layer] == pytest.approx(flat, abs=1e-5)
        assert parallel[step]["moe_aux_loss"] == pytest.approx(single[step]["moe_aux_loss"], rel=1e-5)
        assert parallel[step]["moe_z_loss"] == pytest.approx(single[step]["moe_z_loss"], rel=1e-5)
    assert verify(tmp_path / name / "checkpoints" / "step_00000005")["step"] == 5
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert "ep=2" in summary["layout"] and summary["expert_load"]["max_mean_ratio"] >= 1


def test_expert_parallel_checkpoint_reshards(shared_root, tmp_path, single_moe_run):
    """Written with the experts split over 2 ranks; read whole by one process and continued there and under ep=2."""
    out = tmp_path / "runs"
    check(shoal_train(shared_root, "ep", "--nproc", "2", extra=[*MOE, "parallel.ep=2", f'train.out_dir="{out}"']))
    run = load_run(out / "ep")
    reference = load_run(single_moe_run)
    for name, tensor in reference.model.state_dict().items():
        # Whole-tensor error: Adam turns rounding-level gradient differences of rarely routed weights into
        # visible elementwise ones, while experts in the wrong place would be off by order one.
        error = (run.model.state_dict()[name] - tensor).norm() / tensor.norm().clamp_min(1e-12)
        assert error < 1e-3, (name, error.item())
    experts = run.model.layers[0].feed_forward.experts.w1
    assert experts.shape[0] == 4  # all four experts, gathered from the two ranks
    bundle = load_bundle(export_bundle(out / "ep", tmp_path / "bundle"))  # exports and loads as a plain MoE model
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(tokens), run.model.eval()(tokens))
    # Continue to step 7 in one process and with ep=2: same losses (weights and optimizer moments resharded alike).
    shutil.copytree(out / "ep", out / "continued-single")
    check(shoal_train(shared_root, "continued-single", extra=[*MOE, "train.steps=7", f'train.out_dir="{out}"']))
    check(shoal_train(shared_root, "ep", "--nproc", "2", extra=[*MOE, "parallel.ep=2", "train.steps=7",
                                                                f'train.out_dir="{out}"']))
    single, parallel = losses(out / "continued-single"), losses(out / "ep")
    for step in (6, 7):
        assert parallel[step] == pytest.approx(single[step], rel=1e-5), step
