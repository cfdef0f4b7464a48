"""`shoal compress`: a compressed bundle from a run or a bundle, with its lineage (parent, method, settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.bundle import load_model, resolve_device, save_bundle
from shoal.compress.quantize import check_method, quantize_model
from shoal.data.governance.card import CARD_FILE
from shoal.errors import ShoalError
from shoal.io import check_can_create_dir, sha256_file


def compress_model(source: Path, out: Path, method: str, group_size: int = 32, device: str = "auto") -> dict[str, Any]:
    """Quantize `source` with `method` into the bundle `out`; returns the weights' bytes in bf16 and quantized."""
    target = resolve_device(device)
    check_method(method, group_size, target)  # before anything loads or is written
    check_can_create_dir(out)
    loaded = load_model(source, str(target))
    if loaded.info.get("quantization"):
        raise ShoalError(f"{source} is already quantized ({loaded.info['quantization']['method']}); compress the "
                         "original model")
    parent_bytes = loaded.model.num_params() * 2  # what it weighs in bf16, the precision quantization starts from
    settings = {"group_size": group_size} if method == "int4-wo" else {}
    quantize_model(loaded.model, method, group_size)
    quantization = {"method": method, "settings": settings, "dtype": "bf16", "device": target.type}
    parent = {k: v for k, v in loaded.info.items() if k != "config"}
    weights = source / "model.safetensors"
    lineage = {"parent": str(source), "parent_provenance": parent, "method": method, "settings": settings,
               "parent_weights_sha256": sha256_file(weights) if weights.is_file() else None}
    provenance = {"lineage": lineage, **{k: parent[k] for k in ("step", "dataset_fingerprint") if k in parent}}
    card = source / CARD_FILE
    save_bundle(loaded.model, loaded.tokenizer, out, provenance, _training_config(source, loaded.info),
                card if card.is_file() else None, quantization)
    return {"parent_bytes": parent_bytes, "bytes": (out / "model.safetensors").stat().st_size,
            "quantization": quantization}


def _training_config(source: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The config that trained the weights: a run's own, or the one a bundle carries."""
    if "config" in info:
        return info["config"]
    config = source / "config.json"
    return json.loads(config.read_text()).get("training") if config.is_file() else None
