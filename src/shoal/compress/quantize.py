"""Post-training quantization with torchao, and the safetensors form of a quantized model.

Methods (`shoal compress --quantize`):
- int8-wo: int8 weights (one scale per output channel), activations in bf16;
- int8-dyn: int8 weights and int8 activations quantized per token at run time;
- int4-wo: 4-bit weights in groups of `group_size` along the input. On a GPU, torchao's int4 kernel (tile-packed
  layout); on a CPU, torchao has no int4 kernel in the versions this was built with, so the 4-bit values are stored
  unpacked in int8 (int4 quality, int8 size) and multiplied through a dequantized copy;
- fp8: float8 weights and activations, on GPUs that have float8 (compute capability 8.9 or newer).

Every linear layer of the blocks is quantized; the embedding and the output head (often tied to it) stay in bf16,
as is customary: they are lookups or a single matrix whose error every token pays. Mixture-of-experts routers stay in
bf16 too (a rounding error misroutes tokens), and so do the experts, which are not nn.Linear layers. The model is
converted to bf16 first: torchao's kernels expect it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from shoal.compress.prune import block_linears
from shoal.errors import ShoalError
from shoal.models.transformer import Transformer

METHODS = ("int8-wo", "int8-dyn", "int4-wo", "fp8")
GROUP_SIZES = (32, 64, 128, 256)


def _torchao():
    try:
        # torchao reports every optional kernel it cannot load, and torch each enum torchao registers.
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import torchao.quantization as quantization
    except ImportError:
        raise ShoalError("quantization needs torchao: pip install 'shoal[compress]'") from None
    return quantization


def check_method(method: str, group_size: int, device: torch.device) -> None:
    """A one-line ShoalError for a method this machine cannot run, before any work."""
    if method not in METHODS:
        raise ShoalError(f"unknown quantization {method!r}; choose one of {', '.join(METHODS)}")
    if group_size not in GROUP_SIZES:
        raise ShoalError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")
    if method == "fp8" and not has_fp8(device):
        raise ShoalError("fp8 needs a GPU with float8 (compute capability 8.9 or newer: L4, H100, ...)")


def has_fp8(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def gpu_only(method: str, device: torch.device) -> bool:
    """Layouts that only a GPU can run: fp8, and int4 in torchao's tile-packed GPU layout."""
    return method == "fp8" or (method == "int4-wo" and device.type == "cuda")


def check_runs_here(quantization: dict[str, Any], device: torch.device, path: Any) -> None:
    """A one-line error for a quantized bundle this device cannot run."""
    method = quantization.get("method")
    if quantization.get("device") == "cuda" and device.type != "cuda":
        raise ShoalError(f"{path} was quantized for a GPU ({method}, a GPU-only layout); load it on a GPU or "
                         "quantize the original on this machine")
    if method == "fp8" and not has_fp8(device):
        raise ShoalError(f"{path} is fp8, which needs a GPU with float8 (compute capability 8.9 or newer)")


def quantize_model(model: Transformer, method: str, group_size: int = 32) -> Transformer:
    """Quantize `model` in place (converted to bf16 first) and return it."""
    device = model.tok_embeddings.weight.device
    check_method(method, group_size, device)
    if method == "int4-wo":
        check_group_size(model, group_size)
    q = _torchao()
    model.to(torch.bfloat16).eval()
    if method == "int8-wo":
        config = q.Int8WeightOnlyConfig()
    elif method == "int8-dyn":
        config = q.Int8DynamicActivationInt8WeightConfig()
    elif method == "int4-wo" and device.type == "cuda":
        config = q.Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    elif method == "int4-wo":
        from torchao.quantization.granularity import PerGroup

        config = q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    else:
        config = q.Float8DynamicActivationFloat8WeightConfig()
    targets = set(block_linears(model))
    q.quantize_(model, config, filter_fn=lambda module, _: module in targets)
    return model


def check_group_size(model: torch.nn.Module, group_size: int) -> None:
    narrow = sorted({m.in_features for m in block_linears(model) if m.in_features % group_size})
    if narrow:
        raise ShoalError(f"int4-wo groups of {group_size} do not divide the input width of every layer "
                         f"({', '.join(map(str, narrow))}); choose a --group-size that does")


def quantized_state(model: Transformer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Plain tensors and string metadata for safetensors: torchao's flattened form of its tensor subclasses."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    state = {k: v.detach() for k, v in model.state_dict().items()
             if not (model.config.tie_embeddings and k == "output.weight")}
    tensors, metadata = flatten_tensor_state_dict(state)
    return {k: v.contiguous() for k, v in tensors.items()}, metadata


def load_quantized(model: Transformer, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Transformer:
    """`model` (built in bf16 from the bundle's config) with the quantized weights put in place."""
    _torchao()
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    try:
        state = unflatten_tensor_state_dict(tensors, metadata)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise ShoalError(f"the quantized weights' metadata is not torchao's ({type(e).__name__}: {e})") from None
    state = state[0] if isinstance(state, tuple) else state  # newer torchao also returns the keys it left alone
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shapes that disagree with the config
        raise ShoalError(f"the quantized weights do not match the model config: {str(e).splitlines()[-1].strip()}"
                         ) from None
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "output.weight")]
    if missing or unexpected:
        raise ShoalError(f"the quantized weights do not match the model config (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    if model.config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight  # assign=True replaced the tied parameter
    return model.eval()
