"""``aptops prune ...``: the prune stage's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
)
from aptops.core.config import load_config

prune_app = typer.Typer(help="The prune stage: sparsify or shrink a model, fine-tune it, measure the result.",
                        no_args_is_help=True)
app.add_typer(prune_app, name="prune")


@prune_app.command("run")
def prune_run(
    model: Annotated[str, typer.Argument(help="A causal LM folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="Text for calibration and fine-tuning (dataset folder, JSONL ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pruned model folder (report.html, prune.json inside).")],
    overwrite: OverwriteOpt = False,
    heldout: Annotated[str | None, typer.Option(help="Held-out text for the before/after perplexity.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    dry_run: DryRunOpt = False,
    cluster: ClusterOpt = None,
) -> None:
    """Prune (--set method=wanda|magnitude|taylor|neuron|head|lottery --set target_sparsity=0.5), fine-tune
    (--set training.block_size=128 --set training.training_args.max_steps=50), report."""
    from aptops.prune import PruneConfig, prune_model

    cfg = load_config(PruneConfig, config, overrides=set_ or [])
    argv = ["prune", "run", model, dataset] + (["--heldout", heldout] if heldout else [])
    if _dry_run("prune", argv, out, cfg, dry_run=dry_run, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node):
        return
    result = _run_stage("prune", "prune", lambda: prune_model(model, dataset, output_dir=out, config=cfg,
                                                                  eval_dataset=heldout), out, inputs=[model, dataset], overwrite=overwrite)
    _print_metrics(f"pruned model: {out} (report: {out / 'report.html'})",
                   {k: v for k, v in result.metrics.items() if k.startswith("prune_") or k == "global_step"})
