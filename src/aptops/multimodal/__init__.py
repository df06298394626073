"""The multimodal stage: text + image + audio encoders, fusion, joint training and inference.

``create_multimodal_model`` builds the model from any subset of Hugging Face encoders,
``create_multimodal_dataloader`` turns lists or a manifest into batches (missing modalities masked),
``train_multimodal`` trains it with the ``Trainer``, ``inference_multimodal`` predicts from whatever inputs
are given; ``train_multimodal_model`` is the stage (manifest in, model folder + report out).
"""

from aptops.multimodal.data import (
    MultimodalCollator,
    MultimodalDataset,
    balanced_sampler,
    create_multimodal_dataloader,
    load_audio,
    load_image,
    load_manifest,
)
from aptops.multimodal.model import (
    CrossModalAttention,
    MultimodalModel,
    MultimodalModelConfig,
    create_multimodal_model,
    cross_modal_attention,
)
from aptops.multimodal.recipe import MultimodalConfig, prepare_multimodal_data, train_multimodal_model
from aptops.multimodal.training import (
    MultimodalTrainer,
    cache_encoder_features,
    evaluate_multimodal,
    inference_multimodal,
    train_multimodal,
)

__all__ = [
    "CrossModalAttention", "MultimodalCollator", "MultimodalConfig", "MultimodalDataset", "MultimodalModel", "MultimodalModelConfig",
    "MultimodalTrainer", "balanced_sampler", "cache_encoder_features", "create_multimodal_dataloader",
    "create_multimodal_model", "cross_modal_attention", "evaluate_multimodal", "inference_multimodal",
    "load_audio", "load_image", "load_manifest", "prepare_multimodal_data", "train_multimodal",
    "train_multimodal_model",
]
