"""Components of the train stage (image ``aptops-train``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("train")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_model(
    model: Input[Model],
    dataset: Input[Dataset],
    trained: Output[Model],
    heldout: Output[Dataset],
    report: Output[HTML],
    debug_report: Output[HTML],
    metrics: Output[Metrics],
    block_size: int = 256,
    text_column: str = "text",
    chat_prompt: str = "",
    learning_rate: float = 5e-5,
    max_steps: int = -1,
    num_train_epochs: float = 1.0,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    eval_fraction: float = 0.05,
    lora_r: int = 0,
    early_stopping_patience: int = 0,
    training_args: str = "{}",
    debug: bool = False,
    debug_interval: int = 10,
    overrides: str = "",
    pipeline: str = "train",
    run_id: str = "",
):
    """Fine-tune a causal LM with the Hugging Face Trainer; training_args is JSON passed to TrainingArguments.

    With debug, the training debugger watches gradients, activations, memory and NaNs; its report is the
    debug_report HTML artifact.
    """
    import os
    import shutil

    from aptops.core.runtime import apply_overrides, json_param, publish_debug_report, run_component
    from aptops.lm.trainjob import run_distributed
    from aptops.train import TrainConfig
    from aptops.train import train_model as train

    extra = json_param(training_args, "training_args")
    args = {"learning_rate": learning_rate, "max_steps": max_steps, "num_train_epochs": num_train_epochs,
            "per_device_train_batch_size": batch_size, "gradient_accumulation_steps": gradient_accumulation_steps}
    config = TrainConfig(block_size=block_size, text_column=text_column, chat_prompt=chat_prompt, eval_fraction=eval_fraction, lora_r=lora_r,
                         early_stopping_patience=early_stopping_patience or None, debug=debug,
                         debug_interval=debug_interval, training_args=args | extra)
    config = apply_overrides(config, overrides)
    os.environ.setdefault("APTOPS_RUN_ID", run_id or "local")
    result = run_component("train", lambda: run_distributed(  # here, or as a Kubeflow Trainer job (cluster file)
        "train", ["train", "run", model.path, dataset.path], inputs=[model.path, dataset.path], output_dir=trained.path,
        config=config, extra_outputs={"--heldout-out": heldout.path},
        local=lambda: train(model.path, dataset.path, output_dir=trained.path, config=config, heldout_dir=heldout.path)),
        step="train", pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
    publish_debug_report(result, debug_report.path, pipeline)
    trained.metadata.update({k: result.metrics[k] for k in ("perplexity", "eval_loss") if k in result.metrics})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(
    base: Input[Model],
    trained: Input[Model],
    dataset: Input[Dataset],
    evaluation: Output[Metrics],
    report: Output[HTML],
    block_size: int = 256,
    text_column: str = "text",
    max_blocks: int = 0,
    overrides: str = "",
    pipeline: str = "train",
    run_id: str = "",
):
    """Perplexity of the base and the trained model on the held-out text the training never saw."""
    import shutil
    import tempfile

    from aptops.core.runtime import apply_overrides, run_component
    from aptops.train import EvalConfig, compare_models

    config = EvalConfig(block_size=block_size, text_column=text_column, max_blocks=max_blocks)
    config = apply_overrides(config, overrides)
    with tempfile.TemporaryDirectory(prefix="aptops-eval-") as scratch:  # only the report is kept
        out = scratch + "/evaluation"
        result = run_component("train", lambda: compare_models(base.path, trained.path, dataset.path, output_dir=out, config=config),
                               step="evaluate", pipeline=pipeline, run_id=run_id, metrics=evaluation)
        shutil.copyfile(result.outputs["report"], report.path)
