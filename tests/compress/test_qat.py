"""Quantization-aware training: the fake-quantized model computes what the quantized model will, a QAT run trains
through it (sharded exactly like one process), checkpoints plain weights and is quantized with the method it trained
for, and QAT recovery fine-tunes an existing model before quantizing it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torchao.quantization.qat.linear import FakeQuantizedLinear

from shoal.bundle import load_model
from shoal.compress.make import compress_model
from shoal.compress.qat import prepare_qat
from shoal.compress.quantize import quantize_model
from shoal.config import ModelConfig
from shoal.errors import ShoalError
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine, Request
from shoal.train.run import run_training

from ..parallel.runs import check, losses, shoal_train
from ..train.test_trainer import build_trainer


def test_fake_quantization_simulates_the_deployed_int4_model():
    torch.manual_seed(0)
    # init_std 0.1: weights large enough for int4's rounding to show in the logits.
    model = Transformer(resolve_model_config(ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                                                         max_seq_len=32, init_std=0.1), 64)).eval()
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    simulated = copy.deepcopy(model)
    prepare_qat(simulated, "int4-wo", 32)
    assert isinstance(simulated.layers[0].feed_forward.w1, FakeQuantizedLinear)
    assert not isinstance(simulated.output, FakeQuantizedLinear)  # the tied head stays as it is
    assert simulated.state_dict().keys() == model.state_dict().keys()
    deployed = quantize_model(copy.deepcopy(model), "int4-wo", 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, fake = model(ids).float(), simulated(ids).float()
        real = deployed(ids).float()
    # What is left is weights that bf16 rounding moves across an int4 rounding boundary before quantization.
    assert (fake - real).norm() < 0.5 * (plain - real).norm()


def test_a_qat_run_checkpoints_plain_weights_and_compresses_to_its_method(small_config, shared_root, tmp_path):
    small_config.train.qat, small_config.train.steps = "int4-wo", 4
    trainer = build_trainer(small_config)
    assert all(isinstance(m, FakeQuantizedLinear) for m in (trainer.model.layers[0].attention.wq,
                                                            trainer.model.layers[1].feed_forward.w2))
    summary = run_training(small_config, resume="none")
    assert summary["status"] == "completed" and summary["val_loss"] < summary["unigram_entropy_nats"] + 1
    run = small_config.run_dir
    # Sharded over two gloo processes (FSDP), QAT trains exactly like one process.
    sharded = shoal_train(shared_root, "fsdp", "--nproc", "2", extra=["train.steps=4", 'train.qat="int4-wo"',
                                                                      f'train.out_dir="{tmp_path}"'])
    check(sharded)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(run), rel=1e-5)
    plain = load_model(run).model  # the checkpoint holds plain weights under the usual names
    assert type(plain.layers[0].attention.wq) is torch.nn.Linear
    out = tmp_path / "int4"
    compress_model(run, out)  # no --quantize: the method the run trained for
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["method"] == "int4-wo"
    assert config["provenance"]["lineage"]["steps"] == [{"method": "int4-wo",
                                                         "settings": {"group_size": 32, "trained_for": True}}]
    (sequence,) = Engine(load_model(out).model, max_batch=1).run([Request([3, 4], 4)])
    assert len(sequence.tokens) == 4
    # Once pruned, the weights are no longer the ones QAT trained: nothing is quantized by default.
    compress_model(run, tmp_path / "pruned", prune="channels", sparsity=0.5)
    with pytest.raises(ShoalError, match="say what to do"):
        compress_model(tmp_path / "pruned", tmp_path / "never")
    small_config.train.qat_group_size = 256  # wider than the 64-wide layers
    with pytest.raises(ShoalError, match="groups of 256"):
        build_trainer(small_config)


def test_qat_recovery_fine_tunes_an_existing_model_before_quantizing(trained_run, tmp_path):
    out = tmp_path / "qat"
    compress_model(trained_run, out, quantize="int4-wo", recover_steps=3, recover_lr=3e-3)
    steps = json.loads((out / "config.json").read_text())["provenance"]["lineage"]["steps"]
    assert [s["method"] for s in steps] == ["recover", "int4-wo"]
    assert steps[0]["settings"]["qat"] == "int4-wo" and steps[0]["val_loss"][1] < steps[0]["val_loss"][0]
    assert load_model(out).info["quantization"]["method"] == "int4-wo"
