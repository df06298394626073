"""KFP lightweight components, one module per stage, each a thin wrapper over the library.

Every component: ``install_kfp_package=False`` (the stage image carries kfp), the library import
inside the body (the body is shipped as source), ``base_image`` = the stage's image. The pipelines
re-base them on the registry and tag chosen at compile time (``aptops_pipelines.cluster``).

Parameters: flat ones for what pipeline users tune (their defaults are the library config's, which
``tests/components/test_defaults.py`` checks), and one ``overrides`` parameter, a YAML mapping of any field of
the stage's config, nested ones included (``"training: {lora_r: 8}"``), applied on top of the flat ones with
the same validation as ``--set`` on the CLI. Placement (image, node pool, resources) is not a parameter: the
pipelines set it once per task through ``ClusterSettings``.
"""

from __future__ import annotations

from aptops import __version__
from aptops.stages import get_stage

DEFAULT_REGISTRY = "aptops"
DEFAULT_TAG = __version__


def stage_image(stage: str, *, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG) -> str:
    """The image reference of a stage (``aptops/aptops-data:0.1.0``)."""
    name = get_stage(stage).image
    return f"{registry.rstrip('/')}/{name}:{tag}" if registry else f"{name}:{tag}"
