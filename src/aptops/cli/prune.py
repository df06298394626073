"""``aptops prune ...``: the prune stage's commands."""

from __future__ import annotations

import typer

from aptops.cli.common import In, Opt, app, metrics_table, stage_command

prune_app = typer.Typer(help="The prune stage: sparsify or shrink a model, fine-tune it, measure the result.",
                        no_args_is_help=True)
app.add_typer(prune_app, name="prune")

stage_command(
    prune_app, "run", stage="prune", step="prune", run="aptops.prune:prune_model", config="aptops.prune:PruneConfig",
    inputs=[In("model", "A causal LM folder or a Hub model id."),
            In("dataset", "Text for calibration and fine-tuning (dataset folder, JSONL ...).")],
    options=[Opt("--heldout", "eval_dataset", "Held-out text for the before/after perplexity.")],
    out="The pruned model folder (report.html, prune.json inside).", trainjob=True,
    show=metrics_table("pruned model: {out} (report: {out}/report.html)",
                       lambda k: k.startswith("prune_") or k == "global_step"),
    doc="Prune (--set method=wanda|magnitude|taylor|neuron|head|lottery --set target_sparsity=0.5), fine-tune "
        "(--set training.block_size=128 --set training.training_args.max_steps=50), report.")
