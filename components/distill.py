"""Components of the distill stage (image ``aptops-distill``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("distill", pipeline="compress", config="aptops.distill:DistillConfig", tuned=(
    "strategies", "temperature", "alpha", "student_layer_stride", "student_layers", "block_size", "chat_prompt",
    "learning_rate", "max_steps", "batch_size", "eval_fraction", "student_selection", "replay", "replay_ratio", "training_args", "debug"))
def distill_model(
    teacher: Input[Model],
    dataset: Input[Dataset],
    student: Output[Model],
    report: Output[HTML],
    debug_report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Distil the teacher into a student made from its every k-th block; strategies is JSON {name: weight}.

    With debug, the training debugger watches the student; its report is the debug_report HTML artifact.
    """
    params = dict(locals())
    import shutil

    from aptops.cluster.trainjob import run_training_step
    from aptops.core.runtime import TRAINING_ARG_PARAMS, config_from_params, publish_debug_report
    from aptops.distill import DistillConfig
    from aptops.distill import distill_model as distill

    config = config_from_params(DistillConfig, params, paths=TRAINING_ARG_PARAMS)
    result = run_training_step(  # here, or as a Kubeflow Trainer job (the cluster file)
        "distill", ["distill", "run", teacher.path, dataset.path], output_dir=student.path, config=config,
        params=params, step="distill",
        local=lambda: distill(teacher.path, dataset.path, output_dir=student.path, config=config))
    shutil.copyfile(result.outputs["report"], report.path)
    publish_debug_report(result, debug_report.path, params["pipeline"])
    student.metadata.update({k: result.metrics[k] for k in ("perplexity", "eval_top1_agreement") if k in result.metrics})


@stage_component("distill", pipeline="compress", config="aptops.lm.compare:CompressionConfig",
                 tuned=("block_size", "max_blocks", "chat_prompt"))
def evaluate_compression(
    original: Input[Model],
    compressed: Input[Model],
    dataset: Input[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Size, speed, memory, perplexity and top-1 agreement of the compressed model against the original."""
    params = dict(locals())
    import shutil
    import tempfile

    from aptops.core.runtime import config_from_params, run_step
    from aptops.lm.compare import CompressionConfig
    from aptops.lm.compare import evaluate_compression as evaluate

    config = config_from_params(CompressionConfig, params)
    with tempfile.TemporaryDirectory(prefix="aptops-compression-") as scratch:  # only the report is kept
        result = run_step("distill", "evaluate", lambda: evaluate(
            original.path, compressed.path, dataset.path, output_dir=f"{scratch}/report", config=config), params)
        shutil.copyfile(result.outputs["report"], report.path)
