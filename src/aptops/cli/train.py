"""``aptops train ...``: the train stage's commands."""

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

train_app = typer.Typer(help="The train stage: causal-LM fine-tuning with the Hugging Face Trainer.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("run")
def train_run(
    model: Annotated[str, typer.Argument(help="A model folder or a Hub model id.")],
    dataset: Annotated[str, typer.Argument(help="An aptops dataset folder, JSONL/Parquet/CSV/text, or a Hub dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The trained model folder (checkpoints inside while it runs).")],
    overwrite: OverwriteOpt = False,
    heldout_out: Annotated[Path | None, typer.Option(
        "--heldout-out", help="Also write the held-out documents here (a dataset folder for a later evaluation).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    nodes: NodesOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    dry_run: DryRunOpt = False,
    cluster: ClusterOpt = None,
) -> None:
    """Fine-tune a causal LM; resumes from <out>/checkpoints (or $APTOPS_CHECKPOINT_DIR) after an interruption (--set resume=never to not)."""
    from aptops.train import TrainConfig, train_model

    cfg = load_config(TrainConfig, config, overrides=set_ or [])
    argv = ["train", "run", model, dataset] + (["--heldout-out", str(heldout_out)] if heldout_out else [])
    if _dry_run("train", argv, out, cfg, dry_run=dry_run, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node):
        return
    result = _run_stage("train", "train", lambda: train_model(model, dataset, output_dir=out, config=cfg,
                                                                      heldout_dir=heldout_out), out, inputs=[model, dataset], overwrite=overwrite)
    _print_metrics(f"trained model: {out} (report: {result.outputs.get('report')})", result.metrics)
