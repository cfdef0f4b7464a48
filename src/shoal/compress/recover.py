"""`shoal compress --recover-steps N`: a short fine-tune with the trainer, on the training split of the data the
model was trained on, so the rest of the network makes up for what pruning took away, and when quantizing, with the
quantization simulated (QAT), so the weights settle where rounding costs least.

Zeros that pruning set (magnitude, 2:4) are put back after every optimizer step, so the sparsity survives; structured
pruning changed the shapes instead and needs nothing kept. The learning rate starts at --recover-lr (default: a tenth
of the training run's peak, a common fine-tuning choice) and follows a cosine to the run's floor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from shoal.compress.prune import block_linears
from shoal.compress.qat import QAT_METHODS
from shoal.config import ParallelConfig, config_from_dict
from shoal.data.prepared import PreparedData, load_prepared
from shoal.errors import ShoalError
from shoal.models.transformer import Transformer
from shoal.train.run import live_view
from shoal.train.trainer import Trainer


def check_recovery(steps: int, lr: float | None, training_config: dict[str, Any] | None,
                   quantize: str | None = None) -> None:
    if steps < 0 or (lr is not None and lr <= 0):
        raise ShoalError(f"--recover-steps must be >= 0 and --recover-lr > 0 (got {steps} and {lr})")
    if lr is not None and not steps:
        raise ShoalError("--recover-lr sets the learning rate of --recover-steps; give both")
    if steps and quantize and quantize not in QAT_METHODS:
        raise ShoalError(f"--recover-steps trains with {quantize} simulated, which covers {', '.join(QAT_METHODS)}")
    if steps and training_config is None:
        raise ShoalError("--recover-steps trains on the model's own training data, and this bundle does not say what "
                         "it was (no training config); compress the run folder instead")


def training_data(training_config: dict[str, Any], fingerprint: str | None) -> PreparedData:
    """The prepared data the model was trained on, from the prepared-data cache, never rebuilt: a rebuild from
    sources that changed since would train a new tokenizer and fine-tune on other token ids."""
    folder = Path(config_from_dict(training_config).data.prepared_dir)
    if not fingerprint:
        raise ShoalError("--recover-steps needs to know which dataset the model was trained on (its dataset "
                         "fingerprint), and this model does not say; compress the run folder instead")
    if not (folder / fingerprint[:16]).is_dir():
        raise ShoalError(f"--recover-steps trains on the model's prepared dataset {fingerprint[:16]}, which is not in "
                         f"{folder.resolve()}; run from the folder the model was trained in, or prepare it there with "
                         "shoal data prepare and the run's config")
    data = load_prepared(folder / fingerprint[:16])
    if data.fingerprint != fingerprint:
        raise ShoalError(f"the prepared dataset in {data.folder} is not the one the model was trained on")
    return data


def recover(model: Transformer, training_config: dict[str, Any], data: PreparedData, steps: int,
            lr: float | None = None, keep_zeros: bool = False, qat: tuple[str, int] | None = None,
            console: Console | None = None) -> dict[str, Any]:
    """Fine-tune `model` in place for `steps` optimizer steps on `data`'s training split, with `qat` = (method,
    group size) simulated; returns the lineage step (settings, validation loss before and after: of the simulated
    quantized model under QAT)."""
    cfg = config_from_dict(training_config)
    lr = lr or cfg.train.lr * 0.1
    train = dataclasses.replace(cfg.train, steps=steps, lr=lr, schedule="cosine", warmup_steps=max(1, steps // 10),
                                eval_every=steps, checkpoint_every=steps, compile=False,
                                device=model.tok_embeddings.weight.device.type, qat=qat[0] if qat else "",
                                qat_group_size=qat[1] if qat else 32)
    cfg = dataclasses.replace(cfg, model=model.config, train=train, parallel=ParallelConfig())
    trainer = Trainer(cfg, data.windows("train", train.seq_len), data.windows("val", train.seq_len),
                      data.manifest["vocab_size"], data.fingerprint)
    trainer.model.load_state_dict(model.state_dict())
    if keep_zeros:
        _keep_zeros(trainer)
    before = trainer.evaluate()
    records: list[dict[str, Any]] = []
    console = console or Console(stderr=True)
    with live_view(console, steps, 0, max(1, steps // 5), cfg.logging.progress) as view:
        status = trainer.fit(records.append, lambda: None, view)
    if status != "completed":
        raise ShoalError("recovery was interrupted; nothing was written")
    after = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)
    model.load_state_dict(trainer.model.state_dict())  # back into the model's own precision
    return {"method": "recover", "settings": {"steps": steps, "lr": float(f"{lr:.6g}"), "qat": train.qat or None,
                                                "data": data.fingerprint},
            "val_loss": [None if loss is None else round(loss, 5) for loss in (before, after)]}


def _keep_zeros(trainer: Trainer) -> None:
    """Zero the pruned weights again after every optimizer step."""
    layers = block_linears(trainer.model)
    masks = [layer.weight == 0 for layer in layers]

    def reapply(*_: Any) -> None:
        with torch.no_grad():
            for layer, mask in zip(layers, masks):
                layer.weight.masked_fill_(mask, 0.0)

    trainer.optimizer.register_step_post_hook(reapply)
