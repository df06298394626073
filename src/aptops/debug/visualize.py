"""Pictures of what the monitors saw, and the full report: HTML (plots embedded), JSON and PDF.

PNG figures come from matplotlib (Agg backend, no display needed); ``interactive=True`` writes plotly
HTML instead (plotly.js inlined, so it opens offline). :func:`generate_full_report` writes one
self-contained ``report.html`` (no network, no files beside it), ``report.json`` and ``report.pdf``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aptops.core.artifacts import StageResult, atomic_output, finish_artifact, write_json
from aptops.core.deps import require
from aptops.debug.findings import Finding, sort_findings
from aptops.debug.gradients import depth_profile

SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}


def _plt() -> Any:
    matplotlib = require("matplotlib", extra="debug", feature="debug plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def normalise(value: Any, *, json_safe: bool = False) -> Any:
    """Monitors, trackers and findings as plain data; ``json_safe`` also spells NaN/Inf as strings."""
    if isinstance(value, Finding):
        return normalise(value.to_dict(), json_safe=json_safe)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return normalise(value.to_dict(), json_safe=json_safe)
    if hasattr(value, "summary") and callable(value.summary) and not isinstance(value, Mapping):
        return normalise(value.summary(), json_safe=json_safe)
    if isinstance(value, Mapping):
        return {str(k): normalise(v, json_safe=json_safe) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v, json_safe=json_safe) for v in value]
    if hasattr(value, "tolist"):
        return normalise(value.tolist(), json_safe=json_safe)
    if json_safe and isinstance(value, float) and not math.isfinite(value):
        return str(value)  # strict JSON has no NaN/Inf
    return value


def _gradient_data(stats: Any) -> dict[str, Any]:
    data = normalise(stats)
    return data.get("gradients", data) if isinstance(data, Mapping) else {}


def _flow(grad: Mapping[str, Any]) -> list[tuple[str, float]]:
    sums: dict[str, list[float]] = {}
    for record in grad.get("history", []):
        for name, (_, _, norm) in record["layers"].items():
            if isinstance(norm, int | float) and math.isfinite(norm):
                sums.setdefault(name, []).append(norm)
    order = grad.get("names") or list(sums)
    return [(n, sum(sums[n]) / len(sums[n])) for n in order if n in sums]


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def visualize_gradients(stats: Any, path: str | Path | None = None, *, interactive: bool = False) -> Any:
    """Gradient flow (mean norm per parameter, input to output, log scale) and the norm over steps.

    Args:
        stats: a :class:`~aptops.debug.gradients.GradientMonitor`, its ``to_dict()``, or report stats
            holding ``gradients``.
        path: write the PNG (or, interactive, the HTML) here; ``None`` returns the figure.
        interactive: a plotly figure instead of matplotlib.
    """
    grad = _gradient_data(stats)
    flow = _flow(grad)
    steps = [(r["step"], r["total_norm"]) for r in grad.get("history", [])]
    if interactive:
        return _plotly_gradients(flow, steps, path)
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7))
    if flow:
        ax1.bar(range(len(flow)), [max(v, 1e-30) for _, v in flow], color="#1f77b4")
        ax1.set_yscale("log")
        ticks = list(range(0, len(flow), max(1, len(flow) // 12)))
        ax1.set_xticks(ticks, [flow[i][0] for i in ticks], rotation=60, ha="right", fontsize=7)
        depth = depth_profile(flow)
        ax1.set_title("Gradient flow: mean L2 norm per parameter, input to output"
                      + (f" ({len(depth)} blocks)" if depth else ""))
    ax1.set_ylabel("gradient norm")
    steps = [(s, v) for s, v in steps if math.isfinite(v)]
    if steps:
        ax2.plot([s for s, _ in steps], [v for _, v in steps], label="global norm", color="#d62728")
        values = [v for _, v in steps]
        ax2.set_yscale("log" if min(values) > 0 and max(values) / min(values) > 20 else "linear")
        ax2.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient norm")
    ax2.set_title("Global gradient norm over steps")
    fig.tight_layout()
    return _save(fig, path)


def _plotly_gradients(flow: list[tuple[str, float]], steps: list[tuple[int, float]], path: str | Path | None) -> Any:
    require("plotly", extra="debug", feature="interactive debug plots")
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, subplot_titles=("Gradient flow (mean L2 norm per parameter)",
                                                        "Global gradient norm over steps"))
    fig.add_bar(x=[n for n, _ in flow], y=[v for _, v in flow], name="mean norm", row=1, col=1)
    fig.add_scatter(x=[s for s, _ in steps], y=[v for _, v in steps], name="global norm", row=2, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    return _save_plotly(fig, path)


def _save_plotly(fig: Any, path: str | Path | None) -> Any:
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)  # plotly.js inlined: opens offline
    return path


def visualize_activations(stats: Any, path: str | Path | None = None, *, interactive: bool = False,
                          max_layers: int = 12) -> Any:
    """Histograms of each monitored layer's outputs, with dead-unit ratios in the titles."""
    data = normalise(stats)
    acts = data.get("activations", data) if isinstance(data, Mapping) else {}
    dead = (data.get("dead_neurons") or {}).get("layers", {}) if isinstance(data, Mapping) else {}
    layers = [(n, s) for n, s in acts.items() if isinstance(s, Mapping) and s.get("hist_range")][:max_layers]
    if interactive:
        require("plotly", extra="debug", feature="interactive debug plots")
        import plotly.graph_objects as go

        fig = go.Figure()
        for name, s in layers:
            lo, hi = s["hist_range"]
            width = (hi - lo) / len(s["hist"])
            fig.add_bar(x=[lo + width * (i + 0.5) for i in range(len(s["hist"]))], y=s["hist"], name=name)
        fig.update_layout(barmode="overlay", title="Activation histograms")
        return _save_plotly(fig, path)
    plt = _plt()
    cols = 3
    rows = max(1, math.ceil(len(layers) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (name, s) in zip(axes.flat, layers, strict=False):
        ax.set_visible(True)
        lo, hi = s["hist_range"]
        width = (hi - lo) / len(s["hist"])
        ax.bar([lo + width * (i + 0.5) for i in range(len(s["hist"]))], s["hist"], width=width, color="#2ca02c")
        ratio = dead.get(name, {}).get("dead_ratio")
        ax.set_title(f"{name[-40:]}" + (f"\ndead {ratio:.0%}" if ratio else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Activation distributions")
    fig.tight_layout()
    return _save(fig, path)


def plot_memory(memory: Any, path: str | Path | None = None) -> Any:
    """The memory timeline with its peak."""
    data = normalise(memory)
    hist = data.get("history", [])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if hist:
        ax.plot([t for t, _ in hist], [b / 2**20 for _, b in hist], color="#9467bd")
        ax.axhline(data.get("peak_bytes", 0) / 2**20, color="#d62728", linestyle="--", linewidth=0.8, label="peak")
        ax.legend()
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(f"Memory ({data.get('device', 'cpu')})")
    fig.tight_layout()
    return _save(fig, path)


def plot_training(training: Mapping[str, Sequence[Any]], path: str | Path | None = None) -> Any:
    """Loss curves (train, validation), and the learning rate when recorded."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for key, colour in (("loss", "#1f77b4"), ("eval_loss", "#d62728")):
        pts = [(s, v) for s, v in training.get(key, []) if isinstance(v, int | float) and math.isfinite(v)]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=key, color=colour, marker="." if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    figs: list[tuple[str, Any]] = []
    training = data.get("training") or {}
    if any(training.get(k) for k in ("loss", "eval_loss")):
        figs.append(("Loss curves", plot_training(training)))
    if (data.get("gradients") or {}).get("history"):
        figs.append(("Gradients", visualize_gradients(data)))
    if any(isinstance(s, Mapping) and s.get("hist_range") for s in (data.get("activations") or {}).values()):
        figs.append(("Activations", visualize_activations(data)))
    if (data.get("memory") or {}).get("history"):
        figs.append(("Memory", plot_memory(data["memory"])))
    return figs


def _findings_html(findings: Sequence[Mapping[str, Any]]) -> str:
    if not findings:
        return "<p>No problem was found.</p>"
    rows = []
    for f in findings:
        colour = SEVERITY_COLOURS.get(f["severity"], "#444")
        rows.append(f"<tr><td style='color:{colour};font-weight:bold'>{html.escape(f['severity'])}</td>"
                    f"<td>{html.escape(f['kind'])}</td><td>{html.escape(f.get('where') or '')}</td>"
                    f"<td>{html.escape(f['message'])}</td><td>{html.escape(f['suggestion'])}</td></tr>")
    return ("<table><tr><th>severity</th><th>problem</th><th>where</th><th>what was seen</th><th>what to do</th></tr>"
            + "".join(rows) + "</table>")


def generate_full_report(stats: Mapping[str, Any], save_dir: str | Path, *, title: str = "aptops debug report",
                         metrics: Mapping[str, float] | None = None) -> dict[str, str]:
    """Write ``report.html`` (self-contained), ``report.json`` and ``report.pdf`` into ``save_dir``.

    Args:
        stats: any of ``summary`` (mapping), ``findings``, ``gradients``, ``activations``, ``dead_neurons``,
            ``memory``, ``training`` (``{"loss": [(step, value)], "eval_loss": ...}``), ``profile``,
            ``update_ratios``, ``gpu``; monitor objects are accepted as they are.
        save_dir: the report folder; it appears complete (with ``result.json``) or not at all.
        metrics: extra numbers for the folder's ``result.json`` (the stage's metrics).

    Returns:
        The paths of the three files.
    """
    from matplotlib.backends.backend_pdf import PdfPages

    from aptops.core import report

    plt = _plt()
    data = normalise(dict(stats))
    findings = [f if isinstance(f, Mapping) else normalise(f) for f in data.get("findings", [])]
    findings = [f.to_dict() for f in sort_findings(Finding(**f) for f in findings)]
    data["findings"] = findings
    summary = dict(data.get("summary") or {})
    summary.setdefault("findings", f"{sum(f['severity'] == 'critical' for f in findings)} critical, "
                                   f"{sum(f['severity'] == 'warning' for f in findings)} warnings")
    figs = _figures(data)
    sections = [("Summary", report.table(summary)), ("Findings and suggestions", _findings_html(findings))]
    sections += [(name, f"<img alt='{html.escape(name)}' style='max-width:100%' src='data:image/png;base64,{_png(fig)}'>")
                 for name, fig in figs]
    profile = data.get("profile")
    if profile:
        rows = [(r["name"], r["type"], r["latency_s"] * 1e3, r["params"], r["flops"]) for r in profile.get("layers", [])]
        sections.append(("Profile", report.table({k: v for k, v in profile.items() if k != "layers"})
                         + report.table(rows, header=["layer", "type", "latency ms", "params", "FLOPs"])))
    ratios = data.get("update_ratios")
    if ratios:
        sections.append(("Update-to-weight ratios (about 1e-3 is healthy)",
                         report.table(sorted(ratios.items(), key=lambda kv: -kv[1])[:30], header=["parameter", "ratio"])))
    dead = (data.get("dead_neurons") or {}).get("layers")
    if dead:
        sections.append(("Dead units per layer", report.table(
            [(n, v["dead_units"], v["units"], v["dead_ratio"]) for n, v in dead.items()],
            header=["layer", "dead", "units", "ratio"])))
    gpus = data.get("gpu")
    if gpus:
        sections.append(("GPUs (NVML)", report.table([(g["index"], g["name"], g["utilization_pct"],
                                                         g["memory_used_bytes"] / 2**30, g["memory_total_bytes"] / 2**30)
                                                        for g in gpus], header=["#", "name", "util %", "used GiB", "total GiB"])))
    final = Path(save_dir)
    with atomic_output(final) as tmp:
        (tmp / "report.html").write_text(report.page(title, sections), encoding="utf-8")
        write_json(tmp / "report.json", normalise(data, json_safe=True))
        with PdfPages(tmp / "report.pdf") as pdf:
            first = _text_page(plt, title, summary, findings)
            pdf.savefig(first)
            plt.close(first)
            for _, fig in figs:
                pdf.savefig(fig)
        for _, fig in figs:
            plt.close(fig)
        finish_artifact(tmp, StageResult("debug", outputs={"report": str(final / "report.html")},
                                         metrics={"findings": float(len(findings)),
                                                  "critical": float(sum(f["severity"] == "critical" for f in findings)),
                                                  **(metrics or {})}))
    return {"html": str(final / "report.html"), "json": str(final / "report.json"), "pdf": str(final / "report.pdf")}


def _text_page(plt: Any, title: str, summary: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]) -> Any:
    import textwrap

    fig = plt.figure(figsize=(8.27, 11.69))  # A4
    lines = [title, ""] + [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()]
    lines += ["", "Findings:"] if findings else ["", "No problem was found."]
    for f in findings[:12]:
        lines += textwrap.wrap(f"[{f['severity']}] {f['kind']} {f.get('where') or ''}: {f['message']}", 95)
        lines += textwrap.wrap(f"  -> {f['suggestion']}", 95)
    fig.text(0.05, 0.97, "\n".join(lines[:70]), va="top", family="monospace", fontsize=7.5)
    return fig
