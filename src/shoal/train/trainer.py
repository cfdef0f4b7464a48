"""The training loop: one optimizer step at a time, with validation, checkpoints and a live view.

The trainer sees a plain model and a data loader; which device, precision or (later) which
parallel layout is used is decided around it, so the loop itself never changes.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from shoal.config import Config
from shoal.data.loader import DataLoader, validation_batches
from shoal.data.shards import TokenWindows
from shoal.errors import CheckpointError, ConfigError, TrainingError
from shoal.hardware import peak_flops, peak_memory_bytes, pick_device, pick_dtype
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.parallel.apply import parallelize
from shoal.parallel.group import all_reduce_mean, init_process_group, process_info
from shoal.parallel.mesh import build_mesh, check_layout_fits, dp_rank, resolve_layout
from shoal.train.optim import build_optimizer, lr_at, set_lr


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    lr: float
    seconds: float
    skipped: bool
    moe: dict[str, Any] | None = None  # routing figures of MoE layers (see moe_figures)


class Trainer:
    def __init__(self, cfg: Config, train_windows: TokenWindows, val_windows: TokenWindows | None,
                 vocab_size: int, dataset_fingerprint: str = ""):
        t, p = cfg.train, cfg.parallel
        if 0 < cfg.model.vocab_size < vocab_size:
            raise ConfigError(f"config key 'model.vocab_size' ({cfg.model.vocab_size}) is below the tokenizer's "
                              f"{vocab_size} tokens; set it to 0 (automatic) or at least {vocab_size}")
        self.cfg = replace(cfg, model=resolve_model_config(cfg.model, vocab_size))
        self.process = process_info()
        self.layout = resolve_layout(p, self.process.world_size)
        self.global_batch = t.batch_tokens // t.seq_len
        check_layout_fits(self.layout, self.cfg.model, t.seq_len, self.global_batch, t.micro_batch_size)
        self.device = pick_device(t.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.process.local_rank)  # one GPU per process
            torch.set_float32_matmul_precision("high")  # fp32 matmuls on TF32 tensor cores, as the MFU peak assumes
        self.dtype = pick_dtype(t.dtype, self.device)
        init_process_group(self.device, p.timeout_s)
        self.mesh = build_mesh(self.layout, self.device)
        self.dataset_fingerprint = dataset_fingerprint

        # Every rank builds the same full model from the seed; the layout then keeps only each rank's share.
        torch.manual_seed(t.seed)
        self.model = Transformer(self.cfg.model).to(self.device)
        if t.qat:
            from shoal.compress.qat import prepare_qat

            prepare_qat(self.model, t.qat, t.qat_group_size)
        self.flops_per_token = self.model.flops_per_token(t.seq_len)
        self.num_params = (self.model.num_params(), self.model.num_params(non_embedding=True),
                           self.model.num_params(active=True))
        self.moe_layers = self.model.moe_layers()  # the same modules once parallelized (that happens in place)
        distributed = self.layout.world_size > 1
        parallelize(self.model, self.layout, self.mesh, activation_checkpoint=p.activation_checkpoint,
                    compile_blocks=t.compile and distributed,
                    param_dtype=self.dtype if self.device.type == "cuda" and self.dtype != torch.float32 else None)
        # One process compiles the loss with the whole model, which lets the compiler fuse the fp32 upcast of the
        # logits into the loss; distributed layouts compile per block (above), between FSDP's communication hooks.
        self.micro_loss = torch.compile(self._micro_loss) if t.compile and not distributed else self._micro_loss
        self.optimizer = build_optimizer(self.model, t)
        self.local_batch = self.global_batch // self.layout.dp
        self.micro_batch = min(t.micro_batch_size, self.local_batch)
        self.micro_steps = self.local_batch // self.micro_batch
        for moe in self.moe_layers:
            moe.aux_loss_scale = 1.0 / self.micro_steps  # balancing losses are scaled like the model's loss
        self.loader = DataLoader(train_windows, self.global_batch, t.seed, dp_rank(self.mesh), self.layout.dp)
        self.val_batches = validation_batches(val_windows, t.micro_batch_size, t.eval_batches) if val_windows else []
        self.step = 0  # optimizer steps done (skipped non-finite steps included: their batch is consumed)
        self.bad_steps = 0
        self.peak_flops, self.peak_source = peak_flops(self.device, self.dtype)
        self.stop_signal: int | None = None  # the signal that asked this run to stop (agreed by all ranks)
        self._signal_seen: int | None = None  # set by this process's handler at any moment

    # --- one step -------------------------------------------------------------------------------

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _micro_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of windows [B, T + 1]; logits are upcast so the loss is computed in fp32."""
        with self.autocast():
            logits = self.model(tokens[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    def train_step(self) -> StepResult:
        t = self.cfg.train
        start = time.perf_counter()
        lr = lr_at(self.step, t)
        set_lr(self.optimizer, lr)
        self.model.train()
        batch = self.loader.batch(self.step).to(self.device, non_blocking=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in batch.split(self.micro_batch):
            loss = self.micro_loss(micro)
            (loss / self.micro_steps).backward()
            loss_sum += loss.detach()
        # One all-reduce carries the loss, any stop request and the MoE routing counts. The mean over ranks is the
        # loss of the global batch; a non-finite loss on any rank makes it non-finite everywhere, so all ranks skip
        # the step together (the gradient norm is already global); and a signal seen by any rank stops every rank
        # after the same step.
        moe_stats = [moe.stats for moe in self.moe_layers]
        shared = all_reduce_mean(torch.cat([torch.stack([loss_sum / self.micro_steps,
                                                         torch.tensor(float(self._signal_seen or 0), device=self.device)]),
                                            *moe_stats]))
        grad_norm = clip_grad_norm(self.model, t.grad_clip)
        stats = torch.cat([torch.stack([shared[0], grad_norm.float(), shared[1]]), shared[2:]])
        self._balance_experts(shared[2:])
        # The fused optimizer skips a non-finite step on the device (the mechanism GradScaler uses), so the host
        # launches the update without first waiting for the GPU to finish the backward pass.
        self.optimizer.found_inf = (~stats.isfinite().all()).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, grad_norm, stop_requested, *moe_values = stats.tolist()  # the step's one wait for the device
        if stop_requested > 0 and self.stop_signal is None:
            self.stop_signal = self._signal_seen or signal.SIGTERM  # another rank got it (torchrun sends SIGTERM)
        skipped = not (math.isfinite(loss_value) and math.isfinite(grad_norm))
        self.step += 1
        self.bad_steps = self.bad_steps + 1 if skipped else 0
        if self.bad_steps >= t.max_bad_steps:
            raise TrainingError(f"loss was non-finite for {self.bad_steps} steps in a row (last: step {self.step}); "
                                "the weights are those of the last finite step: lower train.lr or check the data")
        moe = moe_figures(moe_values, len(self.moe_layers)) if self.moe_layers else None
        return StepResult(loss_value, grad_norm, lr, time.perf_counter() - start, skipped, moe)

    def _balance_experts(self, stats: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing from this step's counts (the same on every rank), then reset the counts."""
        if not self.moe_layers:
            return
        speed = self.cfg.model.moe.bias_update_speed
        for moe, layer_stats in zip(self.moe_layers, stats.view(len(self.moe_layers), -1)):
            if speed > 0:
                moe.update_bias(layer_stats[:moe.n_experts], speed)
            moe.reset_stats()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean next-token loss (nats) over the fixed validation windows."""
        if not self.val_batches:
            return None
        self.model.eval()
        rank, ranks = dp_rank(self.mesh), self.layout.dp
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss * tokens, tokens
        for batch in self.val_batches:
            # Each data-parallel rank evaluates its share of the rows. A batch too small to split is run whole by
            # every rank (sharded layouts need all ranks in every forward pass) and counted by the first only.
            counted = len(batch) % ranks == 0 or rank == 0
            part = batch.tensor_split(ranks)[rank] if len(batch) % ranks == 0 else batch
            part = part.to(self.device)
            loss = self._micro_loss(part).double()  # eager: a rare, odd-shaped call
            if counted:
                sums += torch.stack([loss * part[:, 1:].numel(), sums.new_tensor(part[:, 1:].numel())])
        # Ranks that differ only in tp add the same share, which scales both sums alike.
        total, count = all_reduce_mean(sums).tolist()
        return total / count

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Model and optimizer as (possibly sharded) tensors keyed by parameter name, RNG, and the run's facts.

        Parameter names are the same under every layout, which is what lets a checkpoint load at another one.
        """
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        # The CPU generator only: training draws no random numbers on the GPU, and a checkpoint must also load on a
        # machine without one.
        rng = {"torch": torch.get_rng_state()}
        return {"model": model_state, "optimizer": optimizer_state, "rng": rng,
                "trainer": {"step": self.step, "bad_steps": self.bad_steps, "loader": self.loader.state_dict(self.step),
                            "config": self.cfg.to_dict(), "dataset_fingerprint": self.dataset_fingerprint,
                            "layout": asdict(self.layout)}}

    def check_resumable(self, facts: dict[str, Any]) -> None:
        """Raise unless a checkpoint with these facts (its "trainer" entry) continues this run exactly."""
        saved_model, model = _shape(facts["config"]["model"]), _shape(asdict(self.cfg.model))
        changed = [f"model.{k}: checkpoint {v!r}, config {model.get(k)!r}" for k, v in saved_model.items()
                   if model.get(k) != v]
        if changed:
            raise CheckpointError(f"checkpoint was trained with another model shape ({'; '.join(changed)}); "
                                  "use the same [model] settings or start a new run")
        if facts["dataset_fingerprint"] != self.dataset_fingerprint:
            raise CheckpointError(f"checkpoint was trained on dataset {facts['dataset_fingerprint'][:16]}, this run "
                                  f"prepares {self.dataset_fingerprint[:16]}; use the same data or start a new run")
        self.loader.check_state(facts["loader"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        facts = state["trainer"]
        self.check_resumable(facts)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        self.step = facts["step"]
        self.bad_steps = facts["bad_steps"]
        torch.set_rng_state(state["rng"]["torch"])

    # --- the loop -------------------------------------------------------------------------------

    def _catch_stop_signals(self) -> Callable[[], None]:
        """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step.

        A second Ctrl-C acts at once. Repeated SIGTERMs stay one request: under SLURM a worker gets the job's
        SIGTERM both directly and forwarded by torchrun, and must still finish its step and write its shard.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            self._signal_seen = signum
            if signum == signal.SIGINT:
                signal.signal(signum, previous[signum])

        for sig in previous:
            signal.signal(sig, handler)
        return lambda: [signal.signal(sig, h) for sig, h in previous.items()]

    def fit(self, on_step: Callable[[dict[str, Any]], None], save: Callable[[], None],
            progress: Any = None) -> str:
        """Train until cfg.train.steps; returns "completed" or "interrupted" (checkpoint saved either way).

        `on_step` receives every metrics record; `save` writes a checkpoint of `state_dict()`.
        """
        t = self.cfg.train
        tokens_per_step = self.global_batch * t.seq_len
        world = self.layout.world_size
        restore_signals = self._catch_stop_signals()
        try:
            while self.step < t.steps:
                result = self.train_step()
                tokens_per_second = tokens_per_step / result.seconds
                record = {"step": self.step, "loss": None if result.skipped else result.loss, "lr": result.lr,
                          "grad_norm": result.grad_norm if math.isfinite(result.grad_norm) else None,
                          "tokens": self.step * tokens_per_step, "tokens_per_second": tokens_per_second,
                          "tokens_per_second_per_device": tokens_per_second / world,
                          "mfu": self.flops_per_token * tokens_per_second / (self.peak_flops * world),
                          "peak_memory_bytes": peak_memory_bytes(self.device),
                          "step_seconds": result.seconds, "skipped": result.skipped, **(result.moe or {})}
                on_step(record)
                if progress is not None:
                    progress(record)
                if (self.step % t.eval_every == 0 or self.step == t.steps) and self.stop_signal is None:
                    val_loss = self.evaluate()
                    if val_loss is not None:
                        on_step({"step": self.step, "val_loss": val_loss})
                if self.stop_signal is not None:
                    save()
                    return "interrupted"
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    save()
            return "completed"
        finally:
            restore_signals()

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "parameters": self.num_params[0], "non_embedding_parameters": self.num_params[1],
                "active_parameters": self.num_params[2],
                "layout": self.layout.describe(), "world_size": self.layout.world_size,
                "flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops, "peak_source": self.peak_source,
                "global_batch_sequences": self.global_batch, "micro_steps": self.micro_steps,
                "model": asdict(self.cfg.model)}


# MoE settings a resumed run may change: they steer training, the weights fit any of them.
_MOE_TRAINING_KNOBS = ("aux_loss_coef", "z_loss_coef", "capacity_factor", "bias_update_speed")


def _shape(model: dict[str, Any]) -> dict[str, Any]:
    """The model settings a checkpoint's weights depend on, flattened (model.moe.x as moe.x)."""
    flat = {k: v for k, v in model.items() if k != "moe"}
    flat.update({f"moe.{k}": v for k, v in (model.get("moe") or {}).items() if k not in _MOE_TRAINING_KNOBS})
    return flat


def moe_figures(values: list[float], n_layers: int) -> dict[str, Any]:
    """Metrics of one step from the MoE layers' reduced stats (per layer: expert counts, DROPPED, AUX_LOSS, Z_LOSS,
    PASSES). Shares and means only, so they do not depend on how many forward passes (micro-batches, activation
    checkpointing's recomputation) were counted."""
    width = len(values) // n_layers
    load, aux, z, dropped = [], 0.0, 0.0, 0.0
    for row in (values[i * width:(i + 1) * width] for i in range(n_layers)):
        counts, (n_dropped, aux_sum, z_sum, passes) = row[:-4], row[-4:]
        total = sum(counts) or 1.0
        load.append([round(c / total, 5) for c in counts])
        aux += aux_sum / (passes or 1.0) / n_layers
        z += z_sum / (passes or 1.0) / n_layers
        dropped += n_dropped / total / n_layers
    return {"moe_aux_loss": aux, "moe_z_loss": z, "moe_dropped_fraction": dropped, "moe_load": load,
            "moe_max_load_ratio": max(max(row) * len(row) for row in load)}


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Total gradient norm over all ranks (sharded DTensor gradients included); scales gradients down to `max_norm`
    when it is > 0. Gradients on different meshes (expert-parallel experts and the rest) are normed apart and
    combined, since DTensor ops cannot mix meshes."""
    by_mesh: dict[Any, list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    norms = []
    for params in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # every shard's squares, all-reduced
    norm = norms[0] if len(norms) == 1 else torch.stack(norms).square().sum().sqrt()
    if max_norm > 0:
        for params in by_mesh.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def summarize_throughput(records: list[dict[str, Any]], skip_first: int = 3) -> dict[str, float]:
    """Median tokens/s and MFU over the steps of a run, leaving out the warm-up steps."""
    steps = [r for r in records if "tokens_per_second" in r][skip_first:]
    if not steps:
        return {}
    return {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in steps),
            "mfu": statistics.median(r["mfu"] for r in steps)}
