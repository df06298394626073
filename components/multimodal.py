"""Components of the multimodal stage (image ``aptops-multimodal``, GPU pool for training).

No ``from __future__ import annotations`` here: kfp reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from aptops_components import stage_image

IMAGE = stage_image("multimodal")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_multimodal_data(
    manifest: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    on_bad_input: str = "error",
    pipeline: str = "multimodal",
    run_id: str = "",
):
    """Check every row of a manifest (images and audio segments decode) and copy it with its files into one artifact."""
    from aptops.core.runtime import run_component
    from aptops.multimodal import prepare_multimodal_data as prepare

    result = run_component("multimodal", lambda: prepare(manifest, dataset.path, on_bad_input=on_bad_input),
                           step="prepare", pipeline=pipeline, run_id=run_id, metrics=metrics)
    dataset.metadata.update({k: result.metrics[k] for k in ("rows", "labels", "files") if k in result.metrics})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_multimodal_model(
    train: Input[Dataset],
    eval_data: Input[Dataset],
    model: Output[Model],
    report: Output[HTML],
    metrics: Output[Metrics],
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2",
    image_encoder: str = "tiny",
    audio_encoder: str = "tiny",
    modalities: str = "",
    fusion: str = "concat",
    freeze: str = "text",
    hidden_size: int = 128,
    epochs: float = 10.0,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    modality_dropout: float = 0.3,
    gradient_balance: str = "ogm",
    cache_features: bool = True,
    on_bad_input: str = "error",
    training_args: str = "{}",
    overrides: str = "",
    pipeline: str = "multimodal",
    run_id: str = "",
):
    """Train a text + image + audio model (encoders, fusion, head) and report accuracy fused and per modality."""
    import shutil

    from aptops.core.runtime import apply_overrides, json_param, list_param, run_component
    from aptops.lm.trainjob import run_distributed
    from aptops.multimodal import MultimodalConfig, train_multimodal_model

    extra = json_param(training_args, "training_args")

    config = MultimodalConfig(
        modalities=tuple(list_param(modalities)), text_encoder=text_encoder or None, image_encoder=image_encoder or None,
        audio_encoder=audio_encoder or None, fusion=fusion, freeze=tuple(list_param(freeze)), hidden_size=hidden_size,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, modality_dropout=modality_dropout,
        gradient_balance=gradient_balance, cache_features=cache_features, on_bad_input=on_bad_input,
        training_args=extra)
    config = apply_overrides(config, overrides)
    result = run_component("multimodal", lambda: run_distributed(  # here, or as a Kubeflow Trainer job (cluster file)
        "multimodal", ["multimodal", "train", train.path, "--eval", eval_data.path], inputs=[train.path, eval_data.path],
        output_dir=model.path, config=config,
        local=lambda: train_multimodal_model(train.path, output_dir=model.path, config=config, eval_data=eval_data.path)),
        step="train", pipeline=pipeline, run_id=run_id, metrics=metrics)
    shutil.copyfile(result.outputs["report"], report.path)
    model.metadata.update({k: v for k, v in result.metrics.items() if k.startswith("eval_accuracy")})
