"""Pipeline definitions, built for a :class:`~aptops.cluster.settings.ClusterSettings`.

Each pipeline module exposes ``build(settings) -> pipeline``; :data:`PIPELINES` names them. The CLI
compiles them (``aptops compile``), runs them on one machine (``aptops run NAME --local``) and submits
them (``aptops submit``).
"""

from __future__ import annotations

import importlib
from typing import Any

from aptops.cluster.settings import ClusterSettings
from aptops.core.errors import PipelineError

# name -> module that defines build(settings); each stage issue adds its pipelines here.
PIPELINES: dict[str, str] = {
    "data": "aptops_pipelines.data",
    "backup": "aptops_pipelines.backup",
    "train": "aptops_pipelines.train",
    "deploy": "aptops_pipelines.deploy",
    "compress": "aptops_pipelines.compress",
    "multimodal": "aptops_pipelines.multimodal",
    "lifecycle": "aptops_pipelines.lifecycle",
}


def build_pipeline(name: str, settings: ClusterSettings | None = None) -> Any:
    """Build the named pipeline for ``settings`` (defaults: the embedded single-machine settings).

    Raises:
        PipelineError: unknown pipeline name.
    """
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}: available pipelines are {', '.join(sorted(PIPELINES))}")
    module = importlib.import_module(PIPELINES[name])
    return module.build(settings or ClusterSettings())


__all__ = ["PIPELINES", "ClusterSettings", "build_pipeline"]
