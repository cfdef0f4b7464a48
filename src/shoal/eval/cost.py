"""Cost per million tokens on the hardware of a price table (hardware_prices.toml, editable): measured on the
machine that ran the evaluation, and a roofline estimate for every row, so edge and cloud compare side by side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.models.transformer import Transformer

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_PRICES = Path(__file__).with_name("hardware_prices.toml")
HARDWARE_KEYS = {"description": str, "usd_per_hour": float, "bf16_tflops": float, "memory_gb_per_s": float,
                 "layer_overhead_us": float}
BF16_BYTES = 2  # estimates assume serving in bf16


def load_prices(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else DEFAULT_PRICES
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ShoalError(f"cannot read the price table {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ShoalError(f"the price table {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ShoalError(f"the price table {path} is not valid TOML: {e}") from None
    hardware = table.get("hardware")
    if not isinstance(hardware, dict) or not hardware:
        raise ShoalError(f"the price table {path} has no [hardware.NAME] tables")
    for name, row in hardware.items():
        for key, kind in HARDWARE_KEYS.items():
            value = row.get(key) if isinstance(row, dict) else None
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is float and not (math.isfinite(value) and value >= 0)):
                wanted = "a non-negative number" if kind is float else "a string"
                raise ShoalError(f"{path}: [hardware.{name}] needs {key} = {wanted}")
            row[key] = value
        if row["usd_per_hour"] <= 0 or row["bf16_tflops"] <= 0 or row["memory_gb_per_s"] <= 0:
            raise ShoalError(f"{path}: [hardware.{name}] needs usd_per_hour, bf16_tflops and memory_gb_per_s above 0")
    estimate = {"compute_efficiency": 0.5, "memory_efficiency": 0.7}
    given = table.get("estimate", {})
    if not isinstance(given, dict) or not set(given) <= set(estimate) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in given.values()):
        raise ShoalError(f"{path}: [estimate] may only set compute_efficiency and memory_efficiency, each in (0, 1]")
    estimate.update(given)
    return {"path": str(path), "hardware": hardware, "estimate": estimate}


def default_hardware(device: str) -> str:
    """The price-table row that best matches the device that ran the evaluation."""
    if not device.startswith("cuda"):
        return "cpu-instance"
    import torch

    name = torch.cuda.get_device_name(device)
    return "h200" if "H200" in name else "h100" if "H100" in name else "a100" if "A100" in name else "consumer-gpu"


def estimated_tokens_per_second(model: Transformer, row: dict[str, Any], estimate: dict[str, float], batch: int,
                                tokens: int, context: int) -> float:
    """Roofline estimate of a forward pass over [batch, tokens] after `context` cached positions."""
    cfg = model.config
    flops = batch * tokens * model.flops_per_token(context + tokens) / 3  # attention over every key it sees
    kv_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * model.head_dim * BF16_BYTES
    nbytes = model.num_params() * BF16_BYTES + batch * (context + tokens) * kv_per_token
    seconds = max(flops / (estimate["compute_efficiency"] * row["bf16_tflops"] * 1e12),
                  nbytes / (estimate["memory_efficiency"] * row["memory_gb_per_s"] * 1e9))
    return batch * tokens / (seconds + cfg.n_layers * row["layer_overhead_us"] * 1e-6)


def usd_per_million(usd_per_hour: float, tokens_per_second: float) -> float:
    return usd_per_hour / 3600 / tokens_per_second * 1e6


def cost_table(model: Transformer, efficiency: dict[str, Any], prices: dict[str, Any], measured_on: str) -> dict[str, Any]:
    """Rows of decode (batch 1 and the largest measured batch) and prefill speed with their $/M tokens."""
    if measured_on not in prices["hardware"]:
        raise ShoalError(f"--hardware {measured_on!r} is not in the price table {prices['path']}; "
                         f"choose from {', '.join(prices['hardware'])}")
    batch = max(int(b) for b in efficiency["throughput"])
    prompt, new = efficiency["prompt_tokens"], efficiency["new_tokens"]
    context = prompt + new // 2  # the average cache length while decoding

    def row(name: str, source: str, decode_1: float, decode_b: float, prefill: float) -> dict[str, Any]:
        hw = prices["hardware"][name]
        out = {"hardware": name, "description": hw["description"], "source": source, "usd_per_hour": hw["usd_per_hour"]}
        for key, tokens_per_second in (("decode_batch1", decode_1), ("decode_batched", decode_b), ("prefill", prefill)):
            out[f"{key}_tokens_per_second"] = tokens_per_second
            out[f"{key}_usd_per_million"] = usd_per_million(hw["usd_per_hour"], tokens_per_second)
        return out

    measured = efficiency["throughput"][str(batch)]
    rows = [row(measured_on, f"measured on {efficiency['device']} ({efficiency['dtype']})",
                efficiency["decode_tokens_per_second"], measured["decode_tokens_per_second"],
                measured["prefill_tokens_per_second"])]
    for name, hw in prices["hardware"].items():
        est = prices["estimate"]
        rows.append(row(name, "roofline estimate (bf16)",
                        estimated_tokens_per_second(model, hw, est, 1, 1, context),
                        estimated_tokens_per_second(model, hw, est, batch, 1, context),
                        estimated_tokens_per_second(model, hw, est, batch, prompt, 0)))
    return {"batch": batch, "prices": prices["path"], "rows": rows}
