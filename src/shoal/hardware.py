"""Which device and precision to train on, and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import functools
import resource
import sys
import time
from pathlib import Path

import torch

from shoal.errors import ConfigError

# Dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity), by device-name fragment.
CUDA_BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
}


def pick_device(requested: str, key: str = "config key 'train.device'") -> torch.device:
    """auto: the GPU when there is one. `key` names the setting in the error (a config key or a command option)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{key} must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is cuda but no CUDA GPU is visible; use auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16 make bf16 matmuls several times faster than fp32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware runs it faster than fp32, else fp32."""
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@functools.cache
def measured_matmul_flops(device_type: str, dtype: torch.dtype, size: int = 1536, seconds: float = 1.0) -> float:
    """Best square-matmul FLOP/s over a one-second probe of many products: the practical peak of a CPU.

    The best of many short products, not their mean, so that a moment of contention on a shared machine does not
    lower the peak (which would inflate MFU).
    """
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG, and so training, untouched
    a = torch.randn(size, size, generator=generator).to(device_type, dtype)
    b = torch.randn(size, size, generator=generator).to(device_type, dtype)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, flops in CUDA_BF16_PEAK_FLOPS.items():
            if fragment in name:
                # fp32 runs on TF32 tensor cores at half the bf16 rate on these parts.
                return (flops if dtype == torch.bfloat16 else flops / 2), f"datasheet {name}"
    flops = measured_matmul_flops(device.type, dtype)
    return flops, f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: allocated GPU memory on CUDA, resident set size (RSS) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB
