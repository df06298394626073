"""``aptops train ...``: the train stage's commands."""

from __future__ import annotations

import typer

from aptops.cli.common import DATASET_HELP, In, Opt, app, metrics_table, stage_command

train_app = typer.Typer(help="The train stage: causal-LM fine-tuning with the Hugging Face Trainer.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

stage_command(
    train_app, "run", stage="train", step="train", run="aptops.train:train_model", config="aptops.train:TrainConfig",
    inputs=[In("model", "A model folder or a Hub model id."), In("dataset", DATASET_HELP)],
    options=[Opt("--heldout-out", "heldout_dir", "Also write the held-out documents here (a dataset folder for a "
                 "later evaluation).", reads=False)],
    out="The trained model folder (checkpoints inside while it runs).", trainjob=True,
    show=metrics_table("trained model: {out} (report: {report})"),
    doc="Fine-tune a causal LM; resumes from <out>/checkpoints (or $APTOPS_CHECKPOINT_DIR) after an interruption "
        "(--set resume=never to not).")
