"""Scaling: tokens/s, memory per rank and communication time for 1, 2 and 4 processes under each layout.

Prints JSON. Every layout trains the same model on the same random tokens with the same global batch, under
torchrun with gloo on the CPU (NCCL on GPUs with --device cuda); the single-process run in the same invocation is
the reference for speed-up and memory. Communication time is what the profiler attributes to collectives
(gloo / NCCL / c10d events, and the self time of FSDP's communication events) over two profiled steps.

    python bench/scaling.py [--preset tiny] [--steps 8] [--layouts single,ddp2,fsdp2,tp2,fsdp4,fsdp2_tp2,hsdp2x2]
                            [--set model.n_layers=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

LAYOUTS = {  # name: (processes, [parallel] overrides)
    "single": (1, []),
    "ddp2": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
    "fsdp2": (2, []),
    "tp2": (2, ["parallel.tp=2"]),
    "fsdp4": (4, []),
    "fsdp2_tp2": (4, ["parallel.dp_shard=2", "parallel.tp=2"]),
    "hsdp2x2": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"]),
}
# Profiler events of collectives. FSDP's own events count by their self time: the part not spent in child ops is
# spent launching and waiting for its all-gathers and reductions.
COMM_MARKERS = ("gloo:", "nccl:", "c10d::", "allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter",
                "broadcast", "barrier", "wait_tensor", "fsdp::")


def worker(args: argparse.Namespace) -> None:
    """One layout, run inside torchrun (or alone for the single process): rank 0 prints one JSON line."""
    from shoal.parallel.group import destroy_process_group, process_info

    result = measure(args)  # the trainer lives only in there, so it is gone before the group is destroyed
    if process_info().is_main:
        print("RESULT " + json.dumps(result))
    destroy_process_group()


def measure(args: argparse.Namespace) -> dict:
    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    from shoal.config import load_config
    from shoal.data.shards import TokenWindows
    from shoal.hardware import peak_memory_bytes
    from shoal.parallel.group import gather_to_main
    from shoal.train.trainer import Trainer

    cfg = load_config(args.preset, args.overrides)
    tokens = np.random.default_rng(0).integers(0, args.vocab, size=2_000_000, dtype=np.int64).astype(np.uint16)
    trainer = Trainer(cfg, TokenWindows([tokens], cfg.train.seq_len), None, args.vocab)
    for _ in range(2):  # warm-up: allocation, first communication, compilation
        trainer.train_step()
    seconds = [trainer.train_step().seconds for _ in range(args.steps)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        profiled = [trainer.train_step().seconds for _ in range(2)]
    comm_us = sum(e.self_cpu_time_total + getattr(e, "self_device_time_total", 0) for e in prof.key_averages()
                  if any(m in e.key.lower() for m in COMM_MARKERS))
    memory = gather_to_main(peak_memory_bytes(trainer.device)) or []  # printed by rank 0 only
    step = statistics.median(seconds)
    return {"processes": trainer.layout.world_size, "layout": trainer.layout.describe(),
            "tokens_per_second": round(cfg.train.batch_tokens / step, 1),
            "tokens_per_second_per_process": round(cfg.train.batch_tokens / step / trainer.layout.world_size, 1),
            "seconds_per_step": round(step, 4),
            "communication_share": round(comm_us / 1e6 / sum(profiled), 3),
            "peak_memory_mib_per_rank": [round(m / 2**20, 1) for m in memory],
            "device": str(trainer.device).split(":")[0], "dtype": str(trainer.dtype).removeprefix("torch.")}


def run_layout(name: str, args: argparse.Namespace) -> dict:
    nproc, overrides = LAYOUTS[name]
    command = [os.path.abspath(__file__), "--worker", "--preset", args.preset, "--steps", str(args.steps),
               "--vocab", str(args.vocab), *[a for o in args.overrides + overrides for a in ("--set", o)]]
    if nproc > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *command]
    # The cores are shared out between the processes, as `shoal train --nproc` does.
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise SystemExit(f"layout {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[0].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per layout")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    names = args.layouts.split(",")
    if "single" not in names:
        names.insert(0, "single")
    results = {name: run_layout(name, args) for name in names}
    reference = results["single"]
    for r in results.values():
        r["speedup_vs_single"] = round(r["tokens_per_second"] / reference["tokens_per_second"], 3)
        r["memory_per_rank_vs_single"] = round(max(r["peak_memory_mib_per_rank"])
                                               / reference["peak_memory_mib_per_rank"][0], 3)
    print(json.dumps({"benchmark": "scaling", "preset": args.preset, "overrides": args.overrides,
                      "cores": os.cpu_count(), "timed_steps": args.steps, "results": results}, indent=2))


if __name__ == "__main__":
    main()
