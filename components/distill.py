"""Components of the distill stage (image ``aptops-distill``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("distill")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill_model(
    teacher: Input[Model],
    dataset: Input[Dataset],
    student: Output[Model],
    report: Output[HTML],
    debug_report: Output[HTML],
    metrics: Output[Metrics],
    strategies: str = '{"response": 1.0}',
    temperature: float = 1.0,
    alpha: float = 0.8,
    student_layer_stride: int = 2,
    student_layers: int = 0,
    block_size: int = 256,
    chat_prompt: str = "",
    learning_rate: float = 5e-5,
    max_steps: int = -1,
    batch_size: int = 8,
    eval_fraction: float = 0.05,
    training_args: str = "{}",
    debug: bool = False,
    overrides: str = "",
    pipeline: str = "compress",
    run_id: str = "",
):
    """Distil the teacher into a student made from its every k-th block; strategies is JSON {name: weight}.

    With debug, the training debugger watches the student; its report is the debug_report HTML artifact.
    """
    import os
    import shutil

    from aptops.core.runtime import apply_overrides, json_param, publish_debug_report, run_component
    from aptops.distill import DistillConfig, StrategyConfig
    from aptops.distill import distill_model as distill
    from aptops.lm.trainjob import run_distributed
    from aptops.train import TrainConfig

    weights = json_param(strategies, "strategies")
    extra = json_param(training_args, "training_args")
    args = {"learning_rate": learning_rate, "max_steps": max_steps, "per_device_train_batch_size": batch_size}
    config = DistillConfig(
        objective=StrategyConfig(strategies=weights, temperature=temperature, alpha=alpha),
        training=TrainConfig(block_size=block_size, chat_prompt=chat_prompt, eval_fraction=eval_fraction, debug=debug,
                             training_args=args | extra),
        student_layer_stride=student_layer_stride, student_layers=student_layers)
    config = apply_overrides(config, overrides)
    os.environ.setdefault("APTOPS_RUN_ID", run_id or "local")
    result = run_component("distill", lambda: run_distributed(  # here, or as a Kubeflow Trainer job (cluster file)
        "distill", ["distill", "run", teacher.path, dataset.path], inputs=[teacher.path, dataset.path],
        output_dir=student.path, config=config,
        local=lambda: distill(teacher.path, dataset.path, output_dir=student.path, config=config)),
        step="distill", pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
    publish_debug_report(result, debug_report.path, pipeline)
    student.metadata.update({k: result.metrics[k] for k in ("perplexity", "eval_top1_agreement") if k in result.metrics})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_compression(
    original: Input[Model],
    compressed: Input[Model],
    dataset: Input[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    block_size: int = 256,
    max_blocks: int = 64,
    overrides: str = "",
    pipeline: str = "compress",
    run_id: str = "",
):
    """Size, speed, memory, perplexity and top-1 agreement of the compressed model against the original."""
    import shutil
    import tempfile

    from aptops.core.runtime import apply_overrides, run_component
    from aptops.lm import EvalConfig
    from aptops.lm.compare import CompressionConfig
    from aptops.lm.compare import evaluate_compression as evaluate

    config = CompressionConfig(evaluation=EvalConfig(block_size=block_size, batch_size=4, max_blocks=max_blocks))
    config = apply_overrides(config, overrides)
    with tempfile.TemporaryDirectory(prefix="aptops-compression-") as scratch:  # only the report is kept
        result = run_component("distill", lambda: evaluate(original.path, compressed.path, dataset.path,
                                                           output_dir=f"{scratch}/report", config=config),
                               step="evaluate", pipeline=pipeline, run_id=run_id, metrics=metrics)
        shutil.copyfile(result.outputs["report"], report.path)
