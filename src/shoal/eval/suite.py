"""What `shoal eval` runs: quality and calibration always; robustness, efficiency and cost in the default suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shoal.bundle import LoadedModel
from shoal.data.progress import PhaseProgress
from shoal.errors import ShoalError
from shoal.eval.cost import cost_table, default_hardware, load_prices
from shoal.eval.efficiency import measure_efficiency
from shoal.eval.report import summarize
from shoal.eval.robustness import evaluate_robustness
from shoal.eval.scoring import Scores, score_documents
from shoal.hardware import pick_dtype

SUITES = {"default": ("quality", "robustness", "efficiency"), "quick": ("quality",)}


def run_suite(loaded: LoadedModel, documents: list[tuple[str, str]], suite: str = "default",
              hardware: str | None = None, prices: str | Path | None = None, tries: int = 2, dtype: str = "auto",
              progress: bool = False) -> dict[str, Any]:
    """Quality is always scored in the model's own precision (fp32 for loaded models); speed is measured in `dtype`
    (auto: bf16 where the hardware runs it faster, as a server would)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    device = model.tok_embeddings.weight.device
    price_table, hardware = check_options(suite, hardware, prices, tries, dtype, str(device))
    parts = SUITES[suite]
    with PhaseProgress(progress) as bar:

        def score(docs: list[tuple[str, str]], phase: str) -> Scores:
            bar.phase(phase, sum(len(text.encode("utf-8")) for _, text in docs))
            return score_documents(model, tokenizer, docs, on_bytes=bar.advance)

        clean = score(documents, "scoring")
        summary = summarize(clean)
        summary["suite"] = suite
        if "robustness" in parts:
            summary["robustness"] = evaluate_robustness(score, documents, clean, tries)
        if price_table:
            bar.phase("speed and memory", 1)
            efficiency = measure_efficiency(copy.deepcopy(model).to(pick_dtype(dtype, device)))
            efficiency["size_on_disk_bytes"] = size_on_disk(loaded)
            bar.done()
            summary["efficiency"] = efficiency
            summary["cost"] = cost_table(model, efficiency, price_table, hardware)
    return summary


def check_options(suite: str, hardware: str | None, prices: str | Path | None, tries: int, dtype: str,
                  device: str = "cpu") -> tuple[dict[str, Any] | None, str | None]:
    """Refuse bad options before any work. Returns the price table when the suite measures speed, and the table's
    row for the measuring machine (`hardware`, or the row that matches `device`)."""
    if suite not in SUITES:
        raise ShoalError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    if dtype not in ("auto", "fp32", "bf16"):
        raise ShoalError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    if tries < 1:
        raise ShoalError(f"--adversarial-tries must be at least 1, got {tries}")
    if "efficiency" not in SUITES[suite] and prices is None:
        return None, hardware
    price_table = load_prices(prices)
    row = hardware or default_hardware(device)
    if row not in price_table["hardware"]:
        rows, path = ", ".join(price_table["hardware"]), price_table["path"]
        raise ShoalError(f"--hardware {row!r} is not in the price table {path}; choose from {rows}" if hardware else
                         f"the price table {path} has no row {row!r} for this {device}; name one of {rows} with --hardware")
    return (price_table if "efficiency" in SUITES[suite] else None), row


def size_on_disk(loaded: LoadedModel) -> int:
    """The bundle's weight file, or for a run the bytes its bundle's weight file would hold (tied weights once)."""
    weights = Path(loaded.info.get("source", "")) / "model.safetensors"
    if weights.is_file():
        return weights.stat().st_size
    state = loaded.model.state_dict()
    tied = loaded.model.config.tie_embeddings
    return sum(t.numel() * t.element_size() for k, t in state.items() if not (tied and k == "output.weight"))
