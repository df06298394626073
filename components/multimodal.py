"""Components of the multimodal stage (image ``aptops-multimodal``, GPU pool for training).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_component

component = stage_component("multimodal")


@component
def prepare_multimodal_data(
    manifest: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    on_bad_input: str = "error",
    pipeline: str = "multimodal",
    run_id: str = "",
):
    """Check every row of a manifest (images and audio segments decode) and copy it with its files into one artifact."""
    params = dict(locals())
    from aptops.core.runtime import run_step
    from aptops.multimodal import prepare_multimodal_data as prepare

    result = run_step("multimodal", "prepare", lambda: prepare(manifest, dataset.path, on_bad_input=on_bad_input),
                      params)
    dataset.metadata.update({k: result.metrics[k] for k in ("rows", "labels", "files") if k in result.metrics})


@stage_component("multimodal", config="aptops.multimodal:MultimodalConfig", tuned=(
    "text_encoder", "image_encoder", "audio_encoder", "modalities", "fusion", "freeze", "hidden_size", "epochs",
    "batch_size", "learning_rate", "modality_dropout", "gradient_balance", "cache_features", "on_bad_input",
    "training_args"),
    # a pipeline needs encoders to run at all: real ones, the pretrained text encoder frozen
    defaults={"text_encoder": "sentence-transformers/all-MiniLM-L6-v2", "image_encoder": "tiny",
              "audio_encoder": "tiny", "freeze": "text"})
def train_multimodal_model(
    train: Input[Dataset],
    eval_data: Input[Dataset],
    model: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    **tuned,
):
    """Train a text + image + audio model (encoders, fusion, head) and report accuracy fused and per modality."""
    params = dict(locals())
    import shutil

    from aptops.cluster.trainjob import run_training_step
    from aptops.core.runtime import config_from_params
    from aptops.multimodal import MultimodalConfig, train_multimodal_model

    config = config_from_params(MultimodalConfig, params)
    result = run_training_step(  # here, or as a Kubeflow Trainer job (the cluster file)
        "multimodal", ["multimodal", "train", train.path, "--eval", eval_data.path], output_dir=model.path,
        config=config, params=params,
        local=lambda: train_multimodal_model(train.path, output_dir=model.path, config=config, eval_data=eval_data.path))
    shutil.copyfile(result.outputs["report"], report.path)
    model.metadata.update({k: v for k, v in result.metrics.items() if k.startswith("eval_accuracy")})
