"""``aptops distill ...``: the distill stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from aptops.cli.common import DATASET_HELP, In, Opt, app, metrics_table, print_table, stage_command

distill_app = typer.Typer(help="The distill stage: train a smaller student against a teacher, measure the trade-off.",
                          no_args_is_help=True)
app.add_typer(distill_app, name="distill")

stage_command(
    distill_app, "run", stage="distill", step="distill", run="aptops.distill:distill_model",
    config="aptops.distill:DistillConfig",
    inputs=[In("teacher", "The teacher: a causal LM folder or a Hub model id."), In("dataset", DATASET_HELP)],
    options=[Opt("--student", "student", "A student model (default: every 2nd teacher block).")],
    out="The student model folder (checkpoints inside while it runs).", trainjob=True,
    show=metrics_table("student: {out} (report: {report})"),
    doc='Distil the teacher into a student (--set "objective.strategies={response: 1.0, feature: 0.5}" '
        "--set objective.temperature=1 --set training.block_size=128 --set training.training_args.max_steps=50).")


def _show_comparison(result: Any, out: Path) -> None:
    original, compressed = result.details["original"], result.details["compressed"]
    keys = [k for k in ("params", "size_bytes", "perplexity", "forward_tokens_per_s", "generate_tokens_per_s")
            if k in original]
    print_table(f"compression report: {out / 'report.html'}", ("", "original", "compressed"),
                [*((k, f"{original[k]:,.4g}", f"{compressed[k]:,.4g}") for k in keys),
                 ("top1_agreement", "", f"{compressed['top1_agreement']:.3f}")])


stage_command(
    distill_app, "evaluate", stage="distill", run="aptops.distill:evaluate_compression",
    config="aptops.distill:CompressionConfig",
    inputs=[In("original", "The original model folder."),
            In("compressed", "The compressed (distilled or pruned) model folder."),
            In("dataset", "Held-out text the models were not trained on.")],
    out="The report folder: report.json, report.html.", show=_show_comparison,
    doc="Parameters, size, perplexity, top-1 agreement, speed and memory of both models, side by side.")
