"""Layouts are checked against the world size and the model before any process starts work."""

import pytest

from shoal.config import ModelConfig, ParallelConfig
from shoal.errors import ConfigError
from shoal.models.transformer import resolve_model_config
from shoal.parallel.launch import LaunchSpec, torchrun_args
from shoal.parallel.mesh import Layout, check_layout_fits, resolve_layout

from ..cli.test_cli import assert_one_line_error, sets, shoal
from ..conftest import small_overrides


@pytest.mark.parametrize("world, settings, expected", [
    (1, {}, Layout(1, 1, 1)),
    (4, {}, Layout(1, 4, 1)),  # dp_shard = -1 takes every process
    (8, {"tp": 2}, Layout(1, 4, 2)),
    (8, {"dp_replicate": 2, "tp": 2}, Layout(2, 2, 2)),
    (4, {"dp_replicate": 2, "dp_shard": 2}, Layout(2, 2, 1)),
    (4, {"ep": 2}, Layout(1, 2, 1, ep=2)),  # expert-parallel ranks are data-parallel ranks too
    (8, {"dp_replicate": 2, "ep": 4}, Layout(2, 1, 1, ep=4)),
])
def test_resolve_layout(world, settings, expected):
    layout = resolve_layout(ParallelConfig(**settings), world)
    assert layout == expected and layout.world_size == world
    assert layout.dp == expected.dp_replicate * expected.dp_shard * expected.ep


@pytest.mark.parametrize("world, settings, message", [
    (2, {"dp_shard": 4}, "needs 4 processes but this run has 2; launch with --nproc 4"),
    (1, {"tp": 2, "dp_shard": 1}, "needs 2 processes but this run has 1"),
    (6, {"tp": 4}, "tp = 4 does not divide the 6 processes"),
    (6, {"ep": 4}, "parallel.ep . parallel.tp = 4 does not divide the 6 processes"),
])
def test_layouts_that_do_not_fit_the_world_are_refused(world, settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_layout(ParallelConfig(**settings), world)


def model(**kw):
    return resolve_model_config(ModelConfig(**{"d_model": 64, "n_heads": 4, "n_kv_heads": 2, **kw}), 512)


@pytest.mark.parametrize("layout, message", [
    (Layout(1, 1, 4), r"parallel.tp=4 must divide model.n_kv_heads \(2\)"),
    (Layout(1, 1, 8), r"parallel.tp=8 must divide model.n_heads \(4\)"),
    (Layout(1, 3, 1), "does not split over 3 data-parallel ranks"),
    (Layout(1, 4, 1), "train.micro_batch_size=3 does not divide"),
])
def test_layouts_that_do_not_fit_the_model_or_batch_are_refused(layout, message):
    with pytest.raises(ConfigError, match=message):
        check_layout_fits(layout, model(), seq_len=64, global_batch=16, micro_batch=3)


def test_launch_arguments():
    assert "--standalone" in torchrun_args(LaunchSpec(nproc=4))
    args = torchrun_args(LaunchSpec(nproc=8, nnodes=2, node_rank=1, rdzv="10.0.0.1:29500", rdzv_id="job7", max_restarts=3))
    assert {"--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500",
            "--rdzv-id=job7", "--max-restarts=3"} <= set(args) and "--standalone" not in args


@pytest.mark.parametrize("args, words", [
    (["--nproc", "0"], ["--nproc (0)"]),
    (["--nnodes", "2"], ["needs --rdzv HOST:PORT"]),
    (["--nnodes", "2", "--rdzv", "nohost"], ["HOST:PORT"]),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv", "h:1"], ["--node-rank must be in 0..1"]),
    (["--set", "parallel.dp_shard=0"], ["parallel.dp_shard"]),
    (["--set", 'parallel.activation_checkpoint="some"'], ["activation_checkpoint"]),
    (["--nproc", "2", "--set", "parallel.dp_shard=4"], ["needs 4 processes but this run has 2"]),
])
def test_bad_launch_options_are_one_line_errors(args, words, tmp_path, shared_root):
    result = shoal("train", *sets(small_overrides(shared_root)), "--set", f'train.out_dir="{tmp_path}"', *args,
                   cwd=tmp_path)
    assert_one_line_error(result, *words)
    assert not any(tmp_path.iterdir())
