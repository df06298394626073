"""Components of the prune stage (image ``aptops-prune``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("prune")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prune_model(
    model: Input[Model],
    dataset: Input[Dataset],
    pruned: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    method: str = "magnitude",
    target_sparsity: float = 0.5,
    n_m: str = "",
    schedule_steps: int = 1,
    recovery_steps: int = 0,
    block_size: int = 256,
    chat_prompt: str = "",
    learning_rate: float = 5e-5,
    max_steps: int = 100,
    batch_size: int = 8,
    training_args: str = "{}",
    debug: bool = False,
    overrides: str = "",
    pipeline: str = "compress",
    run_id: str = "",
):
    """Prune (magnitude, taylor, wanda, neuron, head, lottery), fine-tune with the masks fixed, report before/after."""
    import shutil

    from aptops.core.runtime import apply_overrides, json_param, run_component
    from aptops.lm.trainjob import run_distributed
    from aptops.prune import PruneConfig
    from aptops.prune import prune_model as prune
    from aptops.train import TrainConfig

    extra = json_param(training_args, "training_args")
    args = {"learning_rate": learning_rate, "max_steps": max_steps, "per_device_train_batch_size": batch_size}
    config = PruneConfig(method=method, target_sparsity=target_sparsity, n_m=n_m, schedule_steps=schedule_steps,
                         recovery_steps=recovery_steps,
                         training=TrainConfig(block_size=block_size, chat_prompt=chat_prompt, debug=debug, resume="never",
                                              training_args=args | extra))
    config = apply_overrides(config, overrides)
    result = run_component("prune", lambda: run_distributed(  # here, or as a Kubeflow Trainer job (cluster file)
        "prune", ["prune", "run", model.path, dataset.path], inputs=[model.path, dataset.path], output_dir=pruned.path,
        config=config, local=lambda: prune(model.path, dataset.path, output_dir=pruned.path, config=config)),
        step="prune", pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
    pruned.metadata.update({k: result.metrics[k] for k in ("prune_sparsity", "prune_speedup", "perplexity")
                            if k in result.metrics})
