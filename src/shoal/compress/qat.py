"""Quantization-aware training with torchao: the blocks' linear layers see their weights (and for int8-dyn their
inputs) rounded as `shoal compress --quantize` will round them, while the optimizer keeps updating full-precision
weights through the straight-through estimator. The network learns to live with the rounding, so the quantized
model loses less than one quantized after training.

`train.qat = "int8-wo" | "int8-dyn" | "int4-wo"` (`train.qat_group_size` for int4) turns it on for `shoal train`;
`shoal compress --quantize M --recover-steps N` fine-tunes an existing model the same way before quantizing it.
Checkpoints keep plain weights under the usual names: a QAT run loads, evaluates (without the rounding) and exports
like any other, and `shoal compress RUN` quantizes it with the method it was trained for.
"""

from __future__ import annotations

from typing import Any

import torch

from shoal.compress.prune import block_linears
from shoal.compress.quantize import _torchao, check_group_size

QAT_METHODS = ("int8-wo", "int8-dyn", "int4-wo")


def prepare_qat(model: torch.nn.Module, method: str, group_size: int = 32) -> None:
    """Swap the blocks' linear layers for torchao's fake-quantized ones, in place (the weights stay the same)."""
    quantization = _torchao()
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    if method == "int4-wo":
        check_group_size(model, group_size)
        # Symmetric int4 in groups along the input: what int4-wo stores on a CPU (a GPU's tile-packed int4 adds a
        # zero point per group, which the training does not model).
        weights = IntxFakeQuantizeConfig(torch.int4, group_size=group_size, scale_precision=torch.bfloat16)
    else:
        weights = IntxFakeQuantizeConfig(torch.int8, "per_channel")  # one scale per output row, as int8 PTQ
    # int8-dyn rounds each token's inputs to int8 as well; torchao simulates that with a zero point per token only.
    inputs = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False) if method == "int8-dyn" else None
    targets = set(block_linears(model))
    quantization.quantize_(model, QATConfig(activation_config=inputs, weight_config=weights, step="prepare"),
                           filter_fn=lambda module, _: module in targets)


def trained_for(training: dict[str, Any] | None) -> tuple[str, int] | None:
    """(method, group size) a model was trained for with QAT, from its training config; None without QAT."""
    train = (training or {}).get("train") or {}
    return (train["qat"], train.get("qat_group_size", 32)) if train.get("qat") else None
