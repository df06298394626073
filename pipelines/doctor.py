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


def core_api(*, in_cluster: bool = False, kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``CoreV1Api`` from in-cluster credentials or a kubeconfig."""
    from kubernetes import client, config

    if in_cluster:
        config.load_incluster_config()
        return client.CoreV1Api()
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig, context=context))
