"""Opening what `shoal serve` serves: a run folder, a bundle or a registry reference (models:/NAME@ALIAS), and
building its backend (precision, decode step, engine, drift monitor, scheduler), again for each swap."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.bundle import LoadedModel, load_model
from shoal.errors import ShoalError
from shoal.serve.backend import Backend

REGISTRY_PREFIX = "models:/"


@dataclass
class BackendOptions:
    dtype: str = "auto"
    decode: str = "auto"
    max_batch: int = 8
    max_queue: int = 64
    queue_timeout: float = 30.0
    max_prompt_tokens: int = 0
    drift: bool = True
    drift_reference: tuple[str, ...] = ()
    drift_window: int = 100
    drift_z: float = 4.0


def open_model(reference: str, device: str, tracking_uri: str | None = None) -> tuple[LoadedModel, str, str]:
    """(model, the name clients send, the version responses report). A registry reference is downloaded, every
    file checked against the checksums recorded at registration, loaded, and its download removed."""
    if not reference.startswith(REGISTRY_PREFIX):
        path = Path(reference)
        return load_model(path, device), path.resolve().name, path.resolve().name
    from shoal.registry.store import Store
    from shoal.registry.versions import fetch

    version, bundle = fetch(Store(tracking_uri), reference)
    try:
        return load_model(bundle, device), version.name, f"{version.name}/{version.version}"
    finally:
        shutil.rmtree(bundle.parent, ignore_errors=True)


def build_backend(loaded: LoadedModel, name: str, version: str, options: BackendOptions,
                  warn: Callable[[str], None] = print) -> Backend:
    from shoal.hardware import pick_dtype
    from shoal.serve.decoders import pick_decoder
    from shoal.serve.engine import Engine
    from shoal.serve.scheduler import Scheduler

    weights = loaded.model.tok_embeddings.weight
    network = loaded.model.to(pick_dtype(options.dtype, weights.device))
    steps = (loaded.info.get("lineage") or {}).get("steps") or []
    if any(step.get("method") == "prune-2:4" for step in steps) and not loaded.info.get("quantization"):
        from shoal.compress.prune import accelerate_2_4

        accelerate_2_4(network)  # sparse kernels on a GPU with sparse tensor cores, in half precision; else nothing
    try:
        pick_decoder(options.decode, network)
    except ValueError as e:
        raise ShoalError(str(e)) from None
    engine = Engine(network, options.max_batch, decoder=options.decode)
    monitor = _drift_monitor(loaded, network, list(options.drift_reference),
                             options.max_prompt_tokens or engine.max_len, options, warn) if options.drift else None
    engine.score_prompts = monitor is not None
    scheduler = Scheduler(engine, options.max_queue, options.queue_timeout,
                          on_admit=(lambda s: monitor.observe(s.request.prompt, s.prompt_nats)) if monitor else None)
    return Backend(scheduler, loaded.tokenizer, name, version, monitor)


def _drift_monitor(loaded: LoadedModel, model, reference: list[str], max_prompt: int, options: BackendOptions,
                   warn: Callable[[str], None]):
    """The drift monitor, or None (with a warning) when a run's data is gone and no reference was named."""
    from shoal.serve.drift import DriftMonitor
    from shoal.serve.drift_profile import server_profile

    try:
        profile = server_profile(loaded, model, reference, max_prompt)
    except ShoalError as e:
        if reference:
            raise
        warn(f"warning: drift monitoring is off: {e}")
        return None
    return DriftMonitor(profile, options.drift_window, options.drift_z)
