"""Preflight checks before an install or a submission: is the cluster ready for what the settings name?

Each check returns a :class:`Check` (passed or not, what was found, and the fix). Checks that need the
Kubernetes API use the ``kubernetes`` client (in-cluster credentials, or a kubeconfig); the KFP checks use
``kfp.Client``. Nothing here changes the cluster: every call is a ``get`` or a ``list``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aptops_pipelines import PIPELINES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One preflight result: ``name`` (what was checked), ``ok``, ``detail`` (what was found or the fix)."""

    name: str
    ok: bool
    detail: str


def _quantity(value: Any) -> float:
    text = str(value)
    try:
        return float(text)
    except ValueError:
        from kubernetes.utils import parse_quantity

        return float(parse_quantity(text))


def check_kfp(host: str, pipelines: Sequence[str] | None = None, token: str | None = None) -> list[Check]:
    """The KFP API answers and every ``aptops-<name>`` pipeline is registered."""
    import kfp

    try:
        client = kfp.Client(host=host, existing_token=token)
        client.get_kfp_healthz(sleep_duration=1)
    except Exception as exc:  # the client raises many unrelated types
        return [Check("kfp api", False, f"{host} does not answer ({type(exc).__name__}): check kfp.host / --kfp-host, "
                                         "that the ml-pipeline service runs, and KF_PIPELINES_TOKEN if it needs one")]
    checks = [Check("kfp api", True, f"{host} answers")]
    for name in pipelines or sorted(PIPELINES):
        display = f"aptops-{name}"
        try:
            found = client.get_pipeline_id(display)
        except Exception as exc:  # reported as a failed check, not raised
            checks.append(Check(f"pipeline {display}", False, f"listing pipelines failed: {type(exc).__name__}: {exc}"))
            continue
        checks.append(Check(f"pipeline {display}", found is not None,
                            "registered" if found else "not registered: run `aptops register --host ...` (the Helm "
                            "chart's register Job does it on install)"))
    return checks


def check_registry(address: str) -> list[Check]:
    """Kubeflow Model Registry answers at ``address``: the first call its client makes (list one registered model),
    with the token in ``MODEL_REGISTRY_TOKEN`` (or the file ``MODEL_REGISTRY_TOKEN_PATH``) when one is set. Plain
    HTTP, so the CLI image needs no client."""
    import json
    import urllib.error
    import urllib.request

    from aptops.backup.registry import registry_token

    url = f"{address.rstrip('/')}/api/model_registry/v1/registered_models?pageSize=1"
    token = registry_token()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            json.loads(reply.read())["items"]
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return [Check("model registry", False, f"{address} refused the request ({exc.code}): check the token in "
                                                   "MODEL_REGISTRY_TOKEN (the cluster file's credentials.registry)")]
        return [Check("model registry", False, f"{address} answered {exc.code}: is this the registry's REST "
                                               "service (kubectl get svc -n kubeflow model-registry-service)?")]
    except (OSError, ValueError, KeyError) as exc:
        return [Check("model registry", False, f"cannot reach {address} ({type(exc).__name__}): check the address "
                                               "and port, http vs https, and that the registry is running")]
    return [Check("model registry", True, f"{address} answers")]


def check_cluster(core: Any, namespace: str, *, secrets: Sequence[str] = (), pvc: str | None = None,
                  gpu_node_selector: Mapping[str, str] | None = None,
                  gpu_resource: str = "nvidia.com/gpu") -> list[Check]:
    """Secrets and the cache claim exist in ``namespace``; the GPU pool has nodes with allocatable GPUs.

    Args:
        core: a ``kubernetes.client.CoreV1Api``.
    """
    from kubernetes.client.exceptions import ApiException

    checks = []
    for name in secrets:
        try:
            core.read_namespaced_secret(name, namespace)
            checks.append(Check(f"secret {name}", True, f"exists in {namespace}"))
        except ApiException as exc:
            fix = (f"create it: kubectl -n {namespace} create secret generic {name} --from-literal=KEY=VALUE"
                   if exc.status == 404 else f"cannot read it ({exc.status} {exc.reason}): the ServiceAccount "
                   "needs get on it (the chart's Role grants exactly that)")
            checks.append(Check(f"secret {name}", False, fix))
    if pvc:
        try:
            claim = core.read_namespaced_persistent_volume_claim(pvc, namespace)
            phase = getattr(claim.status, "phase", None) or "Unknown"
            checks.append(Check(f"pvc {pvc}", phase in ("Bound", "Pending"),
                                f"phase {phase}" + ("" if phase in ("Bound", "Pending") else
                                                    ": the claim cannot be used; check its StorageClass and events")))
        except ApiException as exc:
            checks.append(Check(f"pvc {pvc}", False, f"missing in {namespace} ({exc.status}): set cache.create=true "
                                                     "or create the claim named in cache.existingClaim"))
    if gpu_node_selector:
        selector = ",".join(f"{k}={v}" for k, v in gpu_node_selector.items())
        try:
            nodes = core.list_node(label_selector=selector).items
        except ApiException as exc:
            checks.append(Check("gpu pool", False, f"cannot list nodes ({exc.status} {exc.reason})"))
            return checks
        gpus = sum(_quantity((n.status.allocatable or {}).get(gpu_resource, 0)) for n in nodes)
        if not nodes:
            checks.append(Check("gpu pool", False, f"no node has the labels {selector}: label the GPU nodes or fix "
                                                   "nodePools.gpu.nodeSelector / --gpu-node-selector"))
        elif gpus < 1:
            checks.append(Check("gpu pool", False, f"{len(nodes)} node(s) match {selector} but none has allocatable "
                                                   f"{gpu_resource}: install the device plugin or fix gpu resource"))
        else:
            checks.append(Check("gpu pool", True, f"{len(nodes)} node(s), {gpus:g} allocatable {gpu_resource}"))
    return checks


TRAINJOB_VERBS = (("create", "trainjobs"), ("get", "trainjobs"), ("delete", "trainjobs"), ("list", "pods"),
                  ("get", "pods/log"))


def check_trainer(core: Any, namespace: str, runtime: str) -> list[Check]:
    """Kubeflow Trainer is ready for aptops' TrainJobs: the ``trainjobs`` API is served, the named runtime exists
    and is a torch runtime (read through the ``kubeflow`` SDK's ``TrainerClient``), and this identity may create,
    read and delete TrainJobs and read their pods' logs in ``namespace`` (``SelfSubjectAccessReview``).

    Args:
        core: a ``kubernetes.client.CoreV1Api`` (its API client and credentials are reused).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = core.api_client
    checks = []
    try:
        resources = client.CustomObjectsApi(api).get_api_resources("trainer.kubeflow.org", "v1alpha1")
        served = "trainjobs" in {r.name for r in resources.resources or []}
    except ApiException as exc:
        served = False
        if exc.status not in (404, 503):
            checks.append(Check("trainer api", False, f"cannot read the API ({exc.status} {exc.reason})"))
            return checks
    if not served:
        return [Check("trainer api", False, "trainer.kubeflow.org/v1alpha1 trainjobs is not served: install Kubeflow "
                                            "Trainer (v2) or set trainjob.enabled: false in the cluster file")]
    checks.append(Check("trainer api", True, "trainer.kubeflow.org/v1alpha1 trainjobs is served"))
    try:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient

        found = TrainerClient(KubernetesBackendConfig(namespace=namespace, client_configuration=api.configuration)
                              ).get_runtime(runtime)
        framework = found.trainer.framework
        checks.append(Check(f"runtime {runtime}", framework == "torch",
                            f"{found.kind.value}, framework {framework}" + (
                                "" if framework == "torch" else ": aptops runs torchrun; use a torch runtime")))
    except ImportError:
        checks.append(Check(f"runtime {runtime}", False, "the kubeflow SDK is not installed: pip install 'aptops[cluster]'"))
    except Exception as exc:  # the SDK wraps API errors in RuntimeError
        checks.append(Check(f"runtime {runtime}", False, f"not found ({exc}): install the Trainer's runtimes or set "
                                                         "trainjob.runtime to one of `kubectl get clustertrainingruntimes`"))
    auth = client.AuthorizationV1Api(api)
    denied = []
    for verb, resource in TRAINJOB_VERBS:
        group = "trainer.kubeflow.org" if resource == "trainjobs" else ""
        res, _, sub = resource.partition("/")
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, group=group, resource=res,
                                                            subresource=sub or None)))
        try:
            allowed = bool(auth.create_self_subject_access_review(review).status.allowed)
        except ApiException as exc:
            allowed = False
            log.debug("access review failed: %s", exc)
        if not allowed:
            denied.append(f"{verb} {resource}")
    checks.append(Check("trainjob permissions", not denied,
                        f"may create, read and delete TrainJobs in {namespace}" if not denied else
                        f"missing in {namespace}: {', '.join(denied)}; install the chart with trainjob.enabled=true "
                        "(its Role grants exactly these) or bind an equivalent Role"))
    return checks


def core_api(*, in_cluster: bool = False, kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``CoreV1Api`` from in-cluster credentials or a kubeconfig."""
    from kubernetes import client, config

    if in_cluster:
        config.load_incluster_config()
        return client.CoreV1Api()
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig, context=context))
