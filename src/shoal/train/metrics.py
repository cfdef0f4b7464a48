"""metrics.jsonl (one JSON record per line) and the plots drawn from it: loss, and expert load for MoE models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.io import atomic_write_text


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash mid-write is dropped, the rest kept
            continue
    return records


class MetricsLog:
    """Appends records; on resume, drops those past the checkpoint so redone steps are not doubled."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_loss(metrics_path: str | Path, out_png: str | Path, reference: float | None = None) -> Path | None:
    """Train and validation loss over tokens seen; `reference` draws a horizontal line (unigram entropy)."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and not r.get("skipped")]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(*zip(*train), lw=1, alpha=0.8, label="train")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, label="validation")
    if reference is not None:
        ax.axhline(reference, ls="--", color="gray", lw=1, label=f"unigram entropy ({reference:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("shoal training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_png)


def expert_load_summary(records: list[dict[str, Any]], last: int = 20) -> dict[str, Any] | None:
    """Load of each MoE layer's experts over the last `last` steps: shares of routed tokens, and max / mean per layer
    (1 is perfect balance, n_experts means one expert takes everything)."""
    loads = [r["moe_load"] for r in records if r.get("moe_load")][-last:]
    if not loads:
        return None
    layers = [[sum(step[layer][e] for step in loads) / len(loads) for e in range(len(loads[0][layer]))]
              for layer in range(len(loads[0]))]
    ratios = [max(shares) / (sum(shares) / len(shares)) for shares in layers]
    return {"steps": len(loads), "load": layers, "max_mean_ratio_per_layer": ratios,
            "max_mean_ratio": sum(ratios) / len(ratios)}


def plot_expert_load(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """experts.png: per MoE layer, a heatmap of each expert's share of routed tokens over training, relative to a
    perfectly even split (1.0, white); red experts are overloaded, blue ones starved."""
    records = [r for r in read_metrics(metrics_path) if r.get("moe_load")]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    steps = [r["step"] for r in records]
    load = np.array([r["moe_load"] for r in records], dtype=float)  # [steps, layers, experts]
    n_layers, n_experts = load.shape[1], load.shape[2]
    relative = np.clip(load * n_experts, 1 / 8, 8)  # 1.0 = even; clipped so one dead expert does not wash out the rest
    fig, axes = plt.subplots(n_layers, 1, figsize=(8, 1.0 + 1.1 * n_layers), dpi=120, sharex=True, squeeze=False)
    for layer, ax in enumerate(axes[:, 0]):
        image = ax.imshow(relative[:, layer].T, aspect="auto", cmap="RdBu_r", norm=LogNorm(1 / 8, 8),
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, n_experts - 0.5, -0.5), interpolation="nearest")
        ax.set_ylabel(f"MoE {layer}\nexpert", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title("expert load (share of routed tokens x number of experts; 1 = even)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, pad=0.02, ticks=[1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8],
                 format=lambda v, _: f"{v:g}").ax.minorticks_off()
    return save_figure(fig, out_png)


def save_figure(fig: Any, out_png: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_png)
    return out_png
