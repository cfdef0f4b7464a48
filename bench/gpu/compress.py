"""Compression on one GPU: the GPU-only paths of shoal compress on a GPT-2-base-shaped model (random weights), bf16.

For int8-wo, int8-dyn, int4-wo (torchao's tile-packed int4 kernel, groups of 64), fp8 (on float8 GPUs) and 2:4 sparsity (pruned,
then loaded as semi-structured sparse matrices on GPUs with sparse tensor cores): the relative error of the logits
against the bf16 model they came from, the weights' bytes, and decode tokens/s at batch 1 and 32 through the KV
cache, as ratios to bf16 in the same run. Quantized variants also go through a bundle (save, load on this device)
to check that what is written runs. Random weights: quality needs a trained model (bench/compress.py does that).

    python bench/gpu/compress.py                     # one H100: about 3 minutes
    python bench/gpu/compress.py --preset tiny       # CPU smoke run (the CPU methods only)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch


def variants(device: torch.device) -> list[str]:
    from shoal.compress.quantize import has_fp8

    names = ["int8-wo", "int8-dyn", "int4-wo"]
    if has_fp8(device):
        names.append("fp8")
    return names + ["2:4"]


def build(name: str, base, folder: Path):
    """The variant `name` of `base` (a bf16 model), as it would be loaded for serving."""
    from shoal.bundle import load_model, save_bundle
    from shoal.compress.prune import accelerate_2_4, prune_2_4
    from shoal.compress.quantize import gpu_only, quantize_model
    from shoal.data.tokenizer import train_tokenizer

    model = copy.deepcopy(base)
    if name == "2:4":
        prune_2_4(model)
        dense = copy.deepcopy(model)  # the same zeros, run as dense matrices
        converted = accelerate_2_4(model)
        return model, {"sparse_layers": converted, "dense_twin": dense}
    quantize_model(model, name, 64)
    device = model.tok_embeddings.weight.device
    quantization = {"method": name, "settings": {"group_size": 64} if name == "int4-wo" else {}, "dtype": "bf16",
                    "device": "cuda" if gpu_only(name, device) else "any"}
    tokenizer = train_tokenizer(["a bundle needs a tokenizer"], 300)
    save_bundle(model, tokenizer, folder / name, {"source": "bench/gpu/compress.py"}, quantization=quantization)
    return load_model(folder / name, device.type).model, {"bytes": (folder / name / "model.safetensors").stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from shoal.config import load_config
    from shoal.eval.efficiency import measure_efficiency
    from shoal.hardware import pick_device
    from shoal.models.transformer import Transformer, resolve_model_config

    device = pick_device("auto")
    torch.manual_seed(0)
    cfg = resolve_model_config(load_config(args.preset).model, 50257 if args.preset.startswith("gpt2") else 512)
    base = Transformer(cfg).to(device, torch.bfloat16).eval()
    tokens = torch.randint(0, cfg.vocab_size, (4, 256), device=device)
    folder = Path(tempfile.mkdtemp(prefix="shoal-bench-gpu-compress-"))

    def speed(model) -> dict[int, float]:
        runs = measure_efficiency(model, batch_sizes=(1, 32), repeats=args.repeats)["throughput"]
        return {b: round(r["decode_tokens_per_second"], 1) for b, r in runs.items()}

    with torch.no_grad():
        reference = base(tokens).float()
        rows = {"bf16": {"bytes": base.num_params() * 2, "decode_tokens_per_second": speed(base)}}
        for name in variants(device):
            model, row = build(name, base, folder)
            dense = row.pop("dense_twin", None)
            logits = model(tokens).float()
            row["logits_relative_error"] = round(((logits - reference).norm() / reference.norm()).item(), 5)
            row["decode_tokens_per_second"] = speed(model)
            if dense is not None:  # 2:4: sparse kernels against the same zeros run dense
                row["matches_dense_twin"] = bool(torch.allclose(logits, dense(tokens).float(), rtol=2e-2, atol=2e-2))
                row["dense_twin_tokens_per_second"] = speed(dense)
            rows[name] = row
    base_speed = rows["bf16"]["decode_tokens_per_second"]
    for row in rows.values():
        row["speed_vs_bf16"] = {b: round(v / base_speed[b], 2) for b, v in row["decode_tokens_per_second"].items()}
    print(json.dumps({"benchmark": "gpu-compress", "device": torch.cuda.get_device_name(device) if device.type ==
                      "cuda" else "cpu", "model": f"{args.preset}, {base.num_params() / 1e6:.0f}M parameters, random "
                      "weights, bf16", "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
