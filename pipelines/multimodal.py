"""The ``multimodal`` pipeline: check and package the train and eval manifests → train → report.

Run it on a CPU with the sample task (``aptops multimodal sample runs/mm-data``; ``make demo`` does it)::

    aptops run multimodal --local --param train_manifest=runs/mm-data/train.jsonl \\
        --param eval_manifest=runs/mm-data/eval.jsonl --param text_encoder=<all-MiniLM-L6-v2 folder>
"""

from typing import Any

from kfp import dsl

from aptops.cluster.settings import ClusterSettings
from aptops_components import multimodal as multimodal_components


def build(settings: ClusterSettings) -> Any:
    prepare = settings.component(multimodal_components.prepare_multimodal_data, "multimodal")
    train_model = settings.component(multimodal_components.train_multimodal_model, "multimodal")

    @dsl.pipeline(name="aptops-multimodal", description="Check a text + image + audio manifest, train encoders "
                  "with a fusion and a head on it, and report accuracy fused and for each modality alone.")
    def multimodal(
        train_manifest: str,
        eval_manifest: str,
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
        on_bad_input: str = "error",
        training_args: str = "{}",
    ):
        """Prepare the manifests and train a multimodal model.

        Args:
            train_manifest: JSONL / Parquet rows (text, image, audio, label, start, end) the tasks can read.
            eval_manifest: the held-out rows.
            text_encoder: a text model folder or Hub id (empty: none).
            image_encoder: an image model folder or Hub id, or ``tiny`` (a small random ViT).
            audio_encoder: an audio model folder or Hub id, or ``tiny`` (a small random Wav2Vec2).
            modalities: comma-separated modalities to use (empty: all in the manifest).
            fusion: concat, add or attention.
            freeze: comma-separated encoders that stay fixed (their features are cached).
            hidden_size: the fusion width.
            epochs: passes over the training rows.
            batch_size: rows per step.
            learning_rate: the base learning rate.
            modality_dropout: chance of hiding a present modality from a training row.
            on_bad_input: error or mask, for unreadable files and silent audio.
            training_args: JSON of further transformers.TrainingArguments fields.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        train_data = prepare(manifest=train_manifest, on_bad_input=on_bad_input, pipeline="multimodal", run_id=run_id)
        settings.apply(train_data, "multimodal", pool="cpu")
        train_data.set_display_name("prepare-train")
        eval_data = prepare(manifest=eval_manifest, on_bad_input=on_bad_input, pipeline="multimodal", run_id=run_id)
        settings.apply(eval_data, "multimodal", pool="cpu")
        eval_data.set_display_name("prepare-eval")
        trained = train_model(train=train_data.outputs["dataset"], eval_data=eval_data.outputs["dataset"],
                              text_encoder=text_encoder, image_encoder=image_encoder, audio_encoder=audio_encoder,
                              modalities=modalities, fusion=fusion, freeze=freeze, hidden_size=hidden_size,
                              epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                              modality_dropout=modality_dropout, on_bad_input=on_bad_input,
                              training_args=training_args, pipeline="multimodal", run_id=run_id)
        settings.apply(trained, "multimodal", trains=True)

    return multimodal
