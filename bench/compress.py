"""Compression on this CPU: each quantized variant of a model against the original, in the same run. Prints JSON.

For the original in fp32 and bf16 and for shoal compress's variants (int8-wo, int8-dyn, int4-wo; magnitude pruning
to 50%, 2:4; 25% and 50% of the feed-forward channels, half the attention heads; 25% of the channels then int8-wo):
parameters, size of model.safetensors, bits per byte on the documents (and its change from the fp32 original), and
decode tokens/s at batch 1 and 32 through the KV cache and prefill tokens/s (128-token prompts), in bf16, each with
its ratio to the bf16 original measured beside it (bf16 is the precision a CPU with AMX serves).

For a trained run, also the variants that fine-tune 50 steps on its training data (pruning + --recover-steps, and
int4 in groups of 64 with QAT), next to their fair references: the original fine-tuned 50 steps without compression,
and that fine-tuned model quantized to int4 afterwards (so QAT's gain is not confused with the extra training).

    python bench/compress.py [--model RUN_OR_BUNDLE] [--data FOLDER ...]
The model defaults to the demo run (runs/tiny) when it exists, else the tiny preset with random weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sysconfig
import tempfile
from pathlib import Path

import torch

from shoal.bundle import load_model, save_bundle
from shoal.compress.make import compress_model, training_config
from shoal.compress.recover import recover, training_data
from shoal.config import load_config
from shoal.data.prepare import prepare_dataset
from shoal.data.sources import iter_documents, resolve_sources
from shoal.data.tokenizer import load_tokenizer
from shoal.eval.efficiency import measure_efficiency
from shoal.eval.scoring import score_documents
from shoal.models.transformer import Transformer, resolve_model_config

BATCHES = (1, 32)
RECOVER = 50  # optimizer steps of recovery fine-tuning
VARIANTS = {  # name: compress_model options
    "int8-wo": {"quantize": "int8-wo"}, "int8-dyn": {"quantize": "int8-dyn"}, "int4-wo": {"quantize": "int4-wo"},
    "magnitude-50%": {"prune": "magnitude", "sparsity": 0.5}, "2:4": {"prune": "2:4"},
    "channels-25%": {"prune": "channels", "sparsity": 0.25}, "channels-50%": {"prune": "channels", "sparsity": 0.5},
    "heads-50%": {"prune": "heads", "sparsity": 0.5},
    "channels-25%+int8-wo": {"prune": "channels", "sparsity": 0.25, "quantize": "int8-wo"},
}
# Variants that fine-tune on the run's training data (only for a trained run). Their fair reference is the original
# fine-tuned for as many steps without compression ("fine-tuned"), and int4 quantization after that same fine-tune.
RECOVERED = {
    "2:4+recover": {"prune": "2:4", "recover_steps": RECOVER},
    "channels-50%+recover": {"prune": "channels", "sparsity": 0.5, "recover_steps": RECOVER},
    "heads-50%+recover": {"prune": "heads", "sparsity": 0.5, "recover_steps": RECOVER},
    "int4-wo-g64": {"quantize": "int4-wo", "group_size": 64},
    "int4-wo-g64+qat": {"quantize": "int4-wo", "group_size": 64, "recover_steps": RECOVER},
}


def source_bundle(model: str | None, folder: Path) -> tuple[Path, str]:
    """A bundle of the model to compress, and what its weights are."""
    if model or Path("runs/tiny/checkpoints").is_dir():
        path = Path(model or "runs/tiny")
        return path, f"trained ({path})"
    cfg = load_config("tiny")
    tokenizer = load_tokenizer(prepare_dataset(cfg.data, progress=False).tokenizer_path)
    torch.manual_seed(0)
    network = Transformer(resolve_model_config(cfg.model, tokenizer.get_vocab_size()))
    save_bundle(network, tokenizer, folder / "original", {"source": "bench/compress.py, random weights"})
    return folder / "original", "random (tiny preset; run make demo for a trained model)"


def fine_tuned(source: Path, out: Path) -> Path:
    """The original fine-tuned for RECOVER steps as the recovering variants are, without compression."""
    loaded, training = load_model(source, "cpu"), training_config(source)
    step = recover(loaded.model, training, training_data(training, loaded.info["dataset_fingerprint"]), RECOVER)
    save_bundle(loaded.model, loaded.tokenizer, out, {"lineage": {"parent": str(source), "steps": [step]}}, training)
    return out


def measure(loaded, documents: list[tuple[str, str]], size: int, reference=None) -> dict:
    """Quality in the precision the variant is stored in; speed in bf16 (unquantized variants converted) against the
    bf16 original `reference`, the two measured in turn three times: on these shared 2 cores the load drifts over the
    minutes a benchmark takes, so a variant is only compared with the reference measured beside it, the best of three
    of each (the least disturbed)."""
    scores = score_documents(loaded.model, loaded.tokenizer, documents)
    row = {"parameters": loaded.model.num_params(), "bytes": size, "bits_per_byte": scores.bits_per_byte()}
    if reference is not None:
        model = loaded.model.to(torch.bfloat16)
        runs = {"variant": [], "reference": []}
        for _ in range(3):
            for who, network in (("variant", model), ("reference", reference)):
                runs[who].append(measure_efficiency(network, batch_sizes=BATCHES, repeats=3)["throughput"])
        for kind in ("decode", "prefill"):
            best = {who: {b: max(r[b][f"{kind}_tokens_per_second"] for r in rs) for b in rs[0]}
                    for who, rs in runs.items()}
            row[f"{kind}_tokens_per_second"] = {b: round(v, 1) for b, v in best["variant"].items()}
            row[f"{kind}_speed_vs_bf16"] = {b: round(v / best["reference"][b], 2) for b, v in best["variant"].items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data", nargs="+", default=[str(Path(sysconfig.get_paths()["stdlib"]) / "email")])
    args = parser.parse_args()
    documents = [(doc.origin, doc.text) for doc in iter_documents(resolve_sources(args.data, key="--data"))]
    folder = Path(tempfile.mkdtemp(prefix="shoal-bench-compress-"))
    source, weights = source_bundle(args.model, folder)

    variants = {}
    original = load_model(source, "cpu")
    bf16_bytes = original.model.num_params() * 2
    variants["fp32"] = measure(original, documents, bf16_bytes * 2)  # served in bf16: the next row
    original.model.to(torch.bfloat16)  # scored in bf16 too
    reference = copy.deepcopy(original.model)
    variants["bf16"] = measure(original, documents, bf16_bytes, reference)
    trained = training_config(source) is not None
    for name, options in {**VARIANTS, **(RECOVERED if trained else {})}.items():
        summary = compress_model(source, folder / name, device="cpu", **options)
        variants[name] = measure(load_model(folder / name, "cpu"), documents, summary["bytes"], reference)
    if trained:
        tuned = fine_tuned(source, folder / "fine-tuned")
        variants["fine-tuned"] = measure(load_model(tuned, "cpu"), documents, (tuned / "model.safetensors").stat().st_size,
                                         reference)
        summary = compress_model(tuned, folder / "fine-tuned+int4-wo-g64", "int4-wo", 64, device="cpu")
        variants["fine-tuned+int4-wo-g64"] = measure(load_model(folder / "fine-tuned+int4-wo-g64", "cpu"), documents,
                                                     summary["bytes"], reference)
    base_bpb = variants["fp32"]["bits_per_byte"]
    for row in variants.values():
        row["bits_per_byte_change"] = round(row["bits_per_byte"] - base_bpb, 5)
        row["bits_per_byte_change_percent"] = round(100 * (row["bits_per_byte"] / base_bpb - 1), 3)
        row["size_vs_bf16"] = round(row["bytes"] / bf16_bytes, 3)
        row["bits_per_byte"] = round(row["bits_per_byte"], 5)
    print(json.dumps({"benchmark": "compress", "machine": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "model": f"{original.model.num_params() / 1e6:.2f}M "
                      f"parameters, {weights}", "documents": len(documents), "data": args.data,
                      "variants": variants}, indent=2))


if __name__ == "__main__":
    main()
