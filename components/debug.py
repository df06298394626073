"""Components of the debug stage (image ``aptops-debug``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("debug", config="aptops.debug.recipe:DebugStageConfig", tuned=(
    "block_size", "batch_size", "text_column", "steps", "learning_rate", "max_batches"))
def debug_model(
    model: Input[Model],
    dataset: Input[Dataset],
    report: Output[HTML],
    details: Output[Artifact],
    metrics: Output[Metrics],
    **tuned,
):
    """Profile a causal LM, inspect its activations on the dataset, run a short diagnostic training, and
    report the findings with fixes (HTML here; JSON and PDF in details)."""
    params = dict(locals())
    import shutil

    from aptops.core.runtime import config_from_params, run_step
    from aptops.debug.recipe import DebugStageConfig
    from aptops.debug.recipe import debug_model as run_debug

    config = config_from_params(DebugStageConfig, params)
    result = run_step("debug", "debug", lambda: run_debug(model.path, dataset.path, output_dir=details.path,
                                                          config=config), params)
    shutil.copyfile(result.outputs["html"], report.path)
    details.metadata["findings"] = len(result.details["findings"])
