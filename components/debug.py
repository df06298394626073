"""Components of the debug stage (image ``aptops-debug``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("debug")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def debug_model(
    model: Input[Model],
    dataset: Input[Dataset],
    report: Output[HTML],
    details: Output[Artifact],
    metrics: Output[Metrics],
    block_size: int = 128,
    batch_size: int = 4,
    text_column: str = "text",
    steps: int = 20,
    learning_rate: float = 5e-5,
    max_batches: int = 8,
    overrides: str = "",
    pipeline: str = "debug",
    run_id: str = "",
):
    """Profile a causal LM, inspect its activations on the dataset, run a short diagnostic training, and
    report the findings with fixes (HTML here; JSON and PDF in details)."""
    import shutil

    from aptops.core.runtime import apply_overrides, run_component
    from aptops.debug.stage import DebugStageConfig
    from aptops.debug.stage import debug_model as run_debug

    config = DebugStageConfig(block_size=block_size, batch_size=batch_size, text_column=text_column, steps=steps,
                              learning_rate=learning_rate, max_batches=max_batches)
    config = apply_overrides(config, overrides)
    result = run_component("debug", lambda: run_debug(model.path, dataset.path, output_dir=details.path, config=config),
                           step="debug", pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["html"], report.path)
    details.metadata["findings"] = len(result.details["findings"])
