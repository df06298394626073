"""``aptops debug ...``: the debug stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from aptops.cli.common import DATASET_HELP, In, _print_metrics, app, print_table, stage_command

debug_app = typer.Typer(help="The debug stage: profile a model, diagnose its training, report what is wrong.",
                        no_args_is_help=True)
app.add_typer(debug_app, name="debug")


def _show_findings(result: Any, out: Path) -> None:
    print_table(f"findings (report: {result.outputs['html']})", ("severity", "problem", "where", "what to do"),
           [(f["severity"], f["kind"], escape(f["where"] or ""), escape(f["suggestion"]))
            for f in result.details["findings"]])
    _print_metrics("debug", result.metrics)


stage_command(
    debug_app, "run", stage="debug", step="debug", run="aptops.debug.recipe:debug_model",
    config="aptops.debug.recipe:DebugStageConfig",
    inputs=[In("model", "A causal LM folder or a Hub model id."), In("dataset", DATASET_HELP)],
    out="The report folder: report.html, report.json, report.pdf.", show=_show_findings,
    doc="Profile the model, inspect its activations on the data, run a short diagnostic training, report findings.")


@debug_app.command("profile")
def debug_profile(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 1,
    top: Annotated[int, typer.Option(help="Layers to list, the slowest first.")] = 15,
) -> None:
    """Latency, FLOPs (and the transformer estimate) and parameters of one forward pass, per layer."""
    from aptops.debug import profile_model
    from aptops.lm import load_causal_lm

    lm, _, _ = load_causal_lm(model)
    prof = profile_model(lm, (seq_len,), batch_size, top=top)
    print_table(f"{model}: {prof['latency_s'] * 1e3:.1f} ms per forward pass of {batch_size}x{seq_len} tokens",
           ("layer", "type", "ms", "params", "GFLOPs"),
           [(escape(r["name"]), r["type"], f"{r['latency_s'] * 1e3:.3f}", f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}")
            for r in prof["layers"]])
    _print_metrics("totals", {k: float(v) for k, v in prof.items() if isinstance(v, int | float)})
