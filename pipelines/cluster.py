"""Cluster settings in one place: images, node pools, tolerations, GPU limits.

The same options reach here from ``aptops compile`` flags and from the Helm chart's values. Every
pipeline builds its tasks through :meth:`ClusterSettings.component` (the image) and
:meth:`ClusterSettings.apply` (Kubernetes placement), so no pipeline sets them by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl

from aptops.core.errors import ConfigError
from aptops.stages import get_stage
from aptops_components import DEFAULT_REGISTRY, DEFAULT_TAG, stage_image

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Credentials reach tasks as Kubernetes Secrets exposed as environment variables, never as parameters.
# A provider's Secret holds keys named like the variables (optional keys may be absent).
CREDENTIAL_ENV: dict[str, tuple[str, ...]] = {
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"),
    "oss": ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT"),
    "hf": ("HF_TOKEN", "HF_ENDPOINT"),
    "modelscope": ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT"),
}
# Which stages may see which credentials (least privilege: the data stage sees none).
STAGE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "backup": ("aws", "oss", "hf", "modelscope"),
    "hub": ("hf",),
    "train": ("hf",),
}
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9._:-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration; parsed from ``key=value:Effect`` or ``key:Effect`` (operator Exists)."""

    key: str
    effect: str = "NoSchedule"
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> Toleration:
        spec, sep, effect = text.rpartition(":")
        if not sep or not spec:
            raise ConfigError(
                f"toleration {text!r} must look like key=value:Effect or key:Effect "
                f"(Effect one of {', '.join(_EFFECTS)})", field="gpu_toleration", value=text,
            )
        key, _, value = spec.partition("=")
        return cls(key=key, effect=effect, value=value or None)

    def __post_init__(self) -> None:
        if not _LABEL_KEY.match(self.key):
            raise ConfigError(f"toleration key {self.key!r} is not a valid Kubernetes key", field="toleration", value=self.key)
        if self.effect not in _EFFECTS:
            raise ConfigError(
                f"toleration effect {self.effect!r} must be one of {', '.join(_EFFECTS)}",
                field="toleration", value=self.effect,
            )
        if self.value is not None and not _LABEL_VALUE.match(self.value):
            raise ConfigError(f"toleration value {self.value!r} is not a valid label value", field="toleration", value=self.value)


def parse_selector(pairs: Sequence[str] | Mapping[str, str], *, field_name: str) -> dict[str, str]:
    """``["k=v", ...]`` (or a mapping) to a validated node-selector mapping."""
    items = pairs.items() if isinstance(pairs, Mapping) else [_split_pair(p, field_name) for p in pairs]
    out = {}
    for key, value in items:
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ConfigError(
                f"{field_name} {key}={value} is not a valid Kubernetes label (key: [prefix/]name, value: "
                "up to 63 letters, digits, '-', '_', '.')", field=field_name, value=f"{key}={value}",
            )
        out[key] = value
    return out


def _split_pair(text: str, field_name: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{field_name} {text!r} must look like key=value", field=field_name, value=text)
    return key, value


# the stages whose tasks load model weights (and so share the cache volume)
MODEL_STAGES = frozenset({"hub", "train", "distill", "prune", "multimodal", "debug", "export"})


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how each stage's task runs on a cluster.

    Attributes:
        image_registry: the registry and namespace of the stage images (``registry.example.com/ml``).
        image_tag: the tag of every stage image.
        gpu_node_selector: node labels of the GPU pool.
        gpu_tolerations: tolerations GPU tasks need (GPU nodes are usually tainted).
        cpu_node_selector: node labels of the CPU pool.
        gpu_resource: the extended resource name of a GPU (``nvidia.com/gpu``, ``amd.com/gpu``).
        gpu_count: GPUs per GPU task.
        credential_secrets: provider (aws, oss, hf, modelscope) -> name of the Kubernetes Secret whose keys
            become that provider's environment variables in the stages that need them.
        cache_pvc: a PersistentVolumeClaim mounted into every stage that loads models, holding the Hugging
            Face cache (``HF_HOME``) and the aptops cache (``APTOPS_CACHE_DIR``), so weights are downloaded
            once per cluster instead of once per task; empty: no cache volume.
        cache_mount_path: where that claim is mounted.
    """

    image_registry: str = DEFAULT_REGISTRY
    image_tag: str = DEFAULT_TAG
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Toleration, ...] = ()
    cpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"aptops.io/pool": "cpu"})
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = 1
    credential_secrets: Mapping[str, str] = field(default_factory=dict)
    cache_pvc: str = ""
    cache_mount_path: str = "/cache"

    def __post_init__(self) -> None:
        if self.cache_pvc and not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", self.cache_pvc):
            raise ConfigError(f"cache_pvc {self.cache_pvc!r} is not a valid Kubernetes name", field="cache_pvc",
                              value=self.cache_pvc)
        if not self.cache_mount_path.startswith("/"):
            raise ConfigError("cache_mount_path must be an absolute path", field="cache_mount_path",
                              value=self.cache_mount_path)
        for provider, secret in self.credential_secrets.items():
            if provider not in CREDENTIAL_ENV:
                raise ConfigError(
                    f"credential secret for unknown provider {provider!r}: use one of {', '.join(CREDENTIAL_ENV)}",
                    field="credential_secrets", value=provider,
                )
            if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", secret):
                raise ConfigError(f"secret name {secret!r} is not a valid Kubernetes name", field="credential_secrets",
                                  value=secret)
        if self.image_registry and not _REGISTRY.match(self.image_registry):
            raise ConfigError(
                f"image_registry={self.image_registry!r} is not a valid registry/namespace (lower-case host[:port]/path)",
                field="image_registry", value=self.image_registry,
            )
        if not _TAG.match(self.image_tag):
            raise ConfigError(f"image_tag={self.image_tag!r} is not a valid image tag", field="image_tag", value=self.image_tag)
        if not _LABEL_KEY.match(self.gpu_resource) or "/" not in self.gpu_resource:
            raise ConfigError(
                f"gpu_resource={self.gpu_resource!r} must be an extended resource name such as nvidia.com/gpu",
                field="gpu_resource", value=self.gpu_resource,
            )
        if not 1 <= self.gpu_count <= 16:
            raise ConfigError(f"gpu_count={self.gpu_count} is out of range: allowed [1, 16]", field="gpu_count", value=self.gpu_count)
        parse_selector(self.gpu_node_selector, field_name="gpu_node_selector")
        parse_selector(self.cpu_node_selector, field_name="cpu_node_selector")

    def image(self, stage: str) -> str:
        return stage_image(stage, registry=self.image_registry, tag=self.image_tag)

    def component(self, comp: Any, stage: str) -> Any:
        """The same component re-based on this registry and tag."""
        return dsl.component(comp.python_func, base_image=self.image(stage), install_kfp_package=False)

    def apply(self, task: Any, stage: str, *, cache: bool = True, pool: str | None = None) -> Any:
        """Place a task on its stage's node pool (or ``pool``: a GPU stage's data step runs on the CPU pool);
        GPU tasks also get GPU limits and tolerations."""
        from kfp import kubernetes

        spec = get_stage(stage)
        task.set_caching_options(cache)
        task.set_display_name(task.name)
        if (pool or spec.pool) == "gpu":
            task.set_accelerator_type(self.gpu_resource).set_accelerator_limit(self.gpu_count)
            selector = self.gpu_node_selector
            for tol in self.gpu_tolerations:
                kubernetes.add_toleration(
                    task, key=tol.key, operator="Equal" if tol.value else "Exists", value=tol.value, effect=tol.effect
                )
        else:
            selector = self.cpu_node_selector
        for key, value in selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if self.cache_pvc and stage in MODEL_STAGES:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=self.cache_mount_path)
            task.set_env_variable("HF_HOME", f"{self.cache_mount_path}/huggingface")
            task.set_env_variable("APTOPS_CACHE_DIR", f"{self.cache_mount_path}/aptops")
        for provider in STAGE_CREDENTIALS.get(stage, ()):
            secret = self.credential_secrets.get(provider)
            if secret:
                keys = CREDENTIAL_ENV[provider]
                kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={k: k for k in keys},
                                             optional=True)
        return task
