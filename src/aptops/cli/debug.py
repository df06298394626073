"""``aptops debug ...``: the debug stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from aptops.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    SetOpt,
    _print_metrics,
    _run_stage,
    app,
    console,
)
from aptops.core.config import load_config

debug_app = typer.Typer(help="The debug stage: profile a model, diagnose its training, report what is wrong.",
                        no_args_is_help=True)
app.add_typer(debug_app, name="debug")


@debug_app.command("run")
def debug_run(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The report folder: report.html, report.json, report.pdf.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Profile the model, inspect its activations on the data, run a short diagnostic training, report findings."""
    from aptops.debug.stage import DebugStageConfig, debug_model

    cfg = load_config(DebugStageConfig, config, overrides=set_ or [])
    result = _run_stage("debug", "debug", lambda: debug_model(model, dataset, output_dir=out, config=cfg), out, inputs=[model, dataset], overwrite=overwrite)
    table = Table(title=f"findings (report: {result.outputs['html']})")
    for col in ("severity", "problem", "where", "what to do"):
        table.add_column(col)
    for f in result.details["findings"]:
        table.add_row(f["severity"], f["kind"], escape(f["where"] or ""), escape(f["suggestion"]))
    console.print(table)
    _print_metrics("debug", result.metrics)


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
    table = Table(title=f"{model}: {prof['latency_s'] * 1e3:.1f} ms per forward pass of {batch_size}x{seq_len} tokens")
    for col in ("layer", "type", "ms", "params", "GFLOPs"):
        table.add_column(col)
    for r in prof["layers"]:
        table.add_row(escape(r["name"]), r["type"], f"{r['latency_s'] * 1e3:.3f}", f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}")
    console.print(table)
    _print_metrics("totals", {k: float(v) for k, v in prof.items() if isinstance(v, int | float)})
