"""The stage table: one row per stage, the single source for names, images, node pools and plugins.

Every other layer (CLI, components, pipelines, the Helm chart, the plugin bus) reads this table, so a
stage is named the same everywhere. ``available`` says honestly whether the stage's library exists yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import util as importlib_util
from typing import Literal

Pool = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Stage:
    """One stage of the lifecycle.

    Attributes:
        name: the snake_case stage name (``data``), used for the module, image, component and CLI.
        adapter: the old APT plugin's adapter name (``data_processors``).
        legacy_name: the old plugin's display name.
        category: the old plugin's category.
        priority: the old plugin's priority; lower runs first on the bus.
        pool: the node pool its component runs on.
        extra: the pip extra its library needs.
        functions: the public functions of the old plugin that the stage keeps.
    """

    name: str
    adapter: str
    legacy_name: str
    category: str
    priority: int
    pool: Pool
    extra: str
    functions: tuple[str, ...]

    @property
    def image(self) -> str:
        """The image name without registry or tag (``aptops-data``)."""
        return f"aptops-{self.name}"

    @property
    def module(self) -> str:
        return f"aptops.{self.name}"

    @property
    def available(self) -> bool:
        """Whether the stage's library module is part of this installation."""
        return importlib_util.find_spec(self.module) is not None


STAGES: tuple[Stage, ...] = (
    Stage("data", "data_processors", "Data Processors", "data", 100, "cpu", "data",
          ("clean_text", "augment_text", "balance_dataset", "check_quality", "process_pipeline")),
    Stage("hub", "huggingface_integration", "HuggingFace Integration", "integration", 700, "cpu", "hub",
          ("import_from_huggingface", "export_to_huggingface", "load_hf_dataset", "create_model_card")),
    Stage("train", "huggingface_integration", "HuggingFace Integration", "integration", 700, "gpu", "train",
          ("train_with_hf_trainer",)),
    Stage("distill", "model_distillation", "Model Distillation", "training", 350, "gpu", "distill",
          ("response_distillation", "feature_distillation", "relation_distillation",
           "attention_distillation", "distill_model", "evaluate_compression")),
    Stage("prune", "model_pruning", "Model Pruning", "training", 350, "gpu", "prune",
          ("magnitude_pruning", "taylor_pruning", "structured_pruning", "lottery_ticket_pruning",
           "fine_tune_after_pruning", "prune_model")),
    Stage("multimodal", "multimodal_training", "Multimodal Training", "training", 350, "gpu", "multimodal",
          ("create_multimodal_model", "create_multimodal_dataloader", "train_multimodal",
           "inference_multimodal", "cross_modal_attention")),
    Stage("debug", "advanced_debugging", "Advanced Debugging", "debug", 800, "gpu", "debug",
          ("monitor_gradients", "monitor_activations", "track_memory", "profile_model",
           "diagnose_training", "detect_nan_inf", "generate_full_report")),
    Stage("export", "ollama_export", "Ollama Export", "export", 900, "cpu", "export",
          ("export_to_gguf", "create_modelfile", "register_to_ollama", "test_model")),
    Stage("backup", "cloud_storage", "Cloud Storage", "storage", 700, "cpu", "backup",
          ("backup_to_s3", "backup_to_oss", "backup_to_huggingface", "backup_to_modelscope", "backup_model",
           "restore_from_s3", "restore_from_oss", "restore_from_cloud")),
)

_BY_NAME = {s.name: s for s in STAGES}

# Stages whose library has landed only in part, with what is there (shown by `aptops stages`).
PARTIAL: dict[str, str] = {
    "export": "GGUF (BPE tokenizers), quant gate, Ollama, deploy pipeline; SentencePiece tokenizers to come",
}


def get_stage(name: str) -> Stage:
    """Look a stage up by name.

    Raises:
        KeyError: unknown stage (the message lists the known ones).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}: known stages are {', '.join(_BY_NAME)}") from None
