"""Pruning: magnitude and 2:4 pruning zero exactly the smallest weights; channel and head pruning keep the units that
matter (a model whose removed channels or heads were silent computes exactly what it did), shrink the matrices, the
parameter count and the KV cache; the CLI writes bundles that load and generate, and refuses bad requests in one
line."""

from __future__ import annotations

import json

import pytest
import torch

from shoal.bundle import load_model
from shoal.compress.make import compress_model
from shoal.compress.prune import block_linears, check_pruning, is_2_4_sparse, magnitude_prune, prune_2_4
from shoal.compress.structured import head_layout, prune_channels, prune_heads
from shoal.config import ModelConfig, MoEConfig
from shoal.errors import ShoalError
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine, Request

from ..cli.test_cli import assert_one_line_error
from ..conftest import shoal


def small_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                                        max_seq_len=32), 50)).eval()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_zeroes_the_smallest_weights(scope):
    model = small_model()
    before = [m.weight.clone() for m in block_linears(model)]
    share = magnitude_prune(model, 0.4, scope)
    assert share == pytest.approx(0.4, abs=0.01)
    groups = [(torch.cat([b.flatten() for b in before]), torch.cat([m.weight.flatten() for m in block_linears(model)]))]
    if scope == "layer":
        groups = [(b.flatten(), m.weight.flatten()) for b, m in zip(before, block_linears(model))]
    for original, pruned in groups:
        zeroed = pruned == 0
        assert original[zeroed].abs().max() <= original[~zeroed].abs().min()
        assert zeroed.float().mean() == pytest.approx(0.4, abs=0.01)
        assert torch.equal(pruned[~zeroed], original[~zeroed])
    assert model.output.weight is model.tok_embeddings.weight and model.output.weight.count_nonzero() > 0


def test_channel_pruning_removes_silent_channels_without_changing_the_output():
    model = small_model()
    silent = torch.arange(0, 64, 4)  # a quarter of each layer's channels write nothing to the residual stream
    with torch.no_grad():
        for block in model.layers:
            block.feed_forward.w2.weight[:, silent] = 0
    ids = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(1))
    pruned = prune_channels(model, 0.25, [ids[0], ids[1]])
    assert pruned.config.d_ff == 48 and pruned.layers[0].feed_forward.w1.weight.shape == (48, 32)
    assert model.num_params() - pruned.num_params() == 2 * 3 * 32 * 16
    with torch.no_grad():
        assert torch.allclose(pruned(ids), model(ids), atol=1e-5)


def test_2_4_pruning_zeroes_the_two_smallest_of_every_four_inputs():
    model = small_model()
    before = [m.weight.clone() for m in block_linears(model)]
    assert prune_2_4(model) == pytest.approx(0.5)
    for original, module in zip(before, block_linears(model)):
        assert is_2_4_sparse(module.weight) and not is_2_4_sparse(original)
        groups, kept = original.view(-1, 4).abs(), module.weight.view(-1, 4) != 0
        assert torch.equal(kept.sum(-1), torch.full((groups.shape[0],), 2))
        assert (groups.masked_fill(~kept, float("inf")).min(-1).values
                >= groups.masked_fill(kept, float("-inf")).max(-1).values).all()


def test_head_layouts_keep_grouped_query_attention_even():
    # (key/value heads kept, query heads per key/value head)
    assert head_layout(4, 2, 0.5) == (2, 1)  # one query head of each group, the KV cache stays
    assert head_layout(8, 2, 0.25) == (2, 3)
    assert head_layout(8, 8, 0.5) == (4, 1)
    assert head_layout(4, 4, 0.25) == (3, 1)
    assert head_layout(4, 2, 0.75) == (1, 1)
    with pytest.raises(ShoalError, match="none to prune"):
        head_layout(1, 1, 0.5)


@pytest.mark.parametrize("fraction, silent, layout", [
    (0.5, (1, 2), (2, 2)),  # one query head of each group goes: (n_heads, n_kv_heads) = (2, 2)
    (0.75, (0, 1, 3), (1, 1)),  # a whole key/value group goes too, and with it part of the KV cache
])
def test_head_pruning_removes_silent_heads_without_changing_the_output(fraction, silent, layout):
    model = small_model()
    head_dim = model.head_dim
    with torch.no_grad():
        for block in model.layers:  # these query heads write nothing to the residual stream
            for head in silent:
                block.attention.wo.weight[:, head * head_dim:(head + 1) * head_dim] = 0
    ids = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(1))
    pruned = prune_heads(model, fraction, [ids[0], ids[1]])
    assert (pruned.config.n_heads, pruned.config.n_kv_heads, pruned.head_dim) == (*layout, head_dim)
    removed_query, removed_kv = 4 - layout[0], 2 - layout[1]
    # Per layer: wq rows and wo columns of each removed query head, wk and wv rows of each removed group.
    assert model.num_params() - pruned.num_params() == 2 * (2 * removed_query + 2 * removed_kv) * 32 * head_dim
    with torch.no_grad():
        assert torch.allclose(pruned(ids), model(ids), atol=1e-5)
    assert pruned.new_cache(1, 8).k[0].shape[1] == layout[1]
    (sequence,) = Engine(pruned, max_batch=1).run([Request([3, 4], 5)])
    assert len(sequence.tokens) == 5


def test_pruning_refuses_what_it_cannot_do_well():
    with pytest.raises(ShoalError, match="removes none"):
        head_layout(4, 2, 0.1)
    torch.manual_seed(0)
    moe = Transformer(resolve_model_config(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=16,
                                                       moe=MoEConfig(n_experts=4)), 50))
    assert not any(m is moe.layers[0].feed_forward.router.gate for m in block_linears(moe))  # routers stay
    for method in ("2:4", "channels"):
        with pytest.raises(ShoalError, match="mixture-of-experts"):
            check_pruning(method, 0.5, "global", moe)


def test_the_cli_prunes_and_quantizes_into_bundles(trained_run, tmp_path):
    out = tmp_path / "pruned"
    result = shoal("compress", str(trained_run), "--prune", "channels", "--sparsity", "0.25", "--quantize", "int8-wo",
                   "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded, original = load_model(out), load_model(trained_run)
    assert loaded.model.config.d_ff == original.model.config.d_ff * 3 // 4
    assert loaded.model.num_params() < original.model.num_params()
    steps = json.loads((out / "config.json").read_text())["provenance"]["lineage"]["steps"]
    assert [s["method"] for s in steps] == ["prune-channels", "int8-wo"]
    (sequence,) = Engine(loaded.model, max_batch=1).run([Request([3, 4], 6)])
    assert len(sequence.tokens) == 6
    half = tmp_path / "half"
    compress_model(trained_run, half, prune="channels", sparsity=0.5, dtype="bf16")
    assert load_model(half).model.tok_embeddings.weight.dtype == torch.bfloat16  # loads as it was stored
    zeros = tmp_path / "zeros"
    assert shoal("compress", str(trained_run), "--prune", "magnitude", "--sparsity", "0.3", "--out",
                 str(zeros)).returncode == 0
    weights = block_linears(load_model(zeros).model)
    assert sum(int((m.weight == 0).sum()) for m in weights) / sum(m.weight.numel() for m in weights) == \
        pytest.approx(0.3, abs=0.01)
    heads = tmp_path / "heads"
    assert shoal("compress", str(trained_run), "--prune", "heads", "--sparsity", "0.5", "--out",
                 str(heads)).returncode == 0
    fewer = load_model(heads).model
    assert (fewer.config.n_heads, fewer.config.n_kv_heads, fewer.head_dim) == (2, 2, 16)
    sparse = tmp_path / "sparse"
    compress_model(trained_run, sparse, prune="2:4", quantize="int8-wo")
    steps = json.loads((sparse / "config.json").read_text())["provenance"]["lineage"]["steps"]
    assert [s["method"] for s in steps] == ["prune-2:4", "int8-wo"] and steps[0]["zero_share"] == 0.5


def test_bad_pruning_requests_write_nothing(trained_run, tmp_path):
    out = tmp_path / "never"
    bundle = tmp_path / "bundle"
    assert shoal("export", str(trained_run), "--out", str(bundle)).returncode == 0
    for kwargs, words in (({"prune": "rows"}, "unknown pruning"), ({"prune": "magnitude", "sparsity": 1.5}, "--sparsity"),
                          ({"prune": "magnitude", "scope": "row"}, "--prune-scope"), ({}, "say what to do"),
                          ({"prune": "channels", "sparsity": 0.01}, "removes none")):
        with pytest.raises(ShoalError, match=words):
            compress_model(trained_run, out, **kwargs)
    assert_one_line_error(shoal("compress", str(bundle), "--prune", "channels", "--out", str(out)), "--data")
    assert not out.exists()
    # From a bundle, the lineage names its parent's weights by the checksum its manifest holds.
    compress_model(bundle, tmp_path / "from-bundle", "int8-wo")
    lineage = json.loads((tmp_path / "from-bundle" / "config.json").read_text())["provenance"]["lineage"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert lineage["parent_weights_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
