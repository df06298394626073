"""Register compiled pipelines in a KFP API as pipeline versions, idempotently (the Helm chart's install Job).

Each pipeline is compiled for the given :class:`ClusterSettings`; its version name is the aptops version plus
a hash of the compiled YAML, so re-registering unchanged pipelines (a ``helm upgrade`` that changed nothing
they depend on) adds nothing, and any change in images, node pools or secrets names adds a new version.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from aptops import __version__
from aptops.cluster.settings import ClusterSettings
from aptops.core.errors import PipelineError
from aptops_pipelines import PIPELINES, build_pipeline

log = logging.getLogger(__name__)


def kfp_client(host: str, token: str | None, namespace: str | None = None) -> Any:
    """A ``kfp.Client`` for ``host``, after one request of our own to its health endpoint: the client's constructor
    asks it five times five seconds apart, so a wrong token or a wrong URL took 25 s to say so. Without ``token``
    the ServiceAccount token mounted at ``KF_PIPELINES_SA_TOKEN_PATH`` is used (the Helm chart's register Job).

    Raises:
        PipelineError: the API refuses the token or cannot be reached (what to check, the token never named).
    """
    import urllib.error
    import urllib.request

    import kfp

    bearer = token
    if not bearer:  # in a pod the client reads the ServiceAccount token kfp mounts; so does this request
        import os

        sa = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", "/var/run/secrets/kubeflow/pipelines/token"))
        bearer = sa.read_text(encoding="utf-8").strip() if sa.is_file() else None
    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz",
                                     headers={"Authorization": f"Bearer {bearer}"} if bearer else {})
    try:
        with urllib.request.urlopen(request, timeout=15):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PipelineError(f"cannot reach the KFP API at {host}: it refused the request ({exc.code}); check "
                                "KF_PIPELINES_TOKEN (or the ServiceAccount token the Job mounts)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot reach the KFP API at {host}: {type(exc).__name__}: {exc} (check the URL, and "
                            "KF_PIPELINES_TOKEN where the API needs a token)") from None
    try:
        # kfp reads the mounted token only in a pod without a host; given a host it sent none (the chart's Job)
        return kfp.Client(host=host, existing_token=bearer, namespace=namespace)
    except Exception as exc:  # the KFP client raises many unrelated types
        raise PipelineError(f"cannot reach the KFP API at {host}: {type(exc).__name__}: {exc} (check the URL, and "
                            "KF_PIPELINES_TOKEN where the API needs a token)") from exc


def version_name(compiled: bytes) -> str:
    """``<aptops version>-<first 12 hex of the YAML's SHA-256>``."""
    return f"{__version__}-{hashlib.sha256(compiled).hexdigest()[:12]}"


def _versions(client: Any, pipeline_id: str) -> set[str]:
    names: set[str] = set()
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        names.update(v.display_name for v in (page.pipeline_versions or []))
        token = page.next_page_token or ""
        if not token:
            return names


def register_pipelines(host: str, settings: ClusterSettings | None = None, *, names: list[str] | None = None,
                       token: str | None = None, namespace: str | None = None) -> list[dict[str, str]]:
    """Compile and upload each pipeline as ``aptops-<name>``; returns one row per pipeline with the action taken.

    Raises:
        PipelineError: an unknown pipeline name, or the KFP API refused or could not be reached.
    """
    from kfp import compiler

    settings = settings or ClusterSettings()
    names = names or sorted(PIPELINES)
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown:
        raise PipelineError(f"unknown pipeline(s) {', '.join(unknown)}: available are {', '.join(sorted(PIPELINES))}")
    client = kfp_client(host, token, namespace)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            func = build_pipeline(name, settings)
            path = Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(func, str(path))
            version = version_name(path.read_bytes())
            display = f"aptops-{name}"
            description = (func.description or "")[:1000]
            try:
                pipeline_id = client.get_pipeline_id(display)
                created = pipeline_id is None
                if created:  # the upload makes a first version named after the pipeline; the hashed one follows
                    pipeline_id = client.upload_pipeline(str(path), pipeline_name=display, description=description,
                                                         namespace=namespace).pipeline_id
                if version in _versions(client, pipeline_id):
                    action = "unchanged"
                else:
                    client.upload_pipeline_version(str(path), pipeline_version_name=version, pipeline_id=pipeline_id,
                                                   description=f"aptops {__version__}")
                    action = "created" if created else "new version"
            except Exception as exc:  # the KFP client raises ApiException, urllib3 and value errors
                raise PipelineError(f"registering {display} at {host} failed: {type(exc).__name__}: {exc}") from exc
            log.info("%s: %s (%s)", display, action, version)
            rows.append({"pipeline": display, "pipeline_id": pipeline_id, "version": version, "action": action})
    return rows
