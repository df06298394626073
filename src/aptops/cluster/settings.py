"""Cluster settings in one place: images, node pools, tolerations, resources, GPUs, secrets, volumes, TrainJobs.

They come from one cluster file a platform team keeps in git (``aptops compile --cluster cluster.yaml``; the
Helm chart renders the same file from its values), with ``aptops compile`` flags as overrides. The file is
checked before anything compiles: a misspelt key, ``memory: 16gb`` or a negative GPU count is an error that
names the key. Every pipeline builds its tasks through :meth:`ClusterSettings.component` (the image) and
:meth:`ClusterSettings.apply` (placement, requests and limits, secrets, the cache volume, TrainJob launch),
so no pipeline sets them by hand and every task carries its requests and limits.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.cluster.trainjob import TRAINJOB_ENV, TrainJobLaunch, TrainJobSettings
from aptops.core.config import from_dict, read_yaml_mapping
from aptops.core.errors import ConfigError
from aptops.stages import DEFAULT_REGISTRY, DEFAULT_TAG, STAGES, get_stage, stage_image

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

# Credentials reach tasks as Kubernetes Secrets exposed as environment variables, never as parameters.
# A provider's Secret holds keys named like the variables (optional keys may be absent).
CREDENTIAL_ENV: dict[str, tuple[str, ...]] = {
    "aws": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"),
    "oss": ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT"),
    "hf": ("HF_TOKEN", "HF_ENDPOINT"),
    "modelscope": ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT"),
    "registry": ("MODEL_REGISTRY_TOKEN",),  # Kubeflow Model Registry's bearer token
}
# Which stages may see which credentials (least privilege: a stage sees a provider's keys only when it reads or
# writes there). Data and training read corpora in place (s3://, oss://, hf://datasets/...), so they see the
# storage providers; only the backup stage sees ModelScope and the registry token.
STAGE_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "backup": ("aws", "oss", "hf", "modelscope", "registry"),  # the register step reads the backup it points at
    "data": ("aws", "oss", "hf"),
    "hub": ("hf",),
    "train": ("hf", "aws", "oss"),
    "distill": ("hf", "aws", "oss"),
    "prune": ("hf", "aws", "oss"),
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

    def to_k8s(self) -> dict[str, str]:
        """The toleration as the Kubernetes API writes it."""
        out = {"key": self.key, "operator": "Equal" if self.value else "Exists", "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out

    def __post_init__(self) -> None:
        if not _LABEL_KEY.fullmatch(self.key):
            raise ConfigError(f"toleration key {self.key!r} is not a valid Kubernetes key", field="toleration", value=self.key)
        if self.effect not in _EFFECTS:
            raise ConfigError(
                f"toleration effect {self.effect!r} must be one of {', '.join(_EFFECTS)}",
                field="toleration", value=self.effect,
            )
        if self.value is not None and not _LABEL_VALUE.fullmatch(self.value):
            raise ConfigError(f"toleration value {self.value!r} is not a valid label value", field="toleration", value=self.value)


def parse_selector(pairs: Sequence[str] | Mapping[str, str], *, field_name: str) -> dict[str, str]:
    """``["k=v", ...]`` (or a mapping) to a validated node-selector mapping."""
    items = pairs.items() if isinstance(pairs, Mapping) else [_split_pair(p, field_name) for p in pairs]
    out = {}
    for key, value in items:
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"{field_name} {key}={value} is not a valid Kubernetes label (key: [prefix/]name, value: "
                "up to 63 letters, digits, '-', '_', '.')", field=field_name, value=f"{key}={value}",
            )
        out[key] = value
    return out


def _bounded(value: Any, where: str, key: str = "") -> None:
    """Refuse a string longer than any cluster setting needs (it would be copied into every task's YAML)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _bounded(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _bounded(v, where, f"{key}[{i}]")
    elif isinstance(value, str) and len(value) > MAX_VALUE:
        raise ConfigError(f"{where}: {key} holds {len(value):,} characters; no cluster setting needs more than "
                          f"{MAX_VALUE:,}", field=key, value=value[:40])


def _split_pair(text: str, field_name: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{field_name} {text!r} must look like key=value", field=field_name, value=text)
    return key, value


# the stages whose tasks load model weights (and so share the cache volume)
MODEL_STAGES = frozenset({"hub", "train", "distill", "prune", "multimodal", "debug", "eval", "export"})
# the stages whose tasks may write resumable checkpoints
CHECKPOINT_STAGES = frozenset({"train", "distill", "prune", "multimodal"})

_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)m?$")
_MEMORY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")
_MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PATH = re.compile(r"/[A-Za-z0-9._/+@=,:-]*")  # a container path as a volume mount takes it
MAX_PATH = 1024
MAX_VALUE = 4096  # longest string any key of a cluster file holds


def cpu_cores(text: str, *, field_name: str = "cpu") -> float:
    """A Kubernetes CPU quantity (``2``, ``0.5``, ``500m``) in cores.

    Raises:
        ConfigError: not a CPU quantity; the message names the key and shows the forms allowed.
    """
    if not _CPU.fullmatch(str(text)):
        raise ConfigError(f"{field_name}={text!r} is not a CPU quantity: write cores ('2', '0.5') or millicores "
                          "('500m')", field=field_name, value=text)
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(text: str, *, field_name: str = "memory") -> int:
    """A Kubernetes memory quantity (``16Gi``, ``512Mi``, ``2G``) in bytes.

    Raises:
        ConfigError: not a memory quantity (``16gb`` is not one); the message names the key and the units.
    """
    if not _MEMORY.fullmatch(str(text)):
        raise ConfigError(f"{field_name}={text!r} is not a memory quantity: write an integer with one of the units "
                          "Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000), e.g. '16Gi'",
                          field=field_name, value=text)
    m = re.match(r"^([0-9]+)([A-Za-z]*)$", str(text))
    assert m is not None
    return int(m.group(1)) * _MEMORY_UNITS[m.group(2)]


@dataclass(frozen=True, kw_only=True)
class Amounts:
    """CPU and memory of a request or a limit (empty: from the stage's default)."""

    cpu: str = ""
    memory: str = ""


@dataclass(frozen=True, kw_only=True)
class StageResources:
    """What one stage's task asks for (``requests``), may use (``limits``), and its GPUs.

    ``gpus`` is the GPU count of a GPU-pool task (``None``: the file's ``pools.gpu.count``); for a stage that
    trains as a TrainJob, the requests and limits are those of each node of the job.
    """

    requests: Amounts = field(default_factory=Amounts)
    limits: Amounts = field(default_factory=Amounts)
    gpus: int | None = None

    def check(self, stage: str) -> None:
        prefix = f"resources.{stage}"
        for kind in ("requests", "limits"):
            amounts = getattr(self, kind)
            if amounts.cpu:
                cpu_cores(amounts.cpu, field_name=f"{prefix}.{kind}.cpu")
            if amounts.memory:
                memory_bytes(amounts.memory, field_name=f"{prefix}.{kind}.memory")
        if self.requests.cpu and self.limits.cpu and (
                cpu_cores(self.requests.cpu) > cpu_cores(self.limits.cpu)):
            raise ConfigError(f"{prefix}: the CPU request {self.requests.cpu} is above the limit {self.limits.cpu}",
                              field=f"{prefix}.requests.cpu", value=self.requests.cpu)
        if self.requests.memory and self.limits.memory and (
                memory_bytes(self.requests.memory) > memory_bytes(self.limits.memory)):
            raise ConfigError(f"{prefix}: the memory request {self.requests.memory} is above the limit "
                              f"{self.limits.memory}", field=f"{prefix}.requests.memory", value=self.requests.memory)
        if self.gpus is not None and not 0 <= self.gpus <= 64:
            raise ConfigError(f"{prefix}.gpus={self.gpus} is out of range: allowed [0, 64]", field=f"{prefix}.gpus",
                              value=self.gpus)

    def over(self, base: StageResources) -> StageResources:
        """These resources with every empty field taken from ``base``."""
        def pick(a: Amounts, b: Amounts) -> Amounts:
            return Amounts(cpu=a.cpu or b.cpu, memory=a.memory or b.memory)

        return StageResources(requests=pick(self.requests, base.requests), limits=pick(self.limits, base.limits),
                              gpus=self.gpus if self.gpus is not None else base.gpus)


def _res(req_cpu: str, req_mem: str, lim_cpu: str, lim_mem: str) -> StageResources:
    return StageResources(requests=Amounts(cpu=req_cpu, memory=req_mem), limits=Amounts(cpu=lim_cpu, memory=lim_mem))


#: what each stage's task gets when the cluster file says nothing: enough for a 1-8B model on the GPU pool
#: (weights load into host memory before the GPU), and a request low enough to schedule on a shared CPU pool.
DEFAULT_RESOURCES: dict[str, StageResources] = {
    "data": _res("2", "4Gi", "4", "16Gi"),
    "hub": _res("1", "2Gi", "2", "8Gi"),
    "train": _res("4", "32Gi", "8", "64Gi"),
    "distill": _res("4", "32Gi", "8", "64Gi"),
    "prune": _res("4", "32Gi", "8", "64Gi"),
    "multimodal": _res("4", "16Gi", "8", "32Gi"),
    "debug": _res("4", "32Gi", "8", "64Gi"),
    "eval": _res("4", "16Gi", "8", "32Gi"),
    "export": _res("4", "16Gi", "8", "48Gi"),
    "backup": _res("1", "1Gi", "2", "4Gi"),
}
#: a GPU stage's own CPU-side steps (multimodal's manifest preparation) and a TrainJob launcher
CPU_STEP_RESOURCES = _res("1", "2Gi", "2", "8Gi")
LAUNCHER_RESOURCES = _res("500m", "1Gi", "2", "4Gi")


# ------------------------------------------------------------------------------------------- the cluster file


@dataclass(frozen=True, kw_only=True)
class ImagesSection:
    registry: str = DEFAULT_REGISTRY
    tag: str = DEFAULT_TAG
    digests: dict[str, str] = field(default_factory=dict)
    pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CpuPoolSection:
    node_selector: dict[str, str] = field(default_factory=lambda: {"aptops.io/pool": "cpu"})
    tolerations: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GpuPoolSection:
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[str, ...] = ()
    resource: str = "nvidia.com/gpu"
    count: int = 1


@dataclass(frozen=True, kw_only=True)
class PoolsSection:
    cpu: CpuPoolSection = field(default_factory=CpuPoolSection)
    gpu: GpuPoolSection = field(default_factory=GpuPoolSection)


@dataclass(frozen=True, kw_only=True)
class CacheSection:
    pvc: str = ""
    mount_path: str = "/cache"


@dataclass(frozen=True, kw_only=True)
class ModelRegistrySection:
    address: str = ""
    port: int = 0
    secure: bool = False
    author: str = "aptops"

    def url(self) -> str:
        """The registry's REST address: ``http(s)://host:port`` (empty: no registry)."""
        if not self.address:
            return ""
        if "://" in self.address:
            base = self.address.rstrip("/")
            return f"{base}:{self.port}" if self.port and base.count(":") == 1 else base
        port = self.port or (443 if self.secure else 8080)
        return f"{'https' if self.secure else 'http'}://{self.address}:{port}"


@dataclass(frozen=True, kw_only=True)
class ClusterFile:
    """The cluster file's layout (``examples/cluster.yaml`` shows every key)."""

    images: ImagesSection = field(default_factory=ImagesSection)
    service_account: str = ""
    pools: PoolsSection = field(default_factory=PoolsSection)
    resources: dict[str, StageResources] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    cache: CacheSection = field(default_factory=CacheSection)
    checkpoints: str = ""
    trainjob: TrainJobSettings = field(default_factory=TrainJobSettings)
    model_registry: ModelRegistrySection = field(default_factory=ModelRegistrySection)


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how each stage's task runs on a cluster.

    Attributes:
        image_registry: the registry and namespace of the stage images (``registry.example.com/ml``).
        image_tag: the tag of every stage image.
        image_digests: stage -> ``sha256:...``: those stages' images are pulled by digest.
        image_pull_secrets: docker-registry Secrets every task (and TrainJob node) pulls with.
        service_account: the ServiceAccount runs are submitted with (``aptops submit``) and TrainJob nodes run as.
        gpu_node_selector: node labels of the GPU pool.
        gpu_tolerations: tolerations GPU tasks need (GPU nodes are usually tainted).
        cpu_node_selector: node labels of the CPU pool.
        cpu_tolerations: tolerations CPU tasks need.
        gpu_resource: the extended resource name of a GPU (``nvidia.com/gpu``, ``amd.com/gpu``).
        gpu_count: GPUs per GPU task, unless ``resources`` says otherwise for a stage.
        resources: stage -> :class:`StageResources`, over :data:`DEFAULT_RESOURCES` field by field.
        credential_secrets: provider (aws, oss, hf, modelscope) -> name of the Kubernetes Secret whose keys
            become that provider's environment variables in the stages that need them.
        cache_pvc: a PersistentVolumeClaim mounted into every stage that loads models, holding the Hugging
            Face cache (``HF_HOME``) and the aptops cache (``APTOPS_CACHE_DIR``), so weights are downloaded
            once per cluster instead of once per task; empty: no cache volume.
        cache_mount_path: where that claim is mounted.
        checkpoint_dir: where training tasks keep resumable checkpoints (``$APTOPS_CHECKPOINT_DIR``), a path
            on the cache volume so a restarted pod resumes; default ``<cache_mount_path>/checkpoints`` when
            there is a cache volume, else inside the task (lost with the pod).
        trainjob: which training stages run as Kubeflow Trainer jobs, on how many nodes and GPUs.
        model_registry: Kubeflow Model Registry's REST address (``http://model-registry-service.kubeflow.svc.
            cluster.local:8080``): the lifecycle, train and deploy pipelines register what they back up there (their
            ``registry`` parameter defaults to it); its token is the ``registry`` credential. Empty: none.
        registry_author: the author recorded on registered models and versions.
    """

    image_registry: str = DEFAULT_REGISTRY
    image_tag: str = DEFAULT_TAG
    image_digests: Mapping[str, str] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str = ""
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Toleration, ...] = ()
    cpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"aptops.io/pool": "cpu"})
    cpu_tolerations: tuple[Toleration, ...] = ()
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = 1
    resources: Mapping[str, StageResources] = field(default_factory=dict)
    credential_secrets: Mapping[str, str] = field(default_factory=dict)
    cache_pvc: str = ""
    cache_mount_path: str = "/cache"
    checkpoint_dir: str = ""
    trainjob: TrainJobSettings = field(default_factory=TrainJobSettings)
    model_registry: str = ""
    registry_author: str = "aptops"

    def __post_init__(self) -> None:
        if self.model_registry and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?", self.model_registry):
            raise ConfigError(f"model_registry {self.model_registry!r} must be http(s)://host[:port] (address, port and "
                              "secure in the cluster file's model_registry section)", field="model_registry.address",
                              value=self.model_registry)
        if self.cache_pvc and not _K8S_NAME.fullmatch(self.cache_pvc):
            raise ConfigError(f"cache_pvc {self.cache_pvc!r} is not a valid Kubernetes name", field="cache_pvc",
                              value=self.cache_pvc)
        if not self.cache_mount_path.startswith("/"):
            raise ConfigError("cache_mount_path must be an absolute path", field="cache_mount_path",
                              value=self.cache_mount_path)
        if self.checkpoint_dir and not self.checkpoint_dir.startswith("/"):
            raise ConfigError("checkpoints must be an absolute path on the cache volume", field="checkpoints",
                              value=self.checkpoint_dir)
        for name, path in (("cache.mount_path", self.cache_mount_path), ("checkpoints", self.checkpoint_dir)):
            if len(path) > MAX_PATH or not _PATH.fullmatch(path or "/"):
                raise ConfigError(f"{name} must be a path of at most {MAX_PATH} printable characters (no spaces, "
                                  f"quotes or control characters); got {len(path)} characters starting {path[:40]!r}",
                                  field=name, value=path[:40])
        for provider, secret in self.credential_secrets.items():
            if provider not in CREDENTIAL_ENV:
                raise ConfigError(
                    f"credential secret for unknown provider {provider!r}: use one of {', '.join(CREDENTIAL_ENV)}",
                    field="credential_secrets", value=provider,
                )
            if not _K8S_NAME.fullmatch(secret):
                raise ConfigError(f"secret name {secret!r} is not a valid Kubernetes name", field="credential_secrets",
                                  value=secret)
        for name in (*self.image_pull_secrets, self.service_account):
            if name and not _K8S_NAME.fullmatch(name):
                raise ConfigError(f"{name!r} is not a valid Kubernetes name (pull secret / service account)",
                                  field="images.pull_secrets", value=name)
        if self.image_registry and not _REGISTRY.fullmatch(self.image_registry):
            raise ConfigError(
                f"image_registry={self.image_registry!r} is not a valid registry/namespace (lower-case host[:port]/path)",
                field="image_registry", value=self.image_registry,
            )
        if not _TAG.fullmatch(self.image_tag):
            raise ConfigError(f"image_tag={self.image_tag!r} is not a valid image tag", field="image_tag", value=self.image_tag)
        stages = {s.name for s in STAGES}
        for stage, digest in self.image_digests.items():
            if stage not in stages:
                raise ConfigError(f"images.digests.{stage}: no such stage; stages are {', '.join(sorted(stages))}",
                                  field=f"images.digests.{stage}", value=stage)
            if not _DIGEST.fullmatch(digest):
                raise ConfigError(f"images.digests.{stage}={digest!r} is not a digest (sha256: and 64 hex digits)",
                                  field=f"images.digests.{stage}", value=digest)
        if not _LABEL_KEY.fullmatch(self.gpu_resource) or "/" not in self.gpu_resource:
            raise ConfigError(
                f"gpu_resource={self.gpu_resource!r} must be an extended resource name such as nvidia.com/gpu",
                field="gpu_resource", value=self.gpu_resource,
            )
        if not 1 <= self.gpu_count <= 16:
            raise ConfigError(f"gpu_count={self.gpu_count} is out of range: allowed [1, 16]", field="gpu_count", value=self.gpu_count)
        for stage, res in self.resources.items():
            if stage not in stages:
                raise ConfigError(f"resources.{stage}: no such stage; stages are {', '.join(sorted(stages))}",
                                  field=f"resources.{stage}", value=stage)
            res.check(stage)
            res.over(DEFAULT_RESOURCES[stage]).check(stage)  # a request above the default limit, say
        if self.trainjob.enabled and not self.cache_pvc:
            raise ConfigError("trainjob.enabled needs cache.pvc: the job's nodes read the inputs and write the model "
                              "and checkpoints on the cache volume (ReadWriteMany)", field="cache.pvc")
        parse_selector(self.gpu_node_selector, field_name="gpu_node_selector")
        parse_selector(self.cpu_node_selector, field_name="cpu_node_selector")

    @classmethod
    def from_file(cls, path: str | Path) -> ClusterSettings:
        """The settings a cluster file describes, checked key by key before anything compiles.

        Raises:
            ConfigError: the file is missing or not YAML, a key is misspelt (the message lists the known ones), a
                quantity or name is malformed, a count is out of range.
        """
        data = read_yaml_mapping(path)
        _bounded(data, f"cluster file {str(path)!r}")
        try:
            f = from_dict(ClusterFile, data)
        except ConfigError as exc:
            raise ConfigError(f"cluster file {str(path)!r}: {exc}", field=exc.field, value=exc.value) from None
        try:
            return cls(
                image_registry=f.images.registry, image_tag=f.images.tag, image_digests=f.images.digests,
                image_pull_secrets=f.images.pull_secrets, service_account=f.service_account,
                gpu_node_selector=parse_selector(f.pools.gpu.node_selector, field_name="pools.gpu.node_selector"),
                gpu_tolerations=tuple(Toleration.parse(t) for t in f.pools.gpu.tolerations),
                cpu_node_selector=parse_selector(f.pools.cpu.node_selector, field_name="pools.cpu.node_selector"),
                cpu_tolerations=tuple(Toleration.parse(t) for t in f.pools.cpu.tolerations),
                gpu_resource=f.pools.gpu.resource, gpu_count=f.pools.gpu.count, resources=f.resources,
                credential_secrets=f.credentials, cache_pvc=f.cache.pvc, cache_mount_path=f.cache.mount_path,
                checkpoint_dir=f.checkpoints, trainjob=f.trainjob, model_registry=f.model_registry.url(),
                registry_author=f.model_registry.author,
            )
        except ConfigError as exc:
            raise ConfigError(f"cluster file {str(path)!r}: {exc}", field=exc.field, value=exc.value) from None

    def with_flags(self, **flags: Any) -> ClusterSettings:
        """These settings with the command-line flags that were given (``None``: not given) on top."""
        given = {k: v for k, v in flags.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def image(self, stage: str) -> str:
        digest = self.image_digests.get(stage)
        if digest:
            ref = stage_image(stage, registry=self.image_registry, tag=self.image_tag)
            return f"{ref.rsplit(':', 1)[0]}@{digest}"
        return stage_image(stage, registry=self.image_registry, tag=self.image_tag)

    def resources_for(self, stage: str) -> StageResources:
        """The stage's resources: the file's entry over the default, GPUs filled in for the GPU pool."""
        res = self.resources.get(stage, StageResources()).over(DEFAULT_RESOURCES[stage])
        if get_stage(stage).pool == "gpu" and res.gpus is None:
            res = dataclasses.replace(res, gpus=self.gpu_count)
        return res

    def runs_as_trainjob(self, stage: str) -> bool:
        return self.trainjob.enabled and stage in self.trainjob.stages

    def checkpoint_root(self) -> str:
        if self.checkpoint_dir:
            return self.checkpoint_dir
        return f"{self.cache_mount_path}/checkpoints" if self.cache_pvc else ""

    def cache_env(self) -> dict[str, str]:
        if not self.cache_pvc:
            return {}
        return {"HF_HOME": f"{self.cache_mount_path}/huggingface", "APTOPS_CACHE_DIR": f"{self.cache_mount_path}/aptops"}

    def trainjob_launch(self, stage: str) -> TrainJobLaunch:
        """What a launcher task needs to create ``stage``'s TrainJob: the stage's image, per-node resources
        (GPUs from ``trainjob.gpus_per_node``), GPU pool placement, pull secrets, the cache volume, credentials."""
        res = self.resources_for(stage)
        env = self.cache_env()
        if self.checkpoint_root():
            env["APTOPS_CHECKPOINT_DIR"] = self.checkpoint_root()
        secret_env = {}
        for provider in STAGE_CREDENTIALS.get(stage, ()):
            secret = self.credential_secrets.get(provider)
            if secret:
                secret_env.update({k: (secret, k) for k in CREDENTIAL_ENV[provider]})
        return TrainJobLaunch(
            settings=self.trainjob, image=self.image(stage), gpu_resource=self.gpu_resource,
            requests={k: v for k, v in dataclasses.asdict(res.requests).items() if v},
            limits={k: v for k, v in dataclasses.asdict(res.limits).items() if v},
            node_selector=dict(self.gpu_node_selector),
            tolerations=tuple(t.to_k8s() for t in self.gpu_tolerations), pull_secrets=self.image_pull_secrets,
            service_account=self.service_account, pvc=self.cache_pvc, mount_path=self.cache_mount_path, env=env,
            secret_env=secret_env,
        )

    def component(self, comp: Any, stage: str) -> Any:
        """The same component re-based on this registry and tag."""
        from kfp import dsl

        return dsl.component(comp.python_func, base_image=self.image(stage), install_kfp_package=False)

    def apply(self, task: Any, stage: str, *, cache: bool = True, pool: str | None = None, trains: bool = False) -> Any:
        """Place a task on its stage's node pool (or ``pool``: a GPU stage's data step runs on the CPU pool) with
        its requests and limits; GPU tasks also get GPU limits and tolerations. A training task (``trains``) of a
        stage the cluster file sends to Kubeflow Trainer runs as a small launcher on the CPU pool; the GPUs go to
        the job."""
        from kfp import kubernetes

        spec = get_stage(stage)
        task.set_caching_options(cache)
        task.set_display_name(task.name)
        launcher = trains and self.runs_as_trainjob(stage)
        on_gpu = (pool or spec.pool) == "gpu" and not launcher
        if launcher:
            res = LAUNCHER_RESOURCES
            task.set_env_variable(TRAINJOB_ENV, self.trainjob_launch(stage).to_json())
        elif pool == "cpu" and spec.pool == "gpu":
            res = CPU_STEP_RESOURCES
        else:
            res = self.resources_for(stage)
        task.set_cpu_request(res.requests.cpu).set_memory_request(res.requests.memory)
        task.set_cpu_limit(res.limits.cpu).set_memory_limit(res.limits.memory)
        if on_gpu:
            if res.gpus:
                task.set_accelerator_type(self.gpu_resource).set_accelerator_limit(res.gpus)
            selector, tolerations = self.gpu_node_selector, self.gpu_tolerations
        else:
            selector, tolerations = self.cpu_node_selector, self.cpu_tolerations
        for tol in tolerations:
            kubernetes.add_toleration(
                task, key=tol.key, operator="Equal" if tol.value else "Exists", value=tol.value, effect=tol.effect
            )
        for key, value in selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if self.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, list(self.image_pull_secrets))
        if self.cache_pvc and stage in MODEL_STAGES:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=self.cache_mount_path)
            for name, value in self.cache_env().items():
                task.set_env_variable(name, value)
            if stage in CHECKPOINT_STAGES and self.checkpoint_root():
                task.set_env_variable("APTOPS_CHECKPOINT_DIR", self.checkpoint_root())
        for provider in STAGE_CREDENTIALS.get(stage, ()):
            secret = self.credential_secrets.get(provider)
            if secret:
                keys = CREDENTIAL_ENV[provider]
                kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={k: k for k in keys},
                                             optional=True)
        return task
