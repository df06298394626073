"""Register a model version in Kubeflow Model Registry: where it is stored, what format, how well it does, where it
came from.

The registry points at storage, it does not hold weights: a version is registered only for a location that holds
a complete aptops backup (its manifest, written last) whose files are exactly the local artifact's — checked file
by file by SHA-256 before anything is sent. The version's metadata carries the run's metrics, its lm-evaluation-
harness results and its lineage (base model, datasets, stages, package versions); the artifact carries the URI,
the format (``safetensors`` + the transformers version, ``gguf`` + the quant type) and the provenance (the
pipeline run that made it). Registering the same content again adds nothing; another content under a version
name already taken is refused, naming it. The client is the ``model-registry`` package (0.3.x), unpatched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aptops.core.artifacts import LINEAGE_FILE, RESULT_FILE, StageResult, read_json, require_complete
from aptops.core.deps import require
from aptops.core.errors import ConfigError, InvalidArtifactError, StorageError
from aptops.core.locations import parse_location, redact

log = logging.getLogger(__name__)

#: The environment variable a registry token is read from (a Kubernetes Secret's key on a cluster), or
#: ``MODEL_REGISTRY_TOKEN_PATH`` a file holding it (a mounted Secret); without either the client uses the pod's
#: ServiceAccount token (``KF_PIPELINES_SA_TOKEN_PATH``), as in a KFP task.
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"


def registry_token() -> str | None:
    """The registry token from ``MODEL_REGISTRY_TOKEN``, else from the file ``MODEL_REGISTRY_TOKEN_PATH`` names."""
    token = os.environ.get(TOKEN_ENV)
    path = os.environ.get(f"{TOKEN_ENV}_PATH")
    if not token and path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_ENV}_PATH={path!r} cannot be read ({exc.strerror}): mount the registry "
                              "token's Secret there, or unset it", field=f"{TOKEN_ENV}_PATH") from None
    return token or None
#: The metadata key of the content digest that decides whether a version already holds this model.
CONTENT_KEY = "aptops_content_sha256"
_SCALAR = (bool, int, float, str)


@dataclass(frozen=True, kw_only=True)
class RegistryConfig:
    """Where the registry is and who registers.

    Attributes:
        address: the registry's REST address, ``http(s)://host[:port]`` (in a cluster, e.g.
            ``http://model-registry-service.kubeflow.svc.cluster.local:8080``).
        port: the port, when ``address`` names none (default: 8080 for http, 443 for https).
        secure: TLS; default from the scheme (https: yes). A secure registry needs a token.
        author: the author and owner recorded on new models and versions.
        custom_ca: a PEM file of the CA that signed the registry's certificate (secure only).
    """

    address: str = ""
    port: int | None = None
    secure: bool | None = None
    author: str = "aptops"
    custom_ca: str = ""

    def __post_init__(self) -> None:
        if self.address and not self.address.startswith(("http://", "https://")):
            raise ConfigError(f"registry address {self.address!r} must start with http:// or https:// (e.g. "
                              "http://model-registry-service.kubeflow.svc.cluster.local:8080)", field="address",
                              value=self.address)
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"registry port {self.port} is not a TCP port", field="port", value=self.port)


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Which run made the model (the artifact's ``model_source_*`` fields): a KFP pipeline run, by default."""

    kind: str = "kfp"
    source_class: str = "pipelinerun"
    group: str = ""  # the namespace
    id: str = ""  # the run id
    name: str = ""  # the run name

    @classmethod
    def from_environment(cls, run_id: str = "", run_name: str = "") -> Provenance:
        """The current run: ids given by the pipeline, the namespace from the pod (``local`` off a cluster)."""
        ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        namespace = os.environ.get("POD_NAMESPACE") or (ns_file.read_text().strip() if ns_file.is_file() else "local")
        return cls(group=namespace, id=run_id, name=run_name or run_id)


@dataclass
class Registration:
    """What was registered (or found already there)."""

    name: str
    version: str
    uri: str
    model_format_name: str
    model_format_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created: bool = True
    ids: dict[str, str] = field(default_factory=dict)


def model_format(folder: Path) -> tuple[str, str]:
    """``(format name, format version)`` of an artifact: ``gguf`` and its quant type (the export's first type),
    or ``safetensors`` and the transformers version that wrote it."""
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        result = _read(folder / RESULT_FILE)
        quant = (result.get("details") or {}).get("quantization") or ggufs[0].stem.rpartition("-")[2]
        return "gguf", str(quant)
    if any(folder.glob("*.safetensors")):
        config = _read(folder / "config.json")
        versions = _read(folder / LINEAGE_FILE).get("versions") or {}
        return "safetensors", str(versions.get("transformers") or config.get("transformers_version") or "")
    raise InvalidArtifactError(f"{str(folder)!r} holds neither *.gguf nor *.safetensors files: not a model to register",
                               path=str(folder))


def version_metadata(folder: Path, *, evaluation: str | Path | None = None,
                     provenance: Provenance | None = None) -> dict[str, bool | int | float | str]:
    """The version's custom properties, flat scalars as the registry keeps them: ``metric.<name>`` (the artifact's
    own metrics), ``eval.<task>.<metric>`` (lm-evaluation-harness results of this model), the lineage (base
    model, datasets, stages, package versions) and the run."""
    meta: dict[str, bool | int | float | str] = {}
    result = _read(folder / RESULT_FILE)
    lineage = _read(folder / LINEAGE_FILE)
    metrics = {**(lineage.get("metrics") or {}), **(result.get("metrics") or {})}
    meta.update({f"metric.{k}": float(v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)
                 and not isinstance(v, bool)})
    if evaluation:
        meta.update(_evaluation(Path(evaluation)))
    chain = [*(lineage.get("parents") or []), lineage] if lineage else []
    if chain:
        first = chain[0].get("inputs") or {}
        meta["base_model"] = str(first.get("model") or first.get("teacher") or "")
        datasets = sorted({str(c["inputs"]["dataset"]) for c in chain if (c.get("inputs") or {}).get("dataset")})
        meta["datasets"] = ", ".join(datasets)
        meta["stages"] = " > ".join(str(c.get("stage")) for c in chain)
        meta.update({f"version.{k}": str(v) for k, v in sorted((lineage.get("versions") or {}).items())})
    if provenance is not None and provenance.id:
        meta.update({"pipeline_run_id": provenance.id, "pipeline_run_name": provenance.name,
                     "namespace": provenance.group})
    return {k: v for k, v in meta.items() if isinstance(v, _SCALAR) and v != ""}


def _evaluation(path: Path) -> dict[str, float]:
    """``eval.<task>.<metric>`` from an eval stage's results (a ``results.json``, or the folder holding it): of its
    one model, or ``eval.<model>.<task>.<metric>`` for each when it judged several (a GGUF folder's types)."""
    doc = _read(path / "results.json" if path.is_dir() else path)
    if not doc:
        raise InvalidArtifactError(f"evaluation {str(path)!r} holds no results.json of the eval stage", path=str(path))
    models = doc.get("models") if isinstance(doc.get("models"), dict) else {"": doc}
    out = {}
    for model, run in sorted(models.items()):
        prefix = "eval." if len(models) == 1 else f"eval.{model}."
        for task, values in sorted((run.get("results") or {}).items()):
            for key, value in sorted(values.items()):
                if isinstance(value, int | float) and not isinstance(value, bool) and "stderr" not in key:
                    out[f"{prefix}{task}.{key.replace(',none', '')}"] = float(value)
    return out


def content_digest(entries: list[tuple[str, str]]) -> str:
    """One SHA-256 over the ``(path, sha256)`` pairs of an artifact's files (the backup manifest's entries)."""
    return hashlib.sha256("\n".join(f"{p}\t{s}" for p, s in sorted(entries)).encode()).hexdigest()


def check_stored(folder: Path, uri: str, *, credentials: dict[str, str | None] | None = None) -> str:
    """Check ``uri`` holds a complete backup of exactly ``folder``'s files; return their content digest.

    Raises:
        ConfigError: ``uri`` is a local path (the registry points at remote storage).
        StorageError: no complete backup there (no manifest), or it holds other files than ``folder``.
    """
    from aptops.backup.engine import BackupConfig, store_for
    from aptops.backup.manifest import ARCHIVE, MANIFEST, build_manifest, parse_manifest

    location = parse_location(uri)
    if location.is_local:
        raise ConfigError(f"{uri!r} is a local path: the registry points at remote storage (s3://, oss://, hf://, "
                          "modelscope://); back the model up there first (aptops backup DIR --to URI)", field="uri",
                          value=uri)
    store = store_for(location, BackupConfig(), credentials)
    raw = store.read(MANIFEST)
    if raw is None:
        raise StorageError(f"{redact(uri)} holds no complete backup (no {MANIFEST}): the model is not in remote storage "
                           f"yet; back it up first (aptops backup {folder} --to {redact(uri)})", uri=redact(uri))
    remote = {(e.path, e.sha256) for e in parse_manifest(raw, source=f"{redact(uri)}/{MANIFEST}") if e.path != ARCHIVE}
    local = {(f["path"], f["sha256"]) for f in build_manifest(folder)["files"]}
    if remote != local:
        differ = sorted({p for p, _ in remote ^ local})
        raise StorageError(f"{redact(uri)} holds another model than {str(folder)!r}: {len(differ)} file(s) differ "
                           f"({', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}); back this model up there "
                           "first, or register the location that holds it", uri=redact(uri))
    return content_digest(sorted(local))


def _require_address(config: RegistryConfig) -> None:
    if not config.address:
        raise ConfigError("no Model Registry address: give --address (or MODEL_REGISTRY_ADDRESS), the cluster file's "
                          "model_registry section, or a pipeline's registry parameter", field="address")


def connect(config: RegistryConfig) -> Any:
    """A ``model_registry.ModelRegistry`` client; an unreachable or refusing registry is an error that says what
    to check."""
    _require_address(config)
    mr = require("model_registry", extra="backup", feature="Model Registry")
    token = registry_token()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="User access token is missing")
            return mr.ModelRegistry(config.address, config.port, author=config.author, is_secure=config.secure,
                                    user_token=token, custom_ca=config.custom_ca or None)
    except Exception as exc:  # the client raises aiohttp, mr_openapi and its own errors alike
        raise StorageError(_unreachable(config, exc), uri=config.address) from None


def _unreachable(config: RegistryConfig, exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return (f"Model Registry at {config.address} refused the request ({status}): check the token in "
                f"{TOKEN_ENV} (a Secret's key on a cluster, credentials.registry in the cluster file) or the "
                "ServiceAccount's access to the registry")
    return (f"cannot reach Model Registry at {config.address}: {text}; check the address and port (kubectl get svc "
            "-n kubeflow model-registry-service), http vs https, and that the registry is running")


def register_model_version(model: str | Path, uri: str, *, name: str, version: str = "",
                           config: RegistryConfig, evaluation: str | Path | None = None,
                           provenance: Provenance | None = None, description: str = "",
                           credentials: dict[str, str | None] | None = None) -> StageResult:
    """Register ``model`` (a local artifact folder) stored at ``uri`` as a version of the registered model ``name``.

    Args:
        model: the artifact folder (a model or a GGUF export): its files are compared with the backup at ``uri``,
            its format, metrics and lineage become the version's.
        uri: where a backup of ``model`` lives (``s3://bucket/prefix``, ``oss://``, ``hf://``, ``modelscope://``).
        name: the registered model; made when it does not exist.
        version: the version name; empty: ``<format>-<first 12 hex of the content digest>``, so the same content
            always lands on the same version.
        config: the registry's address and the author.
        evaluation: an eval stage's results of this model (``eval.<task>.<metric>`` metadata).
        provenance: the run that made the model (default: none recorded).
        description: the version's description.

    Returns:
        The result: ``details["registration"]`` the registered fields and ids; ``metrics["registered"]`` 1 for a new
        version, 0 when this content was already there.

    Raises:
        StorageError: the model is not at ``uri``; the registry is unreachable; the version exists with other content.
    """
    folder = require_complete(Path(model), what="model")
    _require_address(config)  # before any storage is read
    if not name.strip():
        raise ConfigError("name the registered model (--name)", field="name")
    fmt, fmt_version = model_format(folder)
    digest = check_stored(folder, uri, credentials=credentials)  # before the registry: nothing half-registered
    version = version or f"{fmt}-{digest[:12]}"
    meta = version_metadata(folder, evaluation=evaluation, provenance=provenance) | {
        CONTENT_KEY: digest, "model_format": f"{fmt} {fmt_version}".strip()}
    reg = Registration(name=name, version=version, uri=redact(uri), model_format_name=fmt,
                       model_format_version=fmt_version, metadata=meta)
    client = connect(config)
    try:
        existing = client.get_model_version(name, version) if client.get_registered_model(name) else None
        if existing is not None:
            held = (existing.custom_properties or {}).get(CONTENT_KEY)
            artifact = client.get_model_artifact(name, version)
            if held != digest or artifact is None or artifact.uri != reg.uri:
                raise StorageError(
                    f"Model Registry already has {name!r} version {version!r} (id {existing.id}) for other content "
                    f"({'at ' + artifact.uri if artifact is not None else 'no artifact'}, content {str(held)[:12]}): "
                    "give this model another --version, or leave it empty to name it by its content",
                    uri=config.address)
            reg.created, reg.ids = False, {"model_version": str(existing.id), "model_artifact": str(artifact.id)}
            log.info("Model Registry: %s %s already holds this model (%s): nothing added", name, version, reg.uri)
        else:
            p = provenance or Provenance(kind="", source_class="")
            rm = client.register_model(
                name, reg.uri, model_format_name=fmt, model_format_version=fmt_version, version=version,
                version_description=description or None, metadata=meta, model_source_kind=p.kind or None,
                model_source_class=p.source_class or None, model_source_group=p.group or None,
                model_source_id=p.id or None, model_source_name=p.name or None)
            mv = client.get_model_version(name, version)
            ma = client.get_model_artifact(name, version)
            reg.ids = {"registered_model": str(rm.id), "model_version": str(mv.id), "model_artifact": str(ma.id)}
            log.info("Model Registry: registered %s %s -> %s (%s %s)", name, version, reg.uri, fmt, fmt_version)
    except StorageError:
        raise
    except Exception as exc:  # transport and server errors of the client
        raise StorageError(_unreachable(config, exc), uri=config.address) from None
    return StageResult("backup", outputs={"uri": reg.uri}, metrics={"registered": float(reg.created)},
                       details={"registration": reg.__dict__})


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = read_json(path)
    except (FileNotFoundError, InvalidArtifactError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


__all__ = [
    "CONTENT_KEY",
    "TOKEN_ENV",
    "Provenance",
    "Registration",
    "RegistryConfig",
    "check_stored",
    "connect",
    "content_digest",
    "model_format",
    "register_model_version",
    "registry_token",
    "version_metadata",
]
