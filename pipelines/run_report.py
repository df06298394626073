"""One page for one local run: the short console summary and ``runs/<run>/report.html``.

Both are read from what the tasks left under ``runs/<run>/artifacts`` (their metrics, ``result.json``
markers, ``history.json`` curves, ``prune.json``, ``verify.json``, ``smoke_test.json``) and from how long each
task took; nothing is computed twice. The report is self-contained (inline SVG, no script, no network); the
stage reports it links to are copied beside it into ``reports/`` so the folder opens offline as a whole.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core import report
from aptops_pipelines.console import HEADLINES, fmt_duration, fmt_metric, fmt_number, headline


@dataclass
class RunView:
    """A finished local run, as its tasks left it."""

    pipeline: str
    run_dir: Path
    tasks: list[dict[str, Any]]
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self, task: str) -> dict[str, float]:
        return next((t["metrics"] for t in self.tasks if t["task"] == task), {})

    def artifact(self, task: str, output: str) -> Path | None:
        path = next((t["artifacts"].get(output) for t in self.tasks if t["task"] == task), None)
        return Path(path) if path and Path(path).exists() else None

    def read(self, task: str, output: str, name: str) -> Any:
        """A JSON file inside a task's output folder, or None."""
        folder = self.artifact(task, output)
        path = folder / name if folder else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None

    def has(self, task: str) -> bool:
        return any(t["task"] == task for t in self.tasks)


def _q(text: object, width: int = 60) -> str:
    one = " ".join(str(text).split())
    return f'"{one[: width - 1]}…"' if len(one) > width else f'"{one}"'


def _gguf_rows(view: RunView) -> list[dict[str, Any]]:
    """One row per exported GGUF type: type, size, verification (``verify-<TYPE>.json`` when several were
    written side by side, else ``verify.json``)."""
    rows = []
    for task in view.tasks:
        folder = view.artifact(task["task"], "gguf") if task["task"].startswith("export-gguf") else None
        if folder is None:
            continue
        files = sorted(folder.glob("verify-*.json")) or [folder / "verify.json"]
        for path in files:
            verified = view.read(task["task"], "gguf", path.name) or {}
            gguf, check = verified.get("gguf", {}), verified.get("verify", {})
            rows.append({"task": task["task"], "type": gguf.get("quantization", "?"),
                         "size_bytes": gguf.get("size_bytes"), "passed": check.get("passed"),
                         "top1_agreement": check.get("top1_agreement"),
                         "perplexity_delta": check.get("perplexity_delta"),
                         "fallback_tensors": gguf.get("fallback_tensors")})
    return sorted(rows, key=lambda r: -(r["size_bytes"] or 0))


#: the order of the eval tasks' models in tables: the life of the model, then its GGUF files
_ROLES = ("base", "original", "trained", "compressed", "gguf")


def _task_evaluations(view: RunView) -> dict[str, dict[str, Any]]:
    """Every eval task's results (lm-evaluation-harness), ``{label: results.json content}`` in the order of the
    model's life: base, trained, compressed, then each GGUF type."""
    runs: list[tuple[int, str, dict[str, Any]]] = []
    for task in view.tasks:
        if not task["task"].startswith("evaluate-tasks"):
            continue
        judged = view.read(task["task"], "results", "results.json") or {}
        for name, run in (judged.get("models") or {}).items():
            role = run.get("role", "")
            label = name if role != "gguf" else f"gguf {name}"
            runs.append((_ROLES.index(role) if role in _ROLES else len(_ROLES), label, run))
    return {label: run for _, label, run in sorted(runs, key=lambda r: r[0])}


def _task_lines(view: RunView) -> list[str]:
    """One summary line per task: its headline metric for every model, and what the compressed model kept."""
    from aptops.eval.recipe import headline

    runs = _task_evaluations(view)
    heads = {label: headline(run.get("results") or {}) for label, run in runs.items()}
    lines = []
    for task in dict.fromkeys(t for h in heads.values() for t in h):
        metric = next(h[task][0] for h in heads.values() if task in h)
        values = {label: h[task][1] for label, h in heads.items() if task in h}
        kept = ""
        if values.get("trained") and "compressed" in values:
            kept = f" (the compressed model keeps {values['compressed'] / values['trained']:.0%} of the trained one's)"
        lines.append(f"eval          {task} {metric}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()) + kept)
    return lines


def _kept(view: RunView) -> list[tuple[str, str, float, float]]:
    """``(task, metric, trained, compressed)`` for every eval task both models were judged on."""
    from aptops.eval.recipe import headline

    runs = _task_evaluations(view)
    if "trained" not in runs or "compressed" not in runs:
        return []
    trained, compressed = headline(runs["trained"].get("results") or {}), headline(runs["compressed"].get("results") or {})
    return [(task, trained[task][0], trained[task][1], compressed[task][1]) for task in trained if task in compressed]


def _data_steps(view: RunView) -> list[dict[str, Any]]:
    marker = view.read("process-data", "dataset", "result.json") or {}
    return list((marker.get("details") or {}).get("steps") or [])


def summary_lines(view: RunView) -> list[str]:
    """What the run achieved, in at most ~25 lines: a line per stage that ran, then where to look."""
    lines = []
    steps = _data_steps(view)
    if view.has("process-data"):
        m = view.metrics("process-data")
        removed: dict[str, float] = {}
        for step in steps:
            for why, n in (step.get("why") or {}).items():
                if n:
                    removed[why] = removed.get(why, 0) + n
        top = ", ".join(f"{why.replace('_', ' ')} {int(n):,}" for why, n in
                        sorted(removed.items(), key=lambda kv: -kv[1])[:3])
        rows_in = steps[0]["rows_in"] if steps else m.get("rows", 0)
        lines.append(f"data          {int(rows_in):,} rows in, {int(m.get('rows_out', m.get('rows', 0))):,} kept"
                     + (f" ({top})" if top else ""))
    if view.has("train-model"):
        m = view.metrics("train-model")
        base = view.metrics("evaluate-model").get("perplexity_base")
        lines.append(f"training      held-out perplexity {fmt_number(m.get('perplexity', float('nan')))}"
                     + (f" (base model {fmt_number(base)})" if base else "")
                     + f" after {int(m.get('global_step', 0))} steps")
    if view.has("distill-model"):
        m = view.metrics("distill-model")
        lines.append(f"distillation  student {fmt_metric('params', m.get('total_params', 0))} params, perplexity "
                     f"{fmt_number(m.get('perplexity', float('nan')))}, agrees with the teacher on "
                     f"{m.get('eval_top1_agreement', float('nan')):.0%} of next tokens")
    if view.has("prune-model"):
        m = view.metrics("prune-model")
        lines.append(f"pruning       {fmt_metric('params', m.get('prune_params_before', 0))} → "
                     f"{fmt_metric('params', m.get('prune_params_after', 0))} params, held-out perplexity "
                     f"{fmt_number(m.get('perplexity', float('nan')))} after {int(m.get('global_step', 0))} "
                     f"recovery steps, forward {m.get('prune_speedup', float('nan')):.2f}x as fast")
    if view.has("evaluate-compression"):
        m = view.metrics("evaluate-compression")
        size = [f"{label} {m[k]:.2f}x" for label, k in (
            ("params", "ratio_params"), ("size", "ratio_size"), ("perplexity", "ratio_perplexity")) if k in m]
        speed = [f"{label} {m[k]:.2f}x" for label, k in (
            ("forward", "ratio_forward_speedup"), ("generation", "ratio_generate_speedup"),
            ("llama.cpp generation", "ratio_llama_cpp_generate_speedup")) if k in m]
        lines.append("compression   " + ", ".join(size) + " (compressed / trained, on the held-out text as trained)")
        if speed:
            lines.append("speed         " + ", ".join(speed) + " (compressed / trained: above 1 is faster)")
    lines += _task_lines(view)
    for row in _gguf_rows(view):
        state = "verified" if row["passed"] else "NOT verified" if row["passed"] is False else "unchecked"
        agree = f", top-1 agreement {row['top1_agreement']:.2f}" if row["top1_agreement"] is not None else ""
        lines.append(f"gguf          {row['type']} {fmt_metric('size_bytes', row['size_bytes'] or 0)}, {state}{agree}")
    smoke = view.read("ollama-smoke-test", "served", "smoke_test.json")
    if smoke and smoke.get("results"):
        first = smoke["results"][0]
        lines.append(f"smoke test    {_q(first.get('prompt', ''), 30)} → {_q(first.get('answer', ''), 50)} "
                     f"({smoke.get('tokens_per_second', 0):.1f} tokens/s)")
    for task in ("backup-artifact", "backup-model"):
        if view.has(task) and view.metrics(task):
            m = view.metrics(task)
            lines.append(f"backup        {int(m.get('files', m.get('files_sent', 0)))} files, "
                         f"{fmt_metric('bytes', m.get('total_bytes', m.get('bytes_sent', 0)))} to "
                         f"{int(m.get('destinations', 1))} destination(s)")
    if view.has("train-multimodal-model"):
        m = view.metrics("train-multimodal-model")
        shown = ", ".join(f"{k.replace('_', ' ')} {fmt_metric(k, m[k])}" for k in
                          ("eval_accuracy", "chance_accuracy", "eval_loss") if k in m)
        lines.append(f"multimodal    {shown}")
    told = {"process-data", "import-model", "train-model", "evaluate-model", "distill-model", "prune-model", "evaluate-compression",
            "ollama-smoke-test", "backup-artifact", "backup-model", "train-multimodal-model", "record-run-outcome",
            "(fan-out)"}
    for task in view.tasks:  # every other task that measured something: its headline numbers
        name = task["task"]
        if name in told or name.startswith(("export-gguf", "evaluate-tasks")) or not task["metrics"]:
            continue
        shown = headline(task["metrics"], HEADLINES.get(name) or tuple(task["metrics"]))
        lines.append(f"{name:<13} " + ", ".join(f"{k} {fmt_metric(k, v)}" for k, v in shown.items()))
    ran = len(view.timings) or len([t for t in view.tasks if t["task"] != "(fan-out)"])
    head = f"{view.pipeline}: {ran} tasks finished in {fmt_duration(view.seconds)}"
    tail = [f"report        {view.run_dir / 'report.html'}", f"logs          {view.run_dir / 'logs'}/"]
    return [head, *["  " + line for line in lines], *["  " + line for line in tail]]


# --- the HTML report -------------------------------------------------------------------------------------------

def bar_chart(values: Mapping[str, float], *, title: str, unit: str, width: int = 640) -> str:
    """A horizontal SVG bar chart of named values (task durations)."""
    if not values:
        return f"<p>{html.escape(title)}: nothing was recorded.</p>"
    row, label_w, pad = 18, 190, 40
    top = max(values.values()) or 1.0
    height = 28 + row * len(values)
    parts = [f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    for i, (name, value) in enumerate(values.items()):
        y = 24 + i * row
        w = (width - label_w - pad) * value / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="11">{html.escape(name)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" fill="{report.PALETTE[0]}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{value:.1f} {html.escape(unit)}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{"".join(parts)}</svg>'


def _curves(view: RunView) -> str:
    out = []
    for task, output, what in (("train-model", "trained", "fine-tuning"), ("distill-model", "student", "distillation"),
                               ("prune-model", "pruned", "recovery after pruning")):
        history = view.read(task, output, "history.json")
        if not history:
            continue
        train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        # one held-out point per step: the final measure repeats the last scheduled evaluation
        held = sorted({h["step"]: h["eval_loss"] for h in history if "eval_loss" in h and "step" in h}.items())
        out.append(report.line_chart({"training loss": train, "held-out loss": held}, title=f"Loss during {what}",
                                     x_label="optimizer step", y_label="loss"))
    return "".join(out) or "<p>No training curve was recorded in this run.</p>"


def _final_model(view: RunView) -> Path | None:
    """The folder of the last model the run made (pruned, else the student, else the trained model)."""
    return next((view.artifact(task, out) for task, out in (("prune-model", "pruned"), ("distill-model", "student"),
                                                           ("train-model", "trained")) if view.artifact(task, out)),
                None)


def _software(view: RunView) -> str:
    """The versions that made the final model, as its lineage recorded them (requirements/lock.txt pins them)."""
    folder = _final_model(view)
    lineage = folder / "aptops.json" if folder is not None else None
    if lineage is None or not lineage.is_file():
        return ""
    versions = json.loads(lineage.read_text(encoding="utf-8")).get("versions") or {}
    return report.table(sorted(versions.items()), header=["software", "version"]) if versions else ""


def _model_card(view: RunView) -> str:
    """The card the hub stage would publish for the final model, written in a scratch folder (the artifact
    itself is not touched)."""
    folder = _final_model(view)
    if folder is None:
        return "<p>This run made no model.</p>"
    try:
        from aptops.hub.card import create_model_card
    except ImportError:  # pragma: no cover - the hub extra is part of every local install
        return "<p>The model card needs the hub extra (pip install 'aptops[hub]').</p>"
    with tempfile.TemporaryDirectory() as tmp:
        for item in folder.iterdir():  # links: the card reads config, lineage and weight headers
            (Path(tmp) / item.name).symlink_to(item.resolve())
        try:
            card = str(create_model_card(tmp, f"you/{view.pipeline}-model"))
        except Exception as exc:  # the report still opens; the card's failure is stated in it
            return f"<p>The model card could not be written: {html.escape(str(exc))}</p>"
    return f"<pre style='white-space:pre-wrap'>{html.escape(card)}</pre>"


def _stage_reports(view: RunView) -> list[tuple[str, str]]:
    """Copy every HTML report a task wrote to ``reports/`` and return ``(label, relative link)``."""
    links, target = [], view.run_dir / "reports"
    for task in view.tasks:
        for name, path in task["artifacts"].items():
            page = Path(path)  # the HTML outputs a component declares are files; model folders are not linked
            if not page.is_file():
                continue
            with page.open("rb") as fh:  # the first bytes say whether it is a page; the copy reads the rest
                if not fh.read(200).lower().lstrip().startswith((b"<!doctype", b"<html")):
                    continue
            target.mkdir(exist_ok=True)
            dest = target / f"{task['task']}.{name}.html"
            shutil.copyfile(page, dest)
            links.append((f"{task['task']}: {name}", f"reports/{dest.name}"))
    return links


def write_report(view: RunView) -> Path:
    """Write ``report.html`` for the run and return its path."""
    lines = summary_lines(view)
    glance = "<ul>" + "".join(f"<li><code>{html.escape(line.strip())}</code></li>" for line in lines[1:-2]) + "</ul>"
    sections: list[tuple[str, str]] = [("At a glance", f"<p id='headline'>{html.escape(lines[0])}</p>" + glance)]
    if view.timings:
        sections.append(("Where the time went", bar_chart(dict(sorted(view.timings.items(), key=lambda kv: -kv[1])),
                                                          title="Task durations", unit="s")))
    steps = _data_steps(view)
    if steps:
        rows = [(s.get("step"), int(s.get("rows_in", 0)), int(s.get("rows_out", 0)),
                 ", ".join(f"{k}: {int(v)}" for k, v in (s.get("why") or {}).items() if v) or "-") for s in steps]
        sections.append(("Data", report.table(rows, header=["step", "rows in", "rows out", "removed or flagged"])))
    if any(view.has(t) for t in ("train-model", "distill-model", "prune-model")):
        sections.append(("Training and distillation", _curves(view)))
    pruned = view.read("prune-model", "pruned", "prune.json")
    if pruned:
        b, p, a = pruned["before"], pruned["after_pruning"], pruned["after_fine_tuning"]
        rows = [(k, b[k], p[k], a[k]) for k in ("params", "nonzero_params", "perplexity", "latency_s")]
        sections.append(("Pruning", f"<p>method {html.escape(str(pruned['method']))}, target "
                                    f"{pruned['target']}</p>" + report.table(rows, header=["", "before", "after pruning",
                                                                                        "after fine-tuning"])))
    m = view.metrics("evaluate-compression")
    if m:
        names = sorted({k.split("_", 1)[1] for k in m if k.startswith("original_")})
        rows = [(n, m.get(f"original_{n}", ""), m.get(f"compressed_{n}", ""),
                 m.get(f"ratio_{n}", m.get(f"ratio_{n.removesuffix('_tokens_per_s')}_speedup", ""))) for n in names]
        ratios = {k.removeprefix("ratio_"): v for k, v in m.items() if k.startswith("ratio_")}
        for task, metric, trained, compressed in _kept(view):  # what the eval tasks say it kept
            rows.append((f"{task} {metric}", trained, compressed, compressed / trained if trained else ""))
            if trained:
                ratios[f"{task} {metric}"] = compressed / trained
        sections.append(("Compression trade-off", report.table(rows, header=["measure", "trained", "compressed", "ratio"])
                         + bar_chart(ratios, title="compressed / trained (1.0 = unchanged)", unit="x")))
    judged = _task_evaluations(view)
    if judged:
        from aptops.eval.recipe import comparison_rows

        header, rows = comparison_rows(judged)
        sections.append(("Task evaluation (lm-evaluation-harness)",
                         "<p>Each model of the run on the same tasks, the harness's headline metric per task "
                         "(± its standard error).</p>" + report.table(rows, header=header)))
    gguf = _gguf_rows(view)
    if gguf:
        rows = [(r["type"], fmt_metric("size_bytes", r["size_bytes"] or 0), {True: "passed", False: "FAILED"}.get(
            r["passed"], "not checked"), r["top1_agreement"], r["perplexity_delta"], r["fallback_tensors"]) for r in gguf]
        sections.append(("GGUF verification", report.table(rows, header=["type", "size", "verification",
                                                                         "top-1 agreement", "perplexity delta",
                                                                         "tensors kept wider"])))
    smoke = view.read("ollama-smoke-test", "served", "smoke_test.json")
    if smoke:
        rows = [(r.get("prompt", ""), r.get("answer", ""), r.get("tokens", ""), r.get("tokens_per_second", ""))
                for r in smoke.get("results", [])]
        sections.append((f"Smoke test ({smoke.get('model', '')})",
                         report.table(rows, header=["prompt", "answer", "tokens", "tokens/s"])))
    if any(view.has(t) for t in ("train-model", "distill-model", "prune-model")):
        sections.append(("Model card, as it would be published", _model_card(view)))
        software = _software(view)
        if software:
            sections.append(("Software that made the model", software))
    links = _stage_reports(view)
    if links:
        sections.append(("Stage reports", "<ul>" + "".join(
            f"<li><a href='{html.escape(href)}'>{html.escape(label)}</a></li>" for label, href in links) + "</ul>"))
    every = [(t["task"], k, v) for t in view.tasks for k, v in t["metrics"].items()]
    sections.append(("Every metric", report.table(every, header=["task", "metric", "value"])))
    path = view.run_dir / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(report.page(f"aptops run: {view.pipeline} ({view.run_dir.name})", sections), encoding="utf-8")
    tmp.replace(path)
    return path
