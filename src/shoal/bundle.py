"""Inference bundles (model.safetensors + tokenizer.json + config.json) and loading a model from a run.

A bundle is what leaves training: it holds no optimizer state, loads without pickle, and
carries a manifest of sha256 checksums that is verified on every load.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from shoal import __version__
from shoal.config import ModelConfig, config_from_dict, model_config_from_dict
from shoal.data.governance.card import CARD_FILE
from shoal.data.tokenizer import load_tokenizer
from shoal.errors import CheckpointError, ShoalError
from shoal.hardware import pick_device
from shoal.io import atomic_write_json, describe_files, ensure_writable_dir, find_file_problem
from shoal.models.transformer import Transformer
from shoal.train.checkpoint import CheckpointManager, read_facts

BUNDLE_FORMAT = "shoal.bundle/1"
BUNDLE_FILES = ["model.safetensors", "tokenizer.json", "config.json"]
OPTIONAL_FILES = [CARD_FILE]  # the training data's card, when the run has one


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    info: dict[str, Any]  # where it came from: run, checkpoint step, dataset fingerprint


def _model_from_state(model_cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    model = Transformer(model_cfg).to(state["tok_embeddings.weight"].dtype)  # in the precision it was stored in
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that disagree with the config
        raise CheckpointError(f"weights do not match the model config: {str(e).splitlines()[-1].strip()}") from None
    # A tied lm head is stored once (safetensors refuses shared tensors); anything else missing is an error.
    missing = [k for k in missing if not (model_cfg.tie_embeddings and k == "output.weight")]
    if missing or unexpected:
        raise CheckpointError(f"weights do not match the model config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def load_run(run_dir: str | Path) -> LoadedModel:
    """The newest valid checkpoint of a training run, with the run's tokenizer, as one plain model.

    Checkpoints are sharded by whatever layout trained them; loading into an unsharded model consolidates them.
    """
    run_dir = Path(run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints")
    path = checkpoints.latest_valid()
    if path is None:
        raise CheckpointError(f"run {run_dir} has no checkpoint yet; train it first (shoal train)")
    facts = read_facts(path).get("trainer")
    if not isinstance(facts, dict) or not {"config", "step", "dataset_fingerprint"} <= set(facts):
        raise CheckpointError(f"checkpoint {path} has no trainer facts (config, step); it was not written by shoal train")
    cfg = config_from_dict(facts["config"])
    model = Transformer(cfg.model)
    weights = checkpoints.load(path, like={"model": get_model_state_dict(model)})["model"]
    model = _model_from_state(cfg.model, weights)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    return LoadedModel(model, tokenizer, {"source": str(run_dir), "checkpoint": str(path), "step": facts["step"],
                                          "dataset_fingerprint": facts["dataset_fingerprint"], "config": cfg.to_dict()})


def load_bundle(path: str | Path) -> LoadedModel:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path} is not a shoal bundle (no readable manifest.json)") from None
    listed = set(manifest.get("files") or {}) if isinstance(manifest, dict) else set()
    if not set(BUNDLE_FILES) <= listed <= set(BUNDLE_FILES + OPTIONAL_FILES):
        raise CheckpointError(f"{path}/manifest.json is malformed: it must list {', '.join(BUNDLE_FILES)}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path} has bundle format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    problem = find_file_problem(path, manifest["files"])
    if problem:
        raise CheckpointError(f"bundle {path} is corrupt: {problem}")
    config = json.loads((path / "config.json").read_text())
    model_cfg = model_config_from_dict(config["model"])
    if config.get("quantization"):
        from shoal.compress.quantize import load_quantized

        with safe_open(path / "model.safetensors", "pt") as weights:
            metadata = weights.metadata() or {}
        model = load_quantized(Transformer(model_cfg).to(torch.bfloat16), load_file(path / "model.safetensors"),
                               metadata)
        info = {"source": str(path), **config["provenance"], "quantization": config["quantization"]}
        return LoadedModel(model, load_tokenizer(path / "tokenizer.json"), info)
    model = _model_from_state(model_cfg, load_file(path / "model.safetensors"))
    return LoadedModel(model, load_tokenizer(path / "tokenizer.json"), {"source": str(path), **config["provenance"]})


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """A run folder or an exported bundle, on `device` (auto: the GPU when there is one)."""
    path = Path(path)
    target = pick_device(device, "--device")
    if (path / "manifest.json").is_file():
        loaded = load_bundle(path)
    elif (path / "checkpoints").is_dir():
        loaded = load_run(path)
    else:
        raise ShoalError(f"{path} is neither a run folder (with checkpoints/) nor a bundle (with manifest.json)")
    quantization = loaded.info.get("quantization")
    if quantization:
        from shoal.compress.quantize import check_runs_here

        check_runs_here(quantization, target, path)
    loaded.model.to(target)
    return loaded


def export_bundle(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run's newest valid checkpoint as a bundle into `out_dir`."""
    loaded = load_run(run_dir)
    provenance = {k: loaded.info[k] for k in ("checkpoint", "step", "dataset_fingerprint")}
    provenance["run"] = str(run_dir)
    card = Path(run_dir) / CARD_FILE
    return save_bundle(loaded.model, loaded.tokenizer, out_dir, provenance, loaded.info["config"],
                       card if card.is_file() else None)


def save_bundle(model: Transformer, tokenizer: Tokenizer, out_dir: str | Path, provenance: dict[str, Any],
                training: dict[str, Any] | None = None, card: Path | None = None,
                quantization: dict[str, Any] | None = None) -> Path:
    """Write `model` as a bundle into `out_dir` (built aside, then renamed in, so a failure leaves nothing half-written).

    `provenance` says where the weights came from (a run's checkpoint, a parent bundle and what was done to it);
    `training` is the resolved config that trained them; `card` the training data's card, copied along;
    `quantization` the method and settings of a model quantized by shoal.compress (its weights are then torchao
    tensors, stored flattened with their metadata).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ShoalError(f"export folder {out_dir} is not empty; choose a new folder")
    ensure_writable_dir(out_dir.parent)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model_cfg = model.config
        if quantization:
            from shoal.compress.quantize import quantized_state

            state, metadata = quantized_state(model)
        else:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
                     if not (model_cfg.tie_embeddings and k == "output.weight")}
            metadata = {"format": "pt"}
        save_file(state, tmp / "model.safetensors", metadata=metadata)
        tokenizer.save(str(tmp / "tokenizer.json"))
        provenance = {**provenance, "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shoal_version": __version__}
        atomic_write_json(tmp / "config.json", {"model": asdict(model_cfg), "provenance": provenance,
                                                "training": training, "quantization": quantization})
        files = list(BUNDLE_FILES)
        if card is not None:  # the data card travels with the model
            shutil.copyfile(card, tmp / CARD_FILE)
            files.append(CARD_FILE)
        atomic_write_json(tmp / "manifest.json", {"format": BUNDLE_FORMAT, "files": describe_files(tmp, files)})
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
