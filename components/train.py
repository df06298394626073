"""Components of the train stage (image ``aptops-train``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("train", config="aptops.train:TrainConfig", tuned=(
    "block_size", "text_column", "chat_prompt", "learning_rate", "max_steps", "num_train_epochs", "batch_size",
    "gradient_accumulation_steps", "eval_fraction", "lora_r", "early_stopping_patience", "replay", "replay_ratio", "training_args", "debug",
    "debug_interval"))
def train_model(
    model: Input[Model],
    dataset: Input[Dataset],
    trained: Output[Model],
    heldout: Output[Dataset],
    report: Output[HTML],
    debug_report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Fine-tune a causal LM with the Hugging Face Trainer; training_args is JSON passed to TrainingArguments.

    With debug, the training debugger watches gradients, activations, memory and NaNs; its report is the
    debug_report HTML artifact.
    """
    params = dict(locals())
    import shutil

    from aptops.cluster.trainjob import run_training_step
    from aptops.core.runtime import TRAINING_ARG_PARAMS, config_from_params, publish_debug_report
    from aptops.train import TrainConfig
    from aptops.train import train_model as train

    config = config_from_params(TrainConfig, params, paths=TRAINING_ARG_PARAMS)
    result = run_training_step(  # here, or as a Kubeflow Trainer job (the cluster file)
        "train", ["train", "run", model.path, dataset.path], output_dir=trained.path, config=config, params=params,
        step="train", extra_outputs={"--heldout-out": heldout.path},
        local=lambda: train(model.path, dataset.path, output_dir=trained.path, config=config, heldout_dir=heldout.path))
    shutil.copyfile(result.outputs["report"], report.path)
    publish_debug_report(result, debug_report.path, params["pipeline"])
    trained.metadata.update({k: result.metrics[k] for k in ("perplexity", "eval_loss") if k in result.metrics})


@stage_component("train", config="aptops.train:EvalConfig", tuned=(
    "block_size", "text_column", "max_blocks", "chat_prompt"))
def evaluate_model(
    base: Input[Model],
    trained: Input[Model],
    dataset: Input[Dataset],
    evaluation: Output[Metrics],
    report: Output[HTML],
    **tuned,
):
    """Perplexity of the base and the trained model on the held-out text the training never saw."""
    params = dict(locals(), metrics=evaluation)
    import shutil
    import tempfile

    from aptops.core.runtime import config_from_params, run_step
    from aptops.train import EvalConfig, compare_models

    config = config_from_params(EvalConfig, params)
    with tempfile.TemporaryDirectory(prefix="aptops-eval-") as scratch:  # only the report is kept
        result = run_step("train", "evaluate", lambda: compare_models(
            base.path, trained.path, dataset.path, output_dir=f"{scratch}/evaluation", config=config), params)
        shutil.copyfile(result.outputs["report"], report.path)
