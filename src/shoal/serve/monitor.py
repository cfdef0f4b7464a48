"""`shoal monitor URL`: fetch a server's drift report, print it, and plot every judged window over time."""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.io import atomic_write_json, ensure_writable_dir
from shoal.serve.drift import CHECKS

UNITS = {"tokens_js": "bits", "tokens_psi": "", "length_ks": "", "surprisal": "nats/token"}


def fetch_drift(url: str, api_key: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """GET URL/v1/drift; a one-line ShoalError when the server cannot be reached or says no."""
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1/drift") else "/v1/drift")
    if not endpoint.startswith(("http://", "https://")):
        raise ShoalError(f"{url} is not an http(s) URL of a shoal server")
    request = urllib.request.Request(endpoint, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            report = json.loads(reply.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise ShoalError(f"{endpoint} answered {e.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ShoalError(f"cannot read {endpoint}: {getattr(e, 'reason', e)}") from None
    if not isinstance(report, dict) or "history" not in report:
        raise ShoalError(f"{endpoint} did not return a drift report")
    return report


def render_drift(report: dict[str, Any]) -> str:
    """The latest judged window (or the window filling now) as a table, and the history in one line."""
    ref = report["reference"]
    lines = [f"reference: {ref['source']}, {ref['pieces']:,} reference prompts (median {ref['median_length']:.0f} "
             f"tokens), mean surprisal {ref['mean_surprisal']:.3f} nats/token"]
    history = report["history"]
    shown = history[-1] if history else report["current"]
    if shown is None:
        lines.append(f"no window to judge yet: {report['current_prompts']} of {report['window']} prompts so far")
        return "\n".join(lines)
    which = f"window {shown['window']}" if history else "the window filling now"
    lines.append(f"{which}: {shown['prompts']} prompts, {shown['tokens']:,} tokens")
    lines.append(f"  {'check':<12}{'value':>10}{'expected':>10}{'z':>8}  alarm at z >= {report['z_alarm']:g}")
    for name in CHECKS:
        c = shown["checks"].get(name)
        if c:
            lines.append(f"  {name:<12}{c['value']:>10.4f}{c['expected']:>10.4f}{c['z']:>8.1f}  "
                         f"{'ALARM' if c['alarm'] else 'ok'} {UNITS[name]}".rstrip())
    alarmed = sum(w["alarm"] for w in history)
    lines.append(f"{len(history)} windows judged, {alarmed} with an alarm; "
                 + ("DRIFT in the latest window: " + ", ".join(shown["alarms"]) if shown["alarm"] else "no drift"))
    return "\n".join(lines)


def plot_drift(report: dict[str, Any], out_png: Path) -> None:
    """One panel per check: each judged window's z-score against the time it closed, the alarm line, alarms in red."""
    from shoal.eval.plots import pyplot
    from shoal.train.metrics import save_figure

    plt = pyplot()
    history = report["history"]
    fig, axes = plt.subplots(len(CHECKS), 1, figsize=(7, 7.5), dpi=120, sharex=True)
    times = [datetime.datetime.fromtimestamp(w["end"]) for w in history]
    for ax, name in zip(axes, CHECKS):
        points = [(t, w["checks"][name]) for t, w in zip(times, history) if name in w["checks"]]
        ax.axhline(report["z_alarm"], color="C3", linestyle="--", linewidth=1, label="alarm")
        ax.axhline(0, color="gray", linewidth=0.5)
        if points:
            ax.plot([t for t, _ in points], [c["z"] for _, c in points], "o-", color="C0", markersize=3)
            alarms = [(t, c["z"]) for t, c in points if c["alarm"]]
            if alarms:
                ax.plot(*zip(*alarms), "o", color="C3", markersize=5)
        ax.set_ylabel(f"{name}\nz", fontsize=8)
    axes[0].set_title(f"drift of each window of {report['window']} prompts against the training data")
    axes[0].legend(loc="upper left", fontsize=7)
    axes[-1].set_xlabel("window closed at")
    fig.autofmt_xdate()
    fig.tight_layout()
    save_figure(fig, out_png)


def write_monitor(report: dict[str, Any], out: Path) -> None:
    ensure_writable_dir(out)
    atomic_write_json(out / "drift.json", report)
    plot_drift(report, out / "drift.png")
