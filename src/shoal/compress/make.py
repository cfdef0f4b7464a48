"""`shoal compress`: a compressed bundle from a run or a bundle, with its lineage (parent and every step taken)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shoal.bundle import load_model, save_bundle
from shoal.compress.prune import check_pruning, magnitude_prune, prune_2_4
from shoal.compress.qat import trained_for
from shoal.compress.quantize import check_method, gpu_only, quantize_model
from shoal.compress.recover import check_recovery, recover, training_data
from shoal.compress.structured import prune_channels, prune_heads
from shoal.data.governance.card import CARD_FILE
from shoal.errors import ShoalError
from shoal.eval.data import evaluation_documents
from shoal.hardware import pick_device
from shoal.io import check_can_create_dir
from shoal.models.transformer import Transformer


def compress_model(source: Path, out: Path, quantize: str | None = None, group_size: int | None = None,
                   prune: str | None = None, sparsity: float = 0.5, scope: str = "global", data: list[str] | None = None,
                   device: str = "auto", dtype: str = "keep", recover_steps: int = 0,
                   recover_lr: float | None = None) -> dict[str, Any]:
    """Prune and/or quantize `source` into the bundle `out`, fine-tuning for `recover_steps` in between (with
    quantization-aware training when quantizing); returns the steps taken, the parameter counts and the weights'
    bytes before (in the precision of the result) and after.

    A model trained with QAT is quantized with its method and group size unless told otherwise. `dtype` bf16 stores an
    unquantized result in bf16; keep leaves it in its parent's precision.
    """
    target = pick_device(device, "--device")
    if dtype not in ("keep", "bf16"):
        raise ShoalError(f"--dtype must be keep or bf16, got {dtype!r}")
    training = training_config(source)
    qat = qat_method(source)
    quantize = quantize or (qat[0] if qat and not prune else None)
    group_size = group_size or (qat[1] if qat and quantize == qat[0] else 32)
    if not (quantize or prune):
        raise ShoalError("say what to do: --quantize METHOD and/or --prune METHOD")
    if quantize:
        check_method(quantize, group_size, target)  # before anything loads or is written
    if prune:
        check_pruning(prune, sparsity, scope)
    check_recovery(recover_steps, recover_lr, training, quantize)
    check_can_create_dir(out)
    loaded = load_model(source, str(target))
    if loaded.info.get("quantization"):
        raise ShoalError(f"{source} is already quantized ({loaded.info['quantization']['method']}); compress the "
                         "original model")
    recovery_data = training_data(training, loaded.info.get("dataset_fingerprint")) if recover_steps else None
    # The parent's size in the precision the result is stored in: bf16 under quantization, else its own.
    if dtype == "bf16":
        loaded.model.to(torch.bfloat16)
    element = 2 if quantize else loaded.model.tok_embeddings.weight.element_size()
    parent_bytes = loaded.model.num_params() * element
    model, steps = loaded.model, []
    if prune:
        check_pruning(prune, sparsity, scope, model)
        model, step = _prune(model, prune, sparsity, scope, lambda: calibration(loaded, data or []))
        steps.append(step)
    if recover_steps:
        steps.append(recover(model, training, recovery_data, recover_steps, recover_lr,
                             keep_zeros=prune in ("magnitude", "2:4"), qat=(quantize, group_size) if quantize else None))
    quantization = None
    if quantize:
        settings = {"group_size": group_size} if quantize == "int4-wo" else {}
        # QAT simulates int4 as the CPU stores it (symmetric groups); a GPU's tile-packed int4 adds zero points.
        if qat == (quantize, group_size) and not (quantize == "int4-wo" and target.type == "cuda"):
            settings["trained_for"] = True  # the weights were trained with QAT for exactly this
        quantize_model(model, quantize, group_size)
        quantization = {"method": quantize, "settings": settings, "dtype": "bf16",
                        "device": "cuda" if gpu_only(quantize, target) else "any"}
        steps.append({"method": quantize, "settings": settings})
    parent = {k: v for k, v in loaded.info.items() if k != "config"}
    manifest = source / "manifest.json"  # a bundle's: its weights' checksum, verified when it loaded
    weights_sha256 = json.loads(manifest.read_text())["files"]["model.safetensors"]["sha256"] if manifest.is_file() \
        else None
    lineage = {"parent": str(source), "parent_provenance": parent, "steps": steps,
               "parent_weights_sha256": weights_sha256}
    provenance = {"lineage": lineage, **{k: parent[k] for k in ("step", "dataset_fingerprint") if k in parent}}
    card = source / CARD_FILE
    save_bundle(model, loaded.tokenizer, out, provenance, training,
                card if card.is_file() else None, quantization)
    return {"parent_bytes": parent_bytes, "bytes": (out / "model.safetensors").stat().st_size, "steps": steps,
            "parameters": [loaded.model.num_params(), model.num_params()],
            "dtype": "bf16" if quantize else str(model.tok_embeddings.weight.dtype).removeprefix("torch.")}


def _prune(model: Transformer, method: str, sparsity: float, scope: str,
           calibration_windows: Callable[[], list[torch.Tensor]]) -> tuple[Transformer, dict[str, Any]]:
    """The pruned model and the lineage step that says what was done."""
    if method == "magnitude":
        zeros = magnitude_prune(model, sparsity, scope)
        return model, {"method": "prune-magnitude", "settings": {"sparsity": sparsity, "scope": scope},
                       "zero_share": round(zeros, 4)}
    if method == "2:4":
        return model, {"method": "prune-2:4", "settings": {}, "zero_share": round(prune_2_4(model), 4)}
    cfg = model.config
    if method == "channels":
        model = prune_channels(model, sparsity, calibration_windows())
        return model, {"method": "prune-channels", "settings": {"fraction": sparsity,
                                                                "d_ff": [cfg.d_ff, model.config.d_ff]}}
    model = prune_heads(model, sparsity, calibration_windows())
    return model, {"method": "prune-heads", "settings": {"fraction": sparsity,
                                                         "n_heads": [cfg.n_heads, model.config.n_heads],
                                                         "n_kv_heads": [cfg.n_kv_heads, model.config.n_kv_heads]}}


def calibration(loaded, data: list[str], windows: int = 16) -> list[torch.Tensor]:
    """Up to `windows` context-length token windows of the evaluation documents (the run's validation split, or
    --data): what structured pruning measures importance on."""
    _, documents = evaluation_documents(loaded, data)
    length, pieces = loaded.model.config.max_seq_len, []
    for _, text in documents:
        ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
        pieces += [torch.tensor(ids[i:i + length]) for i in range(0, len(ids) - 1, length)]
        if len(pieces) >= windows:
            break
    if not pieces:
        raise ShoalError("no calibration text for structured pruning; point --data at documents")
    return pieces[:windows]


def qat_method(source: Path) -> tuple[str, int] | None:
    """(method, group size) the weights of `source` were trained for with QAT: a QAT run or its export. None for
    anything else, compressed variants included (pruning or fine-tuning has changed the weights since)."""
    config = source / "config.json"
    if (source / "manifest.json").is_file() and config.is_file() and \
            (json.loads(config.read_text()).get("provenance") or {}).get("lineage"):
        return None
    return trained_for(training_config(source))


def training_config(source: Path) -> dict[str, Any] | None:
    """The config that trained the weights: a run's own, or the one a bundle carries."""
    config = source / "config.json"
    if not config.is_file():
        return None
    saved = json.loads(config.read_text())
    return saved.get("training") if (source / "manifest.json").is_file() else saved
