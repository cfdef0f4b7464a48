"""Quantized bundles: each CPU method writes a bundle that loads, generates and stays within its documented bits per
byte bound of the original; the lineage is in its config; bad requests and damaged bundles are one-line errors."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from shoal.bundle import load_model
from shoal.compress.make import compress_model
from shoal.errors import ShoalError
from shoal.eval.data import evaluation_documents
from shoal.eval.scoring import score_documents
from shoal.io import describe_files
from shoal.serve.engine import Engine, Request

from ..cli.test_cli import assert_one_line_error
from ..conftest import shoal

BOUNDS = {"int8-wo": 0.01, "int8-dyn": 0.02, "int4-wo": 0.05}  # relative bpb increase allowed (docs/compression.md)


@pytest.fixture(scope="module")
def documents(trained_run):
    _, docs = evaluation_documents(load_model(trained_run), [])
    return list(docs)


def bpb(loaded, documents) -> float:
    return score_documents(loaded.model, loaded.tokenizer, documents).bits_per_byte()


@pytest.fixture(scope="module")
def original_bpb(trained_run, documents):
    return bpb(load_model(trained_run), documents)


@pytest.mark.parametrize("method", list(BOUNDS))
def test_each_method_loads_generates_and_keeps_its_quality(trained_run, documents, original_bpb, method, tmp_path):
    out = tmp_path / method
    result = shoal("compress", str(trained_run), "--quantize", method, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"bundle written to {out}" in result.stdout
    loaded = load_model(out)
    assert loaded.info["quantization"]["method"] == method and loaded.info["lineage"]["parent"] == str(trained_run)
    assert loaded.info["dataset_fingerprint"] == load_model(trained_run).info["dataset_fingerprint"]
    assert type(loaded.model.layers[0].attention.wq.weight).__name__ != "Parameter"  # a torchao tensor
    assert loaded.model.output.weight is loaded.model.tok_embeddings.weight  # still tied, in bf16
    (sequence,) = Engine(loaded.model, max_batch=1).run([Request([5, 6, 7], 8)])
    assert len(sequence.tokens) == 8
    quantized = bpb(loaded, documents)
    assert quantized <= original_bpb * (1 + BOUNDS[method]), (quantized, original_bpb)
    assert (out / "model.safetensors").stat().st_size < loaded.model.num_params() * 2  # smaller than bf16


def test_bad_requests_write_nothing(trained_run, tmp_path):
    out = tmp_path / "never"
    for kwargs, words in (({"quantize": "int3"}, "unknown quantization"), ({"quantize": "fp8"}, "fp8 needs a GPU"),
                          ({"quantize": "int4-wo", "group_size": 48}, "--group-size"),
                          ({"quantize": "int8-wo", "device": "cuda"}, "no CUDA GPU"),
                          ({"quantize": "int4-wo", "group_size": 128}, "do not divide")):  # d_ff is 192
        with pytest.raises(ShoalError, match=words):
            compress_model(trained_run, out, **kwargs)
    assert_one_line_error(shoal("compress", str(trained_run), "--quantize", "fp8", "--out", str(out)), "fp8 needs")
    first = tmp_path / "int8"
    compress_model(trained_run, first, "int8-wo")
    with pytest.raises(ShoalError, match="already quantized"):
        compress_model(first, out, "int4-wo")
    assert not out.exists()


def test_a_damaged_quantized_bundle_is_refused(trained_run, tmp_path):
    bundle = tmp_path / "int8"
    compress_model(trained_run, bundle, "int8-wo")
    weights = bundle / "model.safetensors"
    save_file(load_file(weights), weights)  # the torchao metadata gone; checksums made to match again
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = describe_files(bundle, list(manifest["files"]))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(shoal("generate", str(bundle), "def"), "metadata")
    mismatched = tmp_path / "mismatched"
    compress_model(trained_run, mismatched, "int8-wo")
    config = json.loads((mismatched / "config.json").read_text())
    config["model"]["d_ff"] += 64  # a config that disagrees with the weights, checksums made to match
    (mismatched / "config.json").write_text(json.dumps(config))
    manifest = json.loads((mismatched / "manifest.json").read_text())
    manifest["files"] = describe_files(mismatched, list(manifest["files"]))
    (mismatched / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShoalError, match="do not match the model config"):
        load_model(mismatched)
    config = json.loads((bundle / "config.json").read_text())
    config["quantization"]["method"] = "int2"
    (bundle / "config.json").write_text(json.dumps(config))
    assert_one_line_error(shoal("generate", str(bundle), "def"), "corrupt")  # the checksum no longer matches
