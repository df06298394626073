"""Components of the prune stage (image ``aptops-prune``, GPU pool).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_component


@stage_component("prune", pipeline="compress", config="aptops.prune:PruneConfig", tuned=(
    "method", "target_sparsity", "n_m", "schedule_steps", "recovery_steps", "block_size", "chat_prompt",
    "learning_rate", "max_steps", "batch_size", "eval_fraction", "lora_r", "replay", "replay_ratio", "training_args",
    "debug"),
    defaults={"max_steps": 100})  # a pipeline's recovery is short unless asked
def prune_model(
    model: Input[Model],
    dataset: Input[Dataset],
    pruned: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Prune (magnitude, taylor, wanda, neuron, head, lottery), fine-tune with the masks fixed, report before/after."""
    params = dict(locals())
    import shutil

    from aptops.cluster.trainjob import run_training_step
    from aptops.core.runtime import TRAINING_ARG_PARAMS, config_from_params
    from aptops.prune import PruneConfig
    from aptops.prune import prune_model as prune

    config = config_from_params(PruneConfig, params, paths=TRAINING_ARG_PARAMS)
    result = run_training_step(  # here, or as a Kubeflow Trainer job (the cluster file)
        "prune", ["prune", "run", model.path, dataset.path], output_dir=pruned.path, config=config, params=params,
        step="prune", local=lambda: prune(model.path, dataset.path, output_dir=pruned.path, config=config))
    shutil.copyfile(result.outputs["report"], report.path)
    pruned.metadata.update({k: result.metrics[k] for k in ("prune_sparsity", "prune_speedup", "perplexity")
                            if k in result.metrics})
