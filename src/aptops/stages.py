"""The stage table: one row per stage, the single source for names, images, node pools and plugins.

Every other layer (CLI, components, pipelines, the Helm chart, the plugin bus) reads this table, so a
stage is named the same everywhere; the old plugins' adapters (``aptops.plugins``) are built from it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from typing import Literal

from aptops import __version__

Pool = Literal["cpu", "gpu"]

#: The base image of each node pool's stage images: the Python every test ran on. A GPU image gets its CUDA from
#: the CUDA build of the locked torch (its wheels carry the CUDA 12.8 runtime and cuDNN; the node needs only the
#: driver), not from a base image's own torch.
#: Pinned by digest, so a rebuilt image starts from the same bytes (the digest is the one public projects pin for
#: python:3.11-slim; no registry is reachable from where this was written, so it was not pulled there).
PYTHON_BASE = "python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7"
BASE_IMAGES: dict[str, str] = {
    "gpu": PYTHON_BASE,
    "cpu": PYTHON_BASE,
}
#: Where each pool's images take torch from (the version is the lock's): the CUDA 12.8 builds for the GPU pool;
#: none for the CPU stages of the shared Dockerfile (data, hub, backup need no torch; export installs the CPU build).
TORCH_INDEXES: dict[str, str] = {
    "gpu": "https://download.pytorch.org/whl/cu128",
    "cpu": "",
}
#: The Dockerfile every stage image is built from unless its row names its own.
SHARED_DOCKERFILE = "images/Dockerfile"


@dataclass(frozen=True)
class Stage:
    """One stage of the lifecycle.

    Attributes:
        name: the snake_case stage name (``data``), used for the module, image, component and CLI.
        adapter: the old APT plugin's adapter name (``data_processors``); empty for a stage no old plugin had.
        legacy_name: the old plugin's display name.
        category: the old plugin's category.
        priority: the old plugin's priority; lower runs first on the bus.
        pool: the node pool its component runs on.
        extra: the pip extra its library needs.
        functions: the public functions of the old plugin that the stage keeps, importable from ``module``.
        config: ``module:Class`` of the stage's config, whose fields are the keys the old plugin's config takes;
            ``None`` for a stage without one.
        image_extras: pip extras its image carries beyond ``extra`` (train's debug switch needs ``debug``).
        dockerfile: the Dockerfile its image is built from, relative to the repository root.
    """

    name: str
    adapter: str
    legacy_name: str
    category: str
    priority: int
    pool: Pool
    extra: str
    functions: tuple[str, ...]
    config: str | None
    image_extras: tuple[str, ...] = field(default=(), kw_only=True)
    dockerfile: str = field(default=SHARED_DOCKERFILE, kw_only=True)

    @property
    def image(self) -> str:
        """The image name without registry or tag (``aptops-data``)."""
        return f"aptops-{self.name}"

    @property
    def module(self) -> str:
        return f"aptops.{self.name}"

    @property
    def build_args(self) -> dict[str, str]:
        """The ``--build-arg`` values of its image (none for a stage with a Dockerfile of its own)."""
        if self.dockerfile != SHARED_DOCKERFILE:
            return {}
        return {"BASE": BASE_IMAGES[self.pool], "STAGE": self.name,
                "EXTRAS": ",".join((self.extra, *self.image_extras)), "TORCH_INDEX": TORCH_INDEXES[self.pool]}

    def docker_build(self, *, registry: str, tag: str) -> list[str]:
        """The ``docker build`` command line of its image, run from the repository root; ``IMAGE`` is the reference
        the image records in every artifact's lineage (``APTOPS_IMAGE``)."""
        ref = f"{registry}/{self.image}:{tag}"
        args = [f"--build-arg={k}={v}" for k, v in {**self.build_args, "IMAGE": ref}.items()]
        return ["docker", "build", "-f", self.dockerfile, *args, "-t", ref, "."]


STAGES: tuple[Stage, ...] = (
    Stage("data", "data_processors", "Data Processors", "data", 100, "cpu", "data",
          ("clean_text", "augment_text", "balance_dataset", "check_quality", "process_pipeline"),
          "aptops.data.recipe:CleanConfig"),
    Stage("hub", "huggingface_integration", "HuggingFace Integration", "integration", 700, "cpu", "hub",
          ("import_from_huggingface", "export_to_huggingface", "load_hf_dataset", "create_model_card"), None),
    Stage("train", "huggingface_integration", "HuggingFace Integration", "integration", 700, "gpu", "train",
          ("train_with_hf_trainer",), "aptops.lm.training:TrainConfig", image_extras=("debug",)),
    Stage("distill", "model_distillation", "Model Distillation", "training", 350, "gpu", "distill",
          ("response_distillation", "feature_distillation", "relation_distillation",
           "attention_distillation", "distill_model", "evaluate_compression"),
          "aptops.distill.recipe:DistillConfig"),
    Stage("prune", "model_pruning", "Model Pruning", "training", 350, "gpu", "prune",
          ("magnitude_pruning", "taylor_pruning", "structured_pruning", "lottery_ticket_pruning",
           "fine_tune_after_pruning", "prune_model"), "aptops.prune.recipe:PruneConfig"),
    Stage("multimodal", "multimodal_training", "Multimodal Training", "training", 350, "gpu", "multimodal",
          ("create_multimodal_model", "create_multimodal_dataloader", "train_multimodal",
           "inference_multimodal", "cross_modal_attention"), "aptops.multimodal.recipe:MultimodalConfig"),
    Stage("debug", "advanced_debugging", "Advanced Debugging", "debug", 800, "gpu", "debug",
          ("monitor_gradients", "detect_gradient_anomalies", "monitor_activations", "detect_dead_neurons",
           "detect_saturated_neurons", "track_memory", "detect_memory_leaks", "profile_section", "profile_model",
           "diagnose_training", "detect_nan_inf", "visualize_gradients", "visualize_activations",
           "generate_full_report"), "aptops.debug.callback:DebugConfig"),
    # a new stage, no old plugin: no adapter
    Stage("eval", "", "", "evaluation", 850, "gpu", "eval",
          ("evaluate_tasks", "build_wordnet_task"), "aptops.eval.recipe:HarnessConfig"),
    Stage("export", "ollama_export", "Ollama Export", "export", 900, "cpu", "export",
          ("export_to_gguf", "create_modelfile", "register_to_ollama", "test_model"),
          "aptops.export.recipe:ExportConfig", dockerfile="images/export/Dockerfile"),
    Stage("backup", "cloud_storage", "Cloud Storage", "storage", 700, "cpu", "backup",
          ("backup_to_s3", "backup_to_oss", "backup_to_huggingface", "backup_to_modelscope", "backup_model",
           "restore_from_s3", "restore_from_oss", "restore_from_cloud"), "aptops.backup.engine:BackupConfig"),
)

_BY_NAME = {s.name: s for s in STAGES}

#: The registry and tag of the stage images unless a cluster file or ``aptops compile`` names others.
DEFAULT_REGISTRY = "aptops"
DEFAULT_TAG = __version__


def stage_image(stage: str, *, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> str:
    """The image reference of a stage (``aptops/aptops-data:0.1.0``)."""
    name = get_stage(stage).image
    return f"{registry.rstrip('/')}/{name}:{tag}" if registry else f"{name}:{tag}"


def get_stage(name: str) -> Stage:
    """Look a stage up by name.

    Raises:
        KeyError: unknown stage (the message lists the known ones).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}: known stages are {', '.join(_BY_NAME)}") from None


def main(argv: list[str] | None = None) -> int:
    """``python3 -m aptops.stages images``: print the ``docker build`` line of every stage image (for ``make
    images``; needs nothing but the standard library, so it runs before any setup)."""
    parser = argparse.ArgumentParser(prog="python3 -m aptops.stages")
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="the docker build command of each stage image, one per line")
    images.add_argument("--registry", default="aptops")
    images.add_argument("--tag", required=True)
    images.add_argument("--stage", action="append", choices=list(_BY_NAME), help="only these stages (repeatable)")
    args = parser.parse_args(argv)
    for stage in STAGES:
        if not args.stage or stage.name in args.stage:
            print(shlex.join(stage.docker_build(registry=args.registry, tag=args.tag)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
