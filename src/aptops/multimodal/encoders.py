"""Hugging Face encoders for text, images and audio behind one interface: inputs in, token states out.

Every encoder returns ``(tokens, mask)``: hidden states ``(n, T, H)`` and a boolean ``(n, T)`` saying which
positions are real. That is all fusion needs, whatever the family:

- text: BERT / RoBERTa / MiniLM / Chinese BERT, GPT-style decoders, the encoder half of T5 / BART;
- image: ViT, CLIP / SigLIP vision towers, DeiT, Swin; ResNet / ConvNeXt / EfficientNet feature maps
  (``(n, C, h, w)`` becomes ``h*w`` tokens of width ``C``);
- audio: Wav2Vec2, HuBERT, WavLM (frame mask from the sample mask), the Whisper encoder.

An encoder is given as a folder or Hub id (pretrained weights), a ``PretrainedConfig`` or a config mapping
with ``model_type`` (random weights: tiny models for tests), or a ready model object.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.core.formats import check_model_files

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "audio")
# the input tensor each modality hands its encoder (besides an optional attention mask)
_MAIN_INPUT = {"text": "input_ids", "image": "pixel_values", "audio": "input_values"}
# composite checkpoints: which sub-config / sub-model serves which modality
_SUB_CONFIG = {"text": "text_config", "image": "vision_config", "audio": "audio_config"}


def hidden_size_of(config: Any) -> int:
    """The width of an encoder's output states, across the naming conventions of the model families."""
    for name in ("hidden_size", "d_model", "hidden_dim", "dim", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    sizes = getattr(config, "hidden_sizes", None)  # ResNet, ConvNeXt: the last stage's channels
    if sizes:
        return int(sizes[-1])
    raise ConfigError(f"cannot tell the output width of a {type(config).__name__}; pass a model whose config has "
                      "hidden_size, d_model or hidden_sizes", field="encoder")


def _resolve_config(modality: str, spec: Any) -> Any:
    transformers = require("transformers", extra="multimodal", feature="multimodal encoders")
    if isinstance(spec, Mapping):
        spec = dict(spec)
        model_type = spec.pop("model_type", None)
        if not model_type:
            raise ConfigError(f"the {modality} encoder config needs a model_type (bert, vit, wav2vec2 ...)",
                              field=f"{modality}_encoder")
        try:
            return transformers.AutoConfig.for_model(model_type, **spec)
        except ValueError as exc:
            raise ConfigError(f"{modality} encoder: {exc}", field=f"{modality}_encoder") from None
    return spec


def _encoder_part(modality: str, model: Any) -> Any:
    """The encoder inside a composite model: a CLIP tower, the encoder of T5 / Whisper / BART."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    for attr in {"image": ("vision_model",), "text": ("text_model",), "audio": ("audio_model",)}[modality]:
        if getattr(config, _SUB_CONFIG[modality], None) is not None and hasattr(model, attr):
            return getattr(model, attr)
    return model


def load_encoder(modality: str, spec: Any) -> Any:
    """A bare encoder (no task head) for ``modality`` from a folder / Hub id, a config, or a model.

    Raises:
        ConfigError: an unknown modality, an unknown ``model_type`` or a folder that is not a model.
    """
    transformers = require("transformers", extra="multimodal", feature="multimodal encoders")
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}", field="modality")
    if isinstance(spec, nn.Module):
        return _encoder_part(modality, spec)
    spec = _resolve_config(modality, spec)
    if isinstance(spec, transformers.PretrainedConfig):
        sub = getattr(spec, _SUB_CONFIG[modality], None)
        if sub is not None and not getattr(spec, "is_encoder_decoder", False):
            spec = sub  # CLIP-style: build only the tower this modality needs
        model = transformers.AutoModel.from_config(spec)
        return _encoder_part(modality, model)
    source = str(spec)
    if isinstance(spec, Path) and not spec.exists():
        raise ConfigError(f"the {modality} encoder folder {spec} does not exist", field=f"{modality}_encoder")
    if Path(source).is_dir():  # its config, tokenizer and weight headers named when damaged, not deep in a loader
        check_model_files(source)
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the {modality} encoder {source!r}: {exc}", field=f"{modality}_encoder") from None
    sub = getattr(config, _SUB_CONFIG[modality], None)
    if sub is not None and not getattr(config, "is_encoder_decoder", False):
        # a CLIP / SigLIP checkpoint: load only the tower (its class reads the sub-config from the full one)
        cls = transformers.MODEL_MAPPING[type(sub)]
        return cls.from_pretrained(source, use_safetensors=True)
    return _encoder_part(modality, transformers.AutoModel.from_pretrained(source, use_safetensors=True))


def load_processor(modality: str, source: Any) -> Any:
    """The tokenizer / image processor / feature extractor saved with an encoder (``None`` if there is none)."""
    transformers = require("transformers", extra="multimodal", feature="multimodal encoders")
    loader = {"text": transformers.AutoTokenizer, "image": transformers.AutoImageProcessor,
              "audio": transformers.AutoFeatureExtractor}[modality]
    try:
        return loader.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as exc:
        log.debug("no %s processor in %s: %s", modality, source, exc)
        return None


def default_processor(modality: str, encoder: Any) -> Any:
    """A processor matching a randomly initialised encoder (image size, sampling rate), for tests and scratch runs."""
    transformers = require("transformers", extra="multimodal", feature="multimodal encoders")
    config = encoder.config
    if modality == "image":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

        return ViTImageProcessorPil(size={"height": size, "width": size})
    if modality == "audio":
        if getattr(config, "model_type", "") == "whisper":
            return transformers.WhisperFeatureExtractor(feature_size=getattr(config, "num_mel_bins", 80))
        return transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    raise ConfigError("a text encoder built from a config needs its tokenizer: pass processors={'text': tokenizer}",
                      field="processors.text")


class ModalityEncoder(nn.Module):
    """One encoder and how to read its output as ``(tokens, mask)``.

    Args:
        modality: ``text``, ``image`` or ``audio``.
        model: the bare Hugging Face encoder.
    """

    def __init__(self, modality: str, model: nn.Module) -> None:
        super().__init__()
        self.modality = modality
        self.model = model
        self.hidden_size = hidden_size_of(model.config)
        self.main_input = _MAIN_INPUT[modality]
        if modality == "audio" and getattr(model.config, "model_type", "") == "whisper":
            self.main_input = "input_features"
        self.frozen = False

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) training this encoder; a frozen encoder also stays in eval mode (no dropout)."""
        self.frozen = frozen
        for p in self.model.parameters():
            p.requires_grad_(not frozen)
        self.model.train(self.training and not frozen)

    def train(self, mode: bool = True) -> ModalityEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        main = inputs.get(self.main_input)
        if main is None:
            raise ConfigError(f"the {self.modality} batch has no {self.main_input}; its keys are {sorted(inputs)}",
                              field=self.modality)
        kwargs: dict[str, Any] = {self.main_input: main}
        sample_mask = inputs.get("attention_mask")
        if sample_mask is not None and self.modality != "image" and self.main_input != "input_features":
            kwargs["attention_mask"] = sample_mask
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if hidden.dim() == 4:  # convolutional feature map (n, C, h, w) -> h*w tokens of width C
            hidden = hidden.flatten(2).transpose(1, 2)
        mask = self._token_mask(hidden, sample_mask)
        return hidden, mask

    def _token_mask(self, hidden: torch.Tensor, sample_mask: torch.Tensor | None) -> torch.Tensor:
        n, t = hidden.shape[:2]
        full = torch.ones(n, t, dtype=torch.bool, device=hidden.device)
        if sample_mask is None or self.modality == "image":
            return full
        if self.modality == "text":
            return sample_mask.bool()
        if hasattr(self.model, "_get_feature_vector_attention_mask"):  # wav2vec2 family: samples -> frames
            return self.model._get_feature_vector_attention_mask(t, sample_mask).bool()
        return full


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over real positions (``mask`` true); a row with none gives zeros."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
