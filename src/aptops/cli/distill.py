"""``aptops distill ...``: the distill stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aptops.cli.common import (
    ClusterOpt,
    ConfigOpt,
    DryRunOpt,
    GpusPerNodeOpt,
    NodesOpt,
    OverwriteOpt,
    SetOpt,
    _dry_run,
    _print_metrics,
    _run_stage,
    app,
    console,
)
from aptops.core.config import load_config

distill_app = typer.Typer(help="The distill stage: train a smaller student against a teacher, measure the trade-off.",
                          no_args_is_help=True)
app.add_typer(distill_app, name="distill")


@distill_app.command("run")
def distill_run(
    teacher: Annotated[str, typer.Argument(help="The teacher: a causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The student model folder (checkpoints inside while it runs).")],
    overwrite: OverwriteOpt = False,
    student: Annotated[str | None, typer.Option(help="A student model (default: every 2nd teacher block).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    dry_run: DryRunOpt = False,
    cluster: ClusterOpt = None,
) -> None:
    """Distil the teacher into a student (--set "objective.strategies={response: 1.0, feature: 0.5}"
    --set objective.temperature=1 --set training.block_size=128 --set training.training_args.max_steps=50)."""
    from aptops.distill import DistillConfig, distill_model

    cfg = load_config(DistillConfig, config, overrides=set_ or [])
    argv = ["distill", "run", teacher, dataset] + (["--student", student] if student else [])
    if _dry_run("distill", argv, out, cfg, dry_run=dry_run, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node):
        return
    result = _run_stage("distill", "distill", lambda: distill_model(teacher, dataset, output_dir=out, config=cfg,
                                                                      student=student), out, inputs=[teacher, dataset], overwrite=overwrite)
    _print_metrics(f"student: {out} (report: {result.outputs.get('report')})", result.metrics)


@distill_app.command("evaluate")
def distill_evaluate(
    original: Annotated[str, typer.Argument(help="The original model folder.")],
    compressed: Annotated[str, typer.Argument(help="The compressed (distilled or pruned) model folder.")],
    dataset: Annotated[str, typer.Argument(help="Held-out text the models were not trained on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The report folder: report.json, report.html.")],
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Parameters, size, perplexity, top-1 agreement, speed and memory of both models, side by side."""
    from aptops.lm.compare import CompressionConfig, evaluate_compression

    cfg = load_config(CompressionConfig, config, overrides=set_ or [])
    result = _run_stage("distill", "evaluate", lambda: evaluate_compression(original, compressed, dataset, output_dir=out,
                                                                            config=cfg), out, inputs=[original, compressed, dataset], overwrite=overwrite).details
    table = Table(title=f"compression report: {out / 'report.html'}")
    for col in ("", "original", "compressed"):
        table.add_column(col)
    for key in ("params", "size_bytes", "perplexity", "forward_tokens_per_s", "generate_tokens_per_s"):
        if key in result["original"]:
            table.add_row(key, f"{result['original'][key]:,.4g}", f"{result['compressed'][key]:,.4g}")
    table.add_row("top1_agreement", "", f"{result['compressed']['top1_agreement']:.3f}")
    console.print(table)
